"""Tests for broker.storage.compaction: newest record per key, offsets kept, gaps,
tombstones, merging, crash safety, and the async pass."""

from __future__ import annotations

import os
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.storage import compaction
from broker.storage.async_log import AsyncLog
from broker.storage.config import CleanupPolicy
from broker.storage.log import Log
from client.records.builder import BatchBuilder
from client.records.decoder import decode_fetch
from client.records.header import Compression

from .conftest import START_MS, ManualClock, crash, power_cut, small_config
from .simulated_disk import SimulatedDisk

DAY_MS = 86_400_000


def compacted_config(**changes: object) -> object:
    values: dict[str, object] = {"cleanup_policy": "compact", "segment_bytes": 2048}
    values.update(changes)
    return small_config(**values)


def keyed_batch(
    pairs: list[tuple[bytes | None, bytes | None]],
    timestamp_ms: int = START_MS,
    compression: Compression = Compression.NONE,
) -> bytearray:
    builder = BatchBuilder(compression)
    for key, value in pairs:
        builder.append(value, key, (), timestamp_ms)
    return builder.build()


def read_records(log: Log) -> list[tuple[int, bytes | None, bytes | None]]:
    """(offset, key, value) of every record, reading region by region like a consumer."""
    found: list[tuple[int, bytes | None, bytes | None]] = []
    offset = log.start_offset
    while offset < log.end_offset:  # each region moves the offset on (asserted below)
        with log.read(offset, 1 << 20) as region:
            fetched = decode_fetch(region.read_bytes(), offset)
            assert fetched.partial_batch_bytes == 0
            found.extend((r.offset, r.key, r.value) for r in fetched.records)
            assert fetched.next_offset == region.next_offset > offset
            offset = fetched.next_offset
    return found


def newest_per_key(
    appended: list[tuple[int, bytes | None, bytes | None]],
) -> list[tuple[int, bytes | None, bytes | None]]:
    newest: dict[bytes, int] = {}
    for offset, key, _ in appended:
        if key is not None:
            newest[key] = offset
    return [
        (offset, key, value)
        for offset, key, value in appended
        if key is None or newest[key] == offset
    ]


def fill(
    log: Log, rounds: int, keys: int, seed: int = 0
) -> list[tuple[int, bytes | None, bytes | None]]:
    """Append ``rounds`` batches of updates to ``keys`` keys; returns what was appended."""
    rng = random.Random(seed)
    appended: list[tuple[int, bytes | None, bytes | None]] = []
    for round_number in range(rounds):
        pairs = [
            (b"k%d" % rng.randrange(keys), b"v%d-%d" % (round_number, n) + b"x" * 40)
            for n in range(rng.randint(1, 4))
        ]
        result = log.append(keyed_batch(pairs))
        appended.extend(
            (result.base_offset + n, key, value) for n, (key, value) in enumerate(pairs)
        )
    return appended


def test_compaction_keeps_the_newest_record_per_key(tmp_path: Path) -> None:
    """After a pass, reading the log gives exactly the newest record of each key (in
    the compacted part), at its original offset; the log end does not move."""
    log = Log.open(tmp_path / "c-0", compacted_config(), clock_ms=ManualClock())
    appended = fill(log, 120, keys=6)
    end = log.end_offset
    segments_before = log.segment_count
    log.flush()
    result = log.compact()
    assert result.records_removed > 0 and result.bytes_after < result.bytes_before
    # Full segments are rewritten one by one; the next pass merges the small results.
    second = log.compact()
    assert second.segments_after < second.segments_before
    assert log.end_offset == end and log.start_offset == 0
    assert log.segment_count < segments_before
    records = read_records(log)
    # The active segment is never rewritten, so only its older keys may remain twice.
    active_base = log.segment_base_offsets[-1]
    assert [r for r in records if r[0] < active_base] == [
        r for r in newest_per_key(appended) if r[0] < active_base
    ]
    assert [r for r in records if r[0] >= active_base] == [
        r for r in appended if r[0] >= active_base
    ]
    log.check_invariants()
    log.verify()
    log.close()


def test_newer_value_in_the_active_segment_wins(tmp_path: Path) -> None:
    """A key updated in the active segment loses its older records in sealed ones."""
    log = Log.open(tmp_path / "c-0", compacted_config(), clock_ms=ManualClock())
    log.append(keyed_batch([(b"a", b"old" * 300)]))
    log.append(keyed_batch([(b"b", b"only" * 300)]))
    log.roll()
    log.append(keyed_batch([(b"a", b"new")]))
    log.flush()
    log.compact()
    assert read_records(log) == [(1, b"b", b"only" * 300), (2, b"a", b"new")]
    log.close()


def test_unflushed_segments_are_not_compacted(tmp_path: Path) -> None:
    """Only sealed segments before the recovery point are rewritten (recovery never
    re-reads a rewritten segment at an old position)."""
    log = Log.open(tmp_path / "c-0", compacted_config(), clock_ms=ManualClock())
    fill(log, 60, keys=3)
    assert log.recovery_offset == 0
    assert log.begin_compaction() is None
    log.close()


def test_tombstones_survive_delete_retention_then_go(tmp_path: Path) -> None:
    """A tombstone (value None) is kept while younger than delete_retention_ms and
    dropped by a later pass; the deleted key's older values go at once."""
    clock = ManualClock()
    log = Log.open(tmp_path / "c-0", compacted_config(delete_retention_ms=DAY_MS), clock_ms=clock)
    log.append(keyed_batch([(b"a", b"1" * 500), (b"b", b"2" * 500)], timestamp_ms=clock.now_ms))
    log.append(keyed_batch([(b"a", None)], timestamp_ms=clock.now_ms))
    log.roll()
    log.append(keyed_batch([(b"c", b"3")], timestamp_ms=clock.now_ms))
    log.flush()
    log.compact()
    assert read_records(log) == [(1, b"b", b"2" * 500), (2, b"a", None), (3, b"c", b"3")]
    clock.advance(DAY_MS + 1)
    log.compact()
    assert read_records(log) == [(1, b"b", b"2" * 500), (3, b"c", b"3")]
    assert log.end_offset == 4
    log.close()


def test_keyless_records_are_kept(tmp_path: Path) -> None:
    """Records without a key cannot be superseded: compaction keeps them."""
    log = Log.open(tmp_path / "c-0", compacted_config(), clock_ms=ManualClock())
    log.append(keyed_batch([(None, b"x" * 600), (b"k", b"1"), (None, b"y")]))
    log.append(keyed_batch([(b"k", b"2" * 600)]))
    log.roll()
    log.append(keyed_batch([(b"z", b"z")]))
    log.flush()
    log.compact()
    assert [r[0] for r in read_records(log)] == [0, 2, 3, 4]
    log.close()


def test_compression_codec_is_kept(tmp_path: Path) -> None:
    """Kept runs are re-encoded with their batch's codec."""
    log = Log.open(tmp_path / "c-0", compacted_config(), clock_ms=ManualClock())
    for number in range(20):
        log.append(keyed_batch([(b"k%d" % (number % 2), b"v" * 200)], compression=Compression.ZSTD))
    log.flush()
    log.compact()
    with log.read(0, 1 << 20) as region:
        data = region.read_bytes()
    fetched = decode_fetch(data, 0)
    assert fetched.records and all(
        r.batch.attributes & 0x07 == Compression.ZSTD for r in fetched.records
    )
    log.close()


def test_reopen_after_compaction(tmp_path: Path) -> None:
    """A compacted log reopens (cleanly or after a crash) with the same records."""
    directory = tmp_path / "c-0"
    log = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    fill(log, 100, keys=5)
    log.flush()
    log.compact()
    expected = read_records(log)
    log.close()
    log = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    assert read_records(log) == expected
    crash(log)
    log = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    assert read_records(log) == expected
    log.check_invariants()
    log.close()


def test_crash_after_the_swap_file_completes_the_swap(tmp_path: Path) -> None:
    """A crash after the new segment was renamed to .swap (the commit point) but before
    it replaced the old ones: opening completes the swap."""
    directory = tmp_path / "c-0"
    log = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    appended = fill(log, 100, keys=5)
    log.flush()
    plan = log.begin_compaction()
    assert plan is not None
    outputs = compaction.build_compacted_segments(plan)
    assert outputs and all(output.swap_path.exists() for output in outputs)
    plan.release()
    crash(log)
    log = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    assert not list(directory.glob("*.swap")) and not (directory / "cleaner").exists()
    records = read_records(log)
    assert {r[1]: r for r in records} == {r[1]: r for r in newest_per_key(appended)}
    assert log.end_offset == len(appended)
    log.check_invariants()
    log.verify()
    log.close()


def test_crash_halfway_through_the_swap(tmp_path: Path) -> None:
    """A crash after some old segments were already renamed away: opening completes it."""
    directory = tmp_path / "c-0"
    log = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    appended = fill(log, 100, keys=5)
    log.flush()
    plan = log.begin_compaction()
    assert plan is not None
    outputs = compaction.build_compacted_segments(plan)
    first = outputs[0]
    # Simulate the detach of the group's first segment (a rename to *.deleted).
    stem = f"{first.base_offset:020d}"
    os.replace(directory / f"{stem}.log", directory / f"{stem}.log.deleted")
    plan.release()
    crash(log)
    log = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    assert {r[1]: r for r in read_records(log)} == {r[1]: r for r in newest_per_key(appended)}
    log.close()


def test_crash_before_the_swap_file_keeps_the_old_segments(tmp_path: Path) -> None:
    """A crash while the cleaner was still writing: its work directory is removed and the
    log is unchanged."""
    directory = tmp_path / "c-0"
    log = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    appended = fill(log, 50, keys=5)
    log.flush()
    (directory / "cleaner").mkdir()
    (directory / "cleaner" / "00000000000000000000.log").write_bytes(b"partial")
    crash(log)
    log = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    assert not (directory / "cleaner").exists()
    assert read_records(log) == appended
    log.close()


def test_compacted_logs_have_no_retention(tmp_path: Path) -> None:
    """Retention by age or size never deletes segments of a compacted log."""
    clock = ManualClock()
    log = Log.open(
        tmp_path / "c-0",
        compacted_config(retention_ms=1, retention_bytes=10),
        clock_ms=clock,
    )
    fill(log, 50, keys=5)
    clock.advance(DAY_MS)
    assert log.detach_expired_segments().segments_deleted == 0
    log.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), keys=st.integers(1, 30), rounds=st.integers(1, 150))
def test_repeated_passes_match_a_model(tmp_path: Path, seed: int, keys: int, rounds: int) -> None:
    """Random updates and repeated passes: the newest value of every key is always
    readable at its offset, and no record newer than a sealed segment is lost."""
    directory = tmp_path / f"m-{seed}-{keys}-{rounds}"
    log = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    appended: list[tuple[int, bytes | None, bytes | None]] = []
    for part in range(3):
        appended += fill(log, rounds, keys, seed + part)
        log.flush()
        log.compact()
        log.check_invariants()
        records = read_records(log)
        offsets = [r[0] for r in records]
        assert offsets == sorted(set(offsets))
        by_key = {r[1]: r for r in records}
        assert by_key == {r[1]: r for r in newest_per_key(appended)}
        assert set(records) <= set(appended)
    log.close()


async def test_async_compaction_and_schedule(tmp_path: Path) -> None:
    """AsyncLog compacts in a worker thread when enough of the log is dirty, and the
    maintenance round runs it for compacted logs."""
    clock = ManualClock()
    log = await AsyncLog.open(
        tmp_path / "c-0", compacted_config(retention_check_interval_ms=10), clock_ms=clock
    )
    for number in range(60):
        await log.append(keyed_batch([(b"k%d" % (number % 3), b"v" * 80)]))
    assert log.compaction_due()
    result = await log.compact()
    assert result.records_removed > 0
    assert not log.compaction_due()
    for number in range(60):
        await log.append(keyed_batch([(b"k%d" % (number % 3), b"w" * 80)]))
    clock.advance(20)
    segments = log.log.segment_count
    await log.maintain()
    assert log.log.segment_count < segments
    await log.close()
    assert log.log.config.cleanup_policy is CleanupPolicy.COMPACT


def test_compacted_log_survives_a_power_cut(simulated_disk: SimulatedDisk) -> None:
    """A power cut right after a compaction pass keeps the compacted records (a new
    segment is fsynced before it is named) and every flushed one; the unflushed
    appends after the pass are all that is lost."""
    directory = simulated_disk.root / "c-0"
    log = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    fill(log, 120, keys=6)
    log.flush()
    assert log.compact().records_removed > 0
    compacted = read_records(log)
    end = log.end_offset
    fill(log, 5, keys=6)  # unflushed
    power_cut(log, simulated_disk)
    reopened = Log.open(directory, compacted_config(), clock_ms=ManualClock())
    assert reopened.end_offset == end
    assert read_records(reopened) == compacted
    reopened.check_invariants()
    reopened.verify()
    reopened.close()
