"""Crash tests: torn tails, flipped bytes, lost indexes, full disks."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from broker.storage import file_handle
from broker.storage.log import Log
from client.errors import LogCorruptError, StorageError

from .conftest import ManualClock, crash, make_batch, read_all, small_config


def _fill(log_dir: Path, clock: ManualClock, batches: int, *, roll_every: int = 0) -> Log:
    log = Log.open(log_dir, small_config(), clock_ms=clock)
    for number in range(batches):
        log.append(make_batch(number * 2, 2))
        if roll_every and number % roll_every == roll_every - 1:
            log.roll()
    return log


def test_torn_tail_at_every_byte(tmp_path: Path, clock: ManualClock) -> None:
    """Cutting the last segment anywhere inside its last batch leaves exactly the
    complete batches, and appends continue at the right offset."""
    source = tmp_path / "source"
    log = _fill(source, clock, 12, roll_every=5)
    log.flush()  # recovery point at the end: the cut goes below it
    last_segment = source / f"{log.segment_base_offsets[-1]:020d}.log"
    crash(log)
    full_size = last_segment.stat().st_size
    batch_bytes = len(make_batch(0, 2))
    for cut in range(full_size - batch_bytes, full_size):
        copy = tmp_path / f"copy-{cut}"
        shutil.copytree(source, copy)
        os.truncate(copy / last_segment.name, cut)
        reopened = Log.open(copy, small_config(), clock_ms=clock)
        assert reopened.end_offset == 22
        assert read_all(reopened) == [(offset, b"v%d" % offset) for offset in range(22)]
        assert reopened.append(make_batch(22, 1)).base_offset == 22
        reopened.check_invariants()
        reopened.close()
        shutil.rmtree(copy)


def test_flipped_byte_in_last_batch_truncates_it(log_dir: Path, clock: ManualClock) -> None:
    """A corrupt last batch of the active segment is a torn tail: dropped on recovery."""
    log = _fill(log_dir, clock, 5)
    crash(log)
    segment = log_dir / f"{0:020d}.log"
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0x40
    segment.write_bytes(data)
    reopened = Log.open(log_dir, small_config(), clock_ms=clock)
    assert reopened.end_offset == 8
    assert reopened.append(make_batch(8, 1)).base_offset == 8
    reopened.check_invariants()
    reopened.close()


def test_flipped_byte_in_sealed_segment_is_refused(log_dir: Path, clock: ManualClock) -> None:
    """A bad batch inside a sealed segment that recovery scans raises LogCorruptError
    naming the file and position; nothing is served."""
    log = _fill(log_dir, clock, 10, roll_every=4)
    crash(log)  # never flushed: every segment is after the recovery point
    sealed = log_dir / f"{0:020d}.log"
    data = bytearray(sealed.read_bytes())
    batch_bytes = len(make_batch(0, 2))
    data[batch_bytes + 70] ^= 0x01  # inside the second batch's records
    sealed.write_bytes(data)
    with pytest.raises(LogCorruptError, match=rf"{sealed.name}.*position {batch_bytes}"):
        Log.open(log_dir, small_config(), clock_ms=clock)
    # Refused again on the next attempt: nothing was "repaired" by dropping data.
    with pytest.raises(LogCorruptError):
        Log.open(log_dir, small_config(), clock_ms=clock)


def test_verify_finds_corruption_in_trusted_segment(log_dir: Path, clock: ManualClock) -> None:
    """Flushed segments are not rescanned on open (recovery reads only the tail), but
    Log.verify still finds a bad batch there."""
    log = _fill(log_dir, clock, 10, roll_every=4)
    log.flush()
    log.append(make_batch(20, 2))
    crash(log)
    sealed = log_dir / f"{0:020d}.log"
    data = bytearray(sealed.read_bytes())
    data[70] ^= 0x01
    sealed.write_bytes(data)
    reopened = Log.open(log_dir, small_config(), clock_ms=clock)
    assert reopened.end_offset == 22
    with pytest.raises(LogCorruptError):
        reopened.verify()
    reopened.close()


@pytest.mark.parametrize("damage", ["delete", "garble", "truncate", "zero"])
@pytest.mark.parametrize("suffix", [".index", ".timeindex"])
def test_damaged_index_is_rebuilt(
    log_dir: Path, clock: ManualClock, damage: str, suffix: str
) -> None:
    """A missing or garbled index is rebuilt on open; every offset stays readable."""
    log = _fill(log_dir, clock, 40, roll_every=15)
    expected = read_all(log)
    log.close()
    for base_offset in (0, 60):
        path = log_dir / f"{base_offset:020d}{suffix}"
        size = path.stat().st_size
        if damage == "delete":
            path.unlink()
        elif damage == "garble":
            path.write_bytes(bytes(range(256))[:size] or b"\x07")
        elif damage == "truncate":
            path.write_bytes(path.read_bytes()[: max(size - 3, 1)])
        else:
            path.write_bytes(bytes(size + 8))
    reopened = Log.open(log_dir, small_config(), clock_ms=clock)
    reopened.check_invariants()
    assert read_all(reopened, 100) == expected
    for offset in range(reopened.end_offset):
        with reopened.read(offset, 1) as region:
            assert region.base_offset <= offset < region.next_offset
    reopened.close()


def test_unclean_reopen_scans_only_after_checkpoint(log_dir: Path, clock: ManualClock) -> None:
    """After a flush, recovery starts at the checkpoint: unflushed appends are
    re-validated and kept, nothing before the checkpoint is rescanned."""
    log = _fill(log_dir, clock, 30, roll_every=10)
    assert log.flush() == 60
    for number in range(5):
        log.append(make_batch(60 + number * 2, 2))
    crash(log)
    reopened = Log.open(log_dir, small_config(), clock_ms=clock)
    assert reopened.recovery_offset == 60 and reopened.end_offset == 70
    assert read_all(reopened) == [(offset, b"v%d" % offset) for offset in range(70)]
    reopened.check_invariants()
    reopened.close()


def test_stale_files_are_cleaned_on_open(log_dir: Path, clock: ManualClock) -> None:
    """Leftover *.deleted / *.tmp files and orphan indexes are removed on open."""
    log = _fill(log_dir, clock, 3)
    log.close()
    for name in ("00000000000000000099.log.deleted", "x.tmp", "00000000000000000500.index"):
        (log_dir / name).write_bytes(b"junk")
    reopened = Log.open(log_dir, small_config(), clock_ms=clock)
    names = set(os.listdir(log_dir))
    assert not names & {"00000000000000000099.log.deleted", "x.tmp", "00000000000000000500.index"}
    reopened.close()


@pytest.mark.parametrize("written_fraction", [0.0, 0.5])
def test_full_disk_append_is_rolled_back(
    log: Log, monkeypatch: pytest.MonkeyPatch, written_fraction: float
) -> None:
    """ENOSPC during an append raises StorageError, leaves the log as it was (even
    after a partial write), and later appends succeed."""
    log.append(make_batch(0, 2))
    real_write_all = file_handle.write_all

    def full_disk(descriptor: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        part = int(len(view) * written_fraction)
        if part:
            os.write(descriptor, view[:part])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_handle, "write_all", full_disk)
    with pytest.raises(StorageError, match="No space"):
        log.append(make_batch(2, 3))
    log.check_invariants()
    assert log.end_offset == 2
    monkeypatch.setattr(file_handle, "write_all", real_write_all)
    assert log.append(make_batch(2, 3)).base_offset == 2
    assert read_all(log) == [(offset, b"v%d" % offset) for offset in range(5)]
    log.check_invariants()


def test_full_disk_on_index_write_is_rolled_back(
    log_dir: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure writing the index after the log bytes also rolls the log back."""
    log = Log.open(log_dir, small_config(index_interval_bytes=1), clock_ms=clock)
    log.append(make_batch(0, 1))
    real_write_all = file_handle.write_all
    calls: list[int] = []

    def index_fails(descriptor: int, data: bytes | bytearray | memoryview) -> None:
        calls.append(descriptor)
        if len(calls) == 2:  # the first write is the log bytes, the second the index
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(descriptor, data)

    monkeypatch.setattr(file_handle, "write_all", index_fails)
    with pytest.raises(StorageError):
        log.append(make_batch(1, 1))
    monkeypatch.setattr(file_handle, "write_all", real_write_all)
    log.check_invariants()
    assert log.append(make_batch(1, 1)).base_offset == 1
    log.check_invariants()
    log.close()
    reopened = Log.open(log_dir, small_config(index_interval_bytes=1), clock_ms=clock)
    assert read_all(reopened) == [(0, b"v0"), (1, b"v1")]
    reopened.close()


@pytest.mark.parametrize("suffix", [".index", ".timeindex"])
def test_torn_index_of_the_checkpoint_segment_is_rebuilt(
    log_dir: Path, clock: ManualClock, suffix: str
) -> None:
    """An index torn mid-entry in the segment the checkpoint points into (a power cut
    during its write) is rebuilt from the segment's start, and recovery scans from
    there too: the log ends where its batches end, not at the segment's base."""
    log = _fill(log_dir, clock, 8)
    assert log.flush() == 16
    crash(log)
    index = log_dir / f"{0:020d}{suffix}"
    with open(index, "ab") as torn:
        torn.write(b"\x01\x02\x03")
    reopened = Log.open(log_dir, small_config(), clock_ms=clock)
    reopened.check_invariants()
    assert reopened.end_offset == 16
    assert read_all(reopened) == [(offset, b"v%d" % offset) for offset in range(16)]
    assert reopened.append(make_batch(16, 1)).base_offset == 16
    reopened.close()
