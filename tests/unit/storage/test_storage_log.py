"""Tests for broker.storage.log.Log: append, read, roll, retention, truncation, flush."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.storage import file_handle
from broker.storage.config import FlushPolicy
from broker.storage.file_handle import CachedRegion
from broker.storage.last_append import LAST_APPEND_BYTES_MAX
from broker.storage.log import Log
from client.errors import (
    CorruptBatchError,
    InvalidBatchError,
    OffsetOutOfRangeError,
    StorageError,
)
from client.records.builder import build_batch

from .conftest import START_MS, ManualClock, decode_pairs, make_batch, read_all, small_config


def test_append_assigns_offsets_and_stamps(log: Log) -> None:
    """Appends get consecutive offsets; a multi-batch payload is stamped batch by batch."""
    first = log.append(make_batch(0, 3))
    assert (first.base_offset, first.last_offset, first.batch_count) == (0, 2, 1)
    payload = bytes(make_batch(3, 2) + make_batch(5, 4))
    second = log.append(payload, leader_epoch=7)
    assert (second.base_offset, second.last_offset, second.batch_count) == (3, 8, 2)
    assert second.log_append_time_ms == START_MS
    assert read_all(log) == [(offset, b"v%d" % offset) for offset in range(9)]
    assert log.read_bytes(3, 1 << 20)[12:16] == (7).to_bytes(4, "big")  # leader epoch
    log.check_invariants()


def test_writable_view_of_a_request_buffer_is_stamped_in_place(log: Log) -> None:
    """A Produce payload cut out of a larger request buffer (a writable memoryview)
    is stamped in that buffer, not copied; a read-only view is copied and left alone."""
    log.append(make_batch(0, 2))
    batch = make_batch(2, 3)
    request = bytearray(b"head" + batch + b"tail")
    log.append(memoryview(request)[4 : 4 + len(batch)])
    assert int.from_bytes(request[4:12], "big") == 2  # base offset written in place
    assert request[:4] == b"head" and request[-4:] == b"tail"
    frozen = bytes(make_batch(5, 1))
    log.append(memoryview(frozen))
    assert int.from_bytes(frozen[:8], "big") == 0  # the caller's bytes are untouched
    assert read_all(log) == [(offset, b"v%d" % offset) for offset in range(6)]


def test_append_rejects_bad_payloads_whole(log: Log) -> None:
    """A corrupt or empty payload raises and appends nothing (not even its good batches)."""
    good = make_batch(0, 1)
    bad = make_batch(1, 1)
    bad[-1] ^= 0xFF
    with pytest.raises(CorruptBatchError):
        log.append(bytes(good + bad))
    with pytest.raises(InvalidBatchError):
        log.append(b"")
    with pytest.raises(CorruptBatchError):
        log.append(bytes(good[:-1]))
    assert log.end_offset == 0
    log.check_invariants()


def test_read_bounds(log: Log) -> None:
    """Read at the end is empty; outside [start, end] raises OffsetOutOfRangeError."""
    log.append(make_batch(0, 5))
    with log.read(5, 100) as region:
        assert region.length == 0 and region.next_offset == 5
    for offset in (-1, 6):
        with pytest.raises(OffsetOutOfRangeError):
            log.read(offset, 100)
    with log.read(3, 1) as region:  # inside a batch: the whole batch, even over max_bytes
        assert region.base_offset == 0 and region.next_offset == 5


def test_read_respects_max_bytes_and_end_offset_max(log: Log) -> None:
    """A read returns whole batches within max_bytes and below end_offset_max."""
    for number in range(10):
        log.append(make_batch(number * 2, 2))
    batch_bytes = len(make_batch(0, 2))
    with log.read(0, batch_bytes * 3 + 5) as region:
        assert region.length == batch_bytes * 3 and region.next_offset == 6
    with log.read(0, 1 << 20, end_offset_max=7) as region:
        assert region.next_offset == 6  # the batch holding offset 7 is excluded
    with log.read(6, 1 << 20, end_offset_max=7) as region:
        assert region.length == 0


def test_roll_by_size_and_age(log_dir: Path, clock: ManualClock) -> None:
    """The active segment rolls when the next append would exceed segment_bytes or
    when its first append is segment_ms old; reads cross segments."""
    log = Log.open(log_dir, small_config(segment_bytes=1024, segment_ms=1000), clock_ms=clock)
    batch_bytes = len(make_batch(0, 4))
    per_segment = 1024 // batch_bytes
    for number in range(per_segment + 1):
        log.append(make_batch(number * 4, 4))
    assert log.segment_base_offsets == [0, per_segment * 4]
    clock.advance(999)
    log.append(make_batch(0, 1))
    assert log.segment_count == 2
    clock.advance(1001)
    log.append(make_batch(0, 1))
    assert log.segment_count == 3
    assert [offset for offset, _ in read_all(log, 100)] == list(range(log.end_offset))
    log.check_invariants()
    log.close()


def test_retention_by_size_keeps_active_segment(log_dir: Path, clock: ManualClock) -> None:
    """Retention by bytes deletes the oldest whole segments, never the active one."""
    log = Log.open(log_dir, small_config(retention_bytes=0, retention_ms=None), clock_ms=clock)
    for number in range(5):
        log.append(make_batch(number, 1))
        log.roll()
    log.append(make_batch(5, 1))
    result = log.enforce_retention()
    assert result.segments_deleted == 5 and log.start_offset == 5 == result.start_offset
    assert (
        sorted(os.listdir(log_dir))
        == [
            "00000000000000000005.index",
            "00000000000000000005.log",
            "00000000000000000005.timeindex",
            "recovery-checkpoint.json",
        ]
        or log.segment_count == 1
    )
    with pytest.raises(OffsetOutOfRangeError):
        log.read(4, 100)
    assert read_all(log) == [(5, b"v5")]
    log.check_invariants()
    log.close()


def test_retention_by_age(log_dir: Path, clock: ManualClock) -> None:
    """Retention by time deletes sealed segments whose newest timestamp is too old."""
    log = Log.open(log_dir, small_config(retention_ms=10_000), clock_ms=clock)
    log.append(make_batch(0, 1, START_MS))
    log.roll()
    log.append(make_batch(1, 1, START_MS + 5_000))
    log.roll()
    clock.advance(12_000)
    assert log.enforce_retention().segments_deleted == 1
    assert log.start_offset == 1
    clock.advance(5_000)
    assert log.enforce_retention().segments_deleted == 1
    assert log.start_offset == 2 == log.end_offset
    log.check_invariants()
    log.close()


def test_region_survives_segment_deletion(log_dir: Path, clock: ManualClock) -> None:
    """A region handed out before retention deletes its segment still reads its bytes."""
    log = Log.open(log_dir, small_config(retention_bytes=0), clock_ms=clock)
    log.append(make_batch(0, 3))
    log.roll()
    region = log.read(0, 1 << 20)
    expected = region.read_bytes()
    log.enforce_retention()
    assert not (log_dir / "00000000000000000000.log").exists()
    assert region.read_bytes() == expected
    with open(os.devnull, "wb") as sink:
        assert region.send_blocking(sink.fileno()) == len(expected)
    descriptor = region.descriptor
    region.release()
    with pytest.raises(OSError):
        os.fstat(descriptor)  # the last reference closed the file
    log.close()


def test_truncate_to_drops_containing_batch(log: Log) -> None:
    """truncate_to drops the batch holding the offset and everything after it."""
    for number in range(6):
        log.append(make_batch(number * 3, 3))
        if number % 2:
            log.roll()
    cut_region = log.read(6, 1 << 20)  # in the segment that gets cut
    deleted_region = log.read(12, 1 << 20)  # in a segment that gets deleted
    deleted_bytes = deleted_region.read_bytes()
    assert log.truncate_to(10) == 9
    assert not cut_region.is_intact()
    with pytest.raises(StorageError):
        cut_region.read_bytes()
    assert deleted_region.is_intact() and deleted_region.read_bytes() == deleted_bytes
    cut_region.release()
    deleted_region.release()
    assert log.end_offset == 9 and log.segment_base_offsets == [0, 6]
    log.check_invariants()
    assert log.append(make_batch(100, 1)).base_offset == 9
    assert log.truncate_to(50) == 10  # no-op beyond the end
    with pytest.raises(OffsetOutOfRangeError):
        log.truncate_to(-1)
    assert log.truncate_to(0) == 0
    assert log.end_offset == 0 and read_all(log) == []
    log.check_invariants()


def test_offset_for_timestamp(log: Log) -> None:
    """Lookup by time finds the first batch whose max timestamp is >= T, across segments."""
    timestamps = [100, 300, 200, 400, 500]
    for number, delta in enumerate(timestamps):
        log.append(make_batch(number, 1, START_MS + delta))
        if number == 2:
            log.roll()
    assert log.offset_for_timestamp(START_MS) == 0
    assert log.offset_for_timestamp(START_MS + 250) == 1
    assert log.offset_for_timestamp(START_MS + 350) == 3
    assert log.offset_for_timestamp(START_MS + 500) == 4
    assert log.offset_for_timestamp(START_MS + 501) is None


def test_flush_policies(log_dir: Path, clock: ManualClock) -> None:
    """needs_flush follows the policy; flush advances the recovery point."""
    every = Log.open(log_dir / "a", small_config(flush_policy="every-append"), clock_ms=clock)
    every.append(make_batch(0, 1))
    assert every.needs_flush()
    assert every.flush() == 1 == every.recovery_offset
    assert not every.needs_flush()
    every.close()
    interval = Log.open(
        log_dir / "b",
        small_config(flush_policy="interval", flush_interval_ms=100),
        clock_ms=clock,
    )
    interval.append(make_batch(0, 1))
    assert not interval.needs_flush() and interval.flush_due_in_ms() == 100
    clock.advance(100)
    assert interval.needs_flush()
    interval.close()
    never = Log.open(log_dir / "c", small_config(), clock_ms=clock)
    never.append(make_batch(0, 1))
    clock.advance(10**9)
    assert not never.needs_flush() and never.config.flush_policy is FlushPolicy.NEVER
    never.close()


def test_clean_close_and_reopen(log_dir: Path, clock: ManualClock) -> None:
    """A clean close leaves a marker; reopening trusts the files and keeps every record."""
    log = Log.open(log_dir, small_config(), clock_ms=clock)
    for number in range(40):
        log.append(make_batch(number, 1, START_MS + number))
    expected = read_all(log)
    log.close()
    assert (log_dir / "clean-shutdown").exists()
    reopened = Log.open(log_dir, small_config(), clock_ms=clock)
    assert not (log_dir / "clean-shutdown").exists()
    assert read_all(reopened) == expected
    assert reopened.recovery_offset == reopened.end_offset == 40
    assert reopened.offset_for_timestamp(START_MS + 39) == 39
    reopened.check_invariants()
    reopened.close()


def test_closed_log_refuses_work(log: Log) -> None:
    """After close, operations raise StorageError; close is idempotent."""
    log.close()
    log.close()
    with pytest.raises(StorageError):
        log.append(make_batch(0, 1))
    with pytest.raises(StorageError):
        log.read(0, 1)


def test_decoded_values_match_across_many_reads(log: Log) -> None:
    """Reading from every offset returns the batch holding it, decoded correctly."""
    for number in range(30):
        log.append(make_batch(number * 2, 2))
    for offset in range(60):
        with log.read(offset, 50) as region:
            pairs = decode_pairs(region.read_bytes())
        assert pairs[0][0] == offset - offset % 2
        assert (offset, b"v%d" % offset) in pairs


def test_tail_header_fields_walks_the_last_bytes_across_segments(
    log_dir: Path, clock: ManualClock
) -> None:
    """tail_header_fields yields the headers of about the last bytes_max bytes, oldest
    first, across a segment boundary; a big budget yields every batch."""
    log = Log.open(log_dir, small_config(segment_bytes=1024), clock_ms=clock)
    batch_bytes = len(make_batch(0, 4))
    for number in range(12):
        log.append(make_batch(number * 4, 4))
    assert log.segment_count >= 2
    every = [fields[0] for fields in log.tail_header_fields(1 << 20)]
    assert every == [number * 4 for number in range(12)]
    tail = [fields[0] for fields in log.tail_header_fields(3 * batch_bytes)]
    assert 3 <= len(tail) < 12 and tail == every[-len(tail) :]
    log.close()


def unreachable(*_args: object) -> bytes:
    raise AssertionError("the file was read")


def test_the_latest_small_append_is_read_from_memory(
    log_dir: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of exactly the latest append (a live consumer's) gets its stamped
    bytes without reading the file -- the same bytes the file holds -- unless the
    append was big, a limit cuts into it, or the log rolled or was truncated since."""
    log = Log.open(log_dir, small_config(segment_bytes=1 << 20), clock_ms=clock)
    try:
        log.append(make_batch(0, 2))
        log.append(make_batch(2, 3), leader_epoch=4)
        region = log.read(2, 1 << 20)
        assert isinstance(region, CachedRegion)
        assert (region.base_offset, region.next_offset) == (2, 5)
        with monkeypatch.context() as patched:  # read with no access to the file
            patched.setattr(file_handle, "read_exactly", unreachable)
            cached = region.read_bytes()
        assert cached[:8] == (2).to_bytes(8, "big")  # stamped: the file's bytes
        assert decode_pairs(cached, 2) == [(2, b"v2"), (3, b"v3"), (4, b"v4")]
        assert not isinstance(log.read(0, 1 << 20), CachedRegion)  # not the latest
        assert not isinstance(log.read(2, len(cached) - 1), CachedRegion)  # over max_bytes
        assert log.read(2, 1 << 20, end_offset_max=4).next_offset <= 4  # the limit holds
        assert log.read_bytes(0, 1 << 20).endswith(cached)  # from the file: the same bytes

        log.truncate_to(3)  # the latest append is cut: neither kept nor readable
        with pytest.raises(StorageError):
            region.read_bytes()
        assert log.end_offset == 2 and log.read(2, 1 << 20).length == 0

        log.append(make_batch(2, 1))
        assert isinstance(log.read(2, 1 << 20), CachedRegion)
        log.roll()
        assert not isinstance(log.read(2, 1 << 20), CachedRegion)

        big = build_batch([bytes(LAST_APPEND_BYTES_MAX)])
        log.append(big)
        assert not isinstance(log.read(3, 1 << 20), CachedRegion)
        assert read_all(log)[-1][0] == 3
    finally:
        log.close()


def test_reads_after_truncation_never_return_cut_bytes(log_dir: Path, clock: ManualClock) -> None:
    """After truncate_to, no read -- from the file, the indexes or the last-append
    cache -- returns a byte of the cut range; lookups by time forget the cut batches;
    new appends at the same offsets are read back, not the old bytes."""
    config = small_config(segment_bytes=2048, index_interval_bytes=64)
    log = Log.open(log_dir, config, clock_ms=clock)
    try:
        for number in range(30):
            log.append(make_batch(number * 2, 2, START_MS + number))
        cached = log.read(58, 1 << 20)
        assert isinstance(cached, CachedRegion)
        cut_at = log.segment_base_offsets[-1] + 3  # inside a batch of the last segment
        new_end = log.truncate_to(cut_at)
        assert new_end == cut_at - 1 and log.end_offset == new_end
        log.check_invariants()  # no index or time-index entry at or past the end
        with pytest.raises(StorageError):
            cached.read_bytes()
        for offset in range(new_end):
            with log.read(offset, 1 << 20) as region:
                offsets = [got for got, _ in decode_pairs(region.read_bytes())]
            assert offsets and max(offsets) < new_end and region.next_offset <= new_end
        assert log.read(new_end, 1 << 20).length == 0
        last_kept_ms = START_MS + new_end // 2 - 1
        assert log.offset_for_timestamp(last_kept_ms) == new_end - 2
        assert log.offset_for_timestamp(last_kept_ms + 1) is None
        log.append(build_batch([b"new-a", b"new-b"], timestamp_ms=START_MS))
        assert decode_pairs(log.read_bytes(new_end, 1 << 20)) == [
            (new_end, b"new-a"),
            (new_end + 1, b"new-b"),
        ]
        assert read_all(log)[new_end - 1 :] == [
            (new_end - 1, b"v%d" % (new_end - 1)),
            (new_end, b"new-a"),
            (new_end + 1, b"new-b"),
        ]
        log.check_invariants()
    finally:
        log.close()
