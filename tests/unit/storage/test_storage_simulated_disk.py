"""Tests for the power-cut simulation (tests/unit/storage/simulated_disk.py) and for
the log's power-cut contract on it: what was flushed survives, nothing else appears."""

from __future__ import annotations

import os
import random
from pathlib import Path

from broker.storage import disk
from broker.storage.log import Log

from .conftest import ManualClock, make_batch, power_cut, read_all, small_config
from .simulated_disk import SimulatedDisk


def _write(path: Path, data: bytes) -> int:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(descriptor, data)
    return descriptor


def test_unsynced_bytes_are_lost_and_synced_ones_kept(simulated_disk: SimulatedDisk) -> None:
    """After a power cut a file holds what its last fsync saw, whatever came after."""
    root = simulated_disk.root
    descriptor = _write(root / "a", b"durable")
    disk.current.fsync(descriptor)
    disk.current.fsync_directory(root)
    os.write(descriptor, b"-lost")
    os.close(descriptor)
    simulated_disk.power_cut()
    assert (root / "a").read_bytes() == b"durable"
    descriptor = os.open(root / "a", os.O_WRONLY)
    os.ftruncate(descriptor, 2)  # an unsynced truncation is undone too
    os.close(descriptor)
    simulated_disk.power_cut()
    assert (root / "a").read_bytes() == b"durable"


def test_directory_changes_need_a_directory_fsync(simulated_disk: SimulatedDisk) -> None:
    """A file created, renamed or removed since the directory's last fsync is put
    back: a new file vanishes (even if fsynced), a renamed or removed one returns
    under its old name with its durable contents."""
    root = simulated_disk.root
    for name in ("kept", "renamed", "removed"):
        descriptor = _write(root / name, name.encode())
        disk.current.fsync(descriptor)
        os.close(descriptor)
    disk.current.fsync_directory(root)
    descriptor = _write(root / "created", b"new")
    disk.current.fsync(descriptor)
    os.close(descriptor)
    os.replace(root / "renamed", root / "renamed.deleted")
    os.unlink(root / "removed")
    simulated_disk.power_cut()
    assert sorted(os.listdir(root)) == ["kept", "removed", "renamed"]
    assert (root / "removed").read_bytes() == b"removed"
    assert (root / "renamed").read_bytes() == b"renamed"


def test_torn_cut_keeps_a_prefix_of_the_appended_bytes(simulated_disk: SimulatedDisk) -> None:
    """With a random generator, an appended-to file keeps its durable bytes plus some
    prefix of the appended ones, never other bytes."""
    root = simulated_disk.root
    descriptor = _write(root / "a", b"0123")
    disk.current.fsync(descriptor)
    disk.current.fsync_directory(root)
    os.close(descriptor)
    seen = set()
    for seed in range(20):
        with open(root / "a", "ab") as appended:
            appended.write(b"456789"[len((root / "a").read_bytes()) - 4 :])
        simulated_disk.power_cut(torn=random.Random(seed))
        contents = (root / "a").read_bytes()
        assert b"0123456789".startswith(contents) and contents.startswith(b"0123")
        seen.add(len(contents))
        descriptor = os.open(root / "a", os.O_WRONLY)
        os.ftruncate(descriptor, 4)
        disk.current.fsync(descriptor)
        os.close(descriptor)
    assert len(seen) > 1


def test_flushed_appends_survive_a_power_cut_and_later_ones_do_not(
    simulated_disk: SimulatedDisk, clock: ManualClock
) -> None:
    """Appends followed by a flush survive a power cut; the unflushed ones after them,
    including a whole new segment, are lost, and appends continue after the survivors."""
    log_dir = simulated_disk.root / "t-0"
    log = Log.open(log_dir, small_config(segment_bytes=1024), clock_ms=clock)
    for number in range(5):
        log.append(make_batch(number * 2, 2))
    assert log.flush() == 10
    for number in range(5, 30):
        log.append(make_batch(number * 2, 2))
    assert log.segment_count > 1
    power_cut(log, simulated_disk)
    reopened = Log.open(log_dir, small_config(segment_bytes=1024), clock_ms=clock)
    assert read_all(reopened) == [(offset, b"v%d" % offset) for offset in range(10)]
    assert reopened.append(make_batch(10, 1)).base_offset == 10
    reopened.check_invariants()
    reopened.close()


def test_truncation_is_durable_when_it_returns(
    simulated_disk: SimulatedDisk, clock: ManualClock
) -> None:
    """A power cut right after truncate_to never brings the cut batches back, and
    keeps every batch below the cut, flushed or not before the truncation."""
    log_dir = simulated_disk.root / "t-0"
    log = Log.open(log_dir, small_config(segment_bytes=1024), clock_ms=clock)
    for number in range(4):
        log.append(make_batch(number * 2, 2))
    log.flush()
    for number in range(4, 30):  # unflushed, across several segments
        log.append(make_batch(number * 2, 2))
    assert log.segment_count > 2
    cut_at = log.segment_base_offsets[-1] + 1
    new_end = log.truncate_to(cut_at)
    power_cut(log, simulated_disk)
    reopened = Log.open(log_dir, small_config(segment_bytes=1024), clock_ms=clock)
    assert read_all(reopened) == [(offset, b"v%d" % offset) for offset in range(new_end)]
    reopened.check_invariants()
    reopened.close()
