"""Tests for broker.storage.segment.LogSegment and broker.storage.segments."""

from __future__ import annotations

from pathlib import Path

from broker.storage.batch_scan import ScannedBatch
from broker.storage.segment import LogSegment
from broker.storage.segments import LogSegments
from client.records.header import BatchHeader

from .conftest import START_MS, decode_pairs, make_batch, small_config


def _append(segment: LogSegment, first_value: int, count: int, timestamp_ms: int) -> None:
    batch = make_batch(first_value, count, timestamp_ms)
    header = BatchHeader.parse(batch)
    header.stamp(segment.next_offset)
    info = ScannedBatch(
        0, segment.next_offset, segment.next_offset + count, len(batch), timestamp_ms, timestamp_ms
    )
    del header
    segment.append(batch, [info])


def test_segment_append_read_and_indexes(tmp_path: Path) -> None:
    """Appended batches read back by offset; the sparse indexes follow the interval."""
    segment = LogSegment.create(tmp_path, 50, small_config(index_interval_bytes=100))
    for number in range(20):
        _append(segment, number * 3, 3, START_MS + number)
    segment.check_invariants()
    assert segment.next_offset == 110
    assert segment.offset_index.entry_count > 5
    region = segment.read(80, 10)  # smaller than a batch: the batch comes whole
    pairs = decode_pairs(region.read_bytes())
    region.release()
    assert pairs[0][0] == 80 - (80 - 50) % 3
    assert [value for offset, value in pairs if offset == 80] == [b"v30"]
    assert segment.offset_for_timestamp(START_MS + 7) == 50 + 7 * 3
    assert segment.offset_for_timestamp(START_MS + 100) is None
    segment.close()


def test_segment_truncate_recomputes_state(tmp_path: Path) -> None:
    """truncate_to drops the batch holding the offset and recomputes the max timestamp."""
    segment = LogSegment.create(tmp_path, 0, small_config(index_interval_bytes=64))
    for number in range(10):
        _append(segment, number * 2, 2, START_MS + number)
    assert segment.truncate_to(9) == 8
    segment.check_invariants()
    assert segment.max_timestamp_ms == START_MS + 3
    assert segment.truncate_to(0) == 0
    assert segment.is_empty and segment.rolling_timestamp_ms is None
    segment.check_invariants()
    segment.close()


def test_segment_load_after_seal(tmp_path: Path) -> None:
    """A sealed segment reopens from its indexes without a scan and agrees on state."""
    config = small_config(index_interval_bytes=64)
    segment = LogSegment.create(tmp_path, 0, config)
    for number in range(10):
        _append(segment, number, 1, START_MS + 10 - number)
    segment.seal()
    segment.close()
    reopened = LogSegment.open(tmp_path, 0, config)
    assert reopened.load(next_offset=10)
    assert reopened.max_timestamp_ms == START_MS + 10
    assert reopened.offset_of_max_timestamp == 0
    reopened.seal()
    reopened.check_invariants()
    reopened.close()


def test_segments_floor_and_order(tmp_path: Path) -> None:
    """LogSegments finds the segment holding an offset and keeps base-offset order."""
    config = small_config()
    segments = LogSegments()
    first = LogSegment.create(tmp_path, 0, config)
    _append(first, 0, 10, START_MS)
    first.seal()
    second = LogSegment.create(tmp_path, 10, config)
    segments.add(second)
    segments.add(first)
    assert segments.first is first and segments.active is second
    assert segments.floor(9) is first and segments.floor(10) is second
    assert segments.floor(-1) is None
    segments.check_invariants()
    for segment in segments:
        segment.close()
