"""The client's sans-I/O fetch core: requests built, answers applied, errors turned into actions."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from client.errors import ErrorCode, InvalidBatchError, OffsetOutOfRangeError
from client.fetcher import GROWN_FETCH_BYTES_MIN, Fetcher
from client.protocol.connection import IncomingResponse
from client.protocol.messages import (
    EARLIEST_TIMESTAMP,
    FETCH_OFFSET_CONTINUE,
    LATEST_TIMESTAMP,
    FetchPartitionResponse,
    FetchResponse,
    FetchTopicResponse,
)
from client.records.builder import build_batch
from client.records.decoder import RecordDecoder
from client.records.header import BatchHeader, byte_view
from client.types import OffsetReset, TopicPartition

TP = TopicPartition("orders", 0)
TP1 = TopicPartition("orders", 1)
OTHER = TopicPartition("audit", 0)
NODE = 1


def make_fetcher(reset: str = "earliest", partition_bytes_max: int = 1 << 20) -> Fetcher:
    return Fetcher(
        RecordDecoder(),
        max_wait_ms=500,
        min_bytes=1,
        max_bytes=1 << 24,
        partition_bytes_max=partition_bytes_max,
        auto_offset_reset=OffsetReset(reset),
    )


def batch_at(base_offset: int, count: int) -> bytes:
    data = build_batch([f"v{base_offset + i}".encode() for i in range(count)], timestamp_ms=1_000)
    BatchHeader.parse(byte_view(data), 0).stamp(base_offset)
    return bytes(data)


def answer(parts: dict[TopicPartition, bytes | int], high_watermark: int = 100) -> IncomingResponse:
    """A fetch answer: per partition its batches (bytes) or an error code (int)."""
    by_topic: dict[str, list[FetchPartitionResponse]] = {}
    payload = bytearray()
    for tp, part in parts.items():
        if isinstance(part, int):
            result = FetchPartitionResponse(tp.partition, error_code=part, error_message="test")
        else:
            result = FetchPartitionResponse(
                tp.partition, high_watermark=high_watermark, records_bytes=len(part)
            )
            payload += part
        by_topic.setdefault(tp.topic, []).append(result)
    body = FetchResponse([FetchTopicResponse(name, results) for name, results in by_topic.items()])
    return IncomingResponse(1, 1, body, memoryview(payload))


def leader_is(node: int) -> Any:
    return lambda topic, partition: node


def test_fetch_request_asks_each_partition_from_its_position() -> None:
    """Proves a fetch lists each partition once under its topic, from its position,
    with the default size, and remembers the seek counts it was built with."""
    fetcher = make_fetcher()
    fetcher.assign([TP, TP1, OTHER])
    fetcher.seek(TP, 5, offset=True)
    fetcher.seek(TP1, 7, offset=True)
    fetcher.seek(OTHER, 0, offset=True)
    request, seek_counts = fetcher.fetch_request([TP, TP1, OTHER], responses_max=4)
    asked = {
        (topic.name, part.partition): (part.fetch_offset, part.partition_max_bytes)
        for topic in request.topics
        for part in topic.partitions
    }
    assert asked == {
        ("orders", 0): (5, 1 << 20),
        ("orders", 1): (7, 1 << 20),
        ("audit", 0): (0, 1 << 20),
    }
    assert [topic.name for topic in request.topics] == ["orders", "audit"]
    assert (request.responses_max, request.replica_id) == (4, -1)
    assert seek_counts == {tp: fetcher.states[tp].seek_count for tp in (TP, TP1, OTHER)}
    continuation = fetcher.continuation_request([TP, TP1], 64)
    assert [p.fetch_offset for p in continuation.topics[0].partitions] == [
        FETCH_OFFSET_CONTINUE
    ] * 2
    assert continuation.responses_max == 64
    fetcher.check_invariants()


def test_answer_is_decoded_and_moves_the_position() -> None:
    """Proves an answer's records land in the partition's buffer as one chunk, the
    position moves past them and the high watermark is taken."""
    fetcher = make_fetcher()
    fetcher.assign([TP])
    fetcher.seek(TP, 10, offset=True)
    _, seek_counts = fetcher.fetch_request([TP])
    got_data, stale = fetcher.apply(answer({TP: batch_at(10, 3)}, high_watermark=13), seek_counts)
    state = fetcher.states[TP]
    assert (got_data, stale) == (True, False)
    assert [record.offset for record in state.chunks[0]] == [10, 11, 12]
    assert (state.fetch_offset, state.position(), state.high_watermark) == (13, 10, 13)
    fetcher.check_invariants()


def test_answer_to_a_request_from_before_a_seek_is_dropped() -> None:
    """Proves records fetched for a position the owner left (a seek while the
    fetch was out) never reach the buffer."""
    fetcher = make_fetcher()
    fetcher.assign([TP])
    fetcher.seek(TP, 0, offset=True)
    _, seek_counts = fetcher.fetch_request([TP])
    fetcher.seek(TP, 1, offset=True)
    assert not fetcher.seek_counts_unchanged(seek_counts)
    got_data, _ = fetcher.apply(answer({TP: batch_at(0, 3)}), seek_counts)
    assert not got_data
    assert not fetcher.states[TP].chunks and fetcher.states[TP].fetch_offset == 1


def test_out_of_range_earliest_resets_to_log_start_and_logs_the_skip() -> None:
    """Proves OFFSET_OUT_OF_RANGE with "earliest" resolves to the log start and a
    warning names the partition, the old and new positions and what was skipped."""
    fetcher = make_fetcher("earliest")
    fetcher.assign([TP])
    fetcher.seek(TP, 3, offset=True)
    _, seek_counts = fetcher.fetch_request([TP])
    got_data, stale = fetcher.apply(answer({TP: ErrorCode.OFFSET_OUT_OF_RANGE}), seek_counts)
    assert (got_data, stale) == (False, False)
    assert fetcher.unresolved() == [TP]
    assert fetcher.fetchable(NODE, leader_is(NODE), unresolved_stops=True) == []
    targets, counts = fetcher.resolve_targets([TP])
    assert targets == {TP: EARLIEST_TIMESTAMP}
    with structlog.testing.capture_logs() as logs:
        assert fetcher.apply_resolved({TP: 40}, counts) == {}
    assert fetcher.states[TP].fetch_offset == 40
    (entry,) = [e for e in logs if e["event"] == "position out of range, reset by policy"]
    assert entry["log_level"] == "warning"
    assert (entry["topic"], entry["partition"], entry["policy"]) == ("orders", 0, "earliest")
    assert (entry["old_position"], entry["new_position"], entry["skipped_offsets"]) == (3, 40, 37)
    fetcher.check_invariants()


def test_out_of_range_latest_resets_to_log_end() -> None:
    """Proves OFFSET_OUT_OF_RANGE with "latest" asks for the log end (a position
    past the end comes back to it: nothing skipped, some offsets fetched again)."""
    fetcher = make_fetcher("latest")
    fetcher.assign([TP])
    fetcher.seek(TP, 90, offset=True)
    _, seek_counts = fetcher.fetch_request([TP])
    fetcher.apply(answer({TP: ErrorCode.OFFSET_OUT_OF_RANGE}), seek_counts)
    targets, counts = fetcher.resolve_targets([TP])
    assert targets == {TP: LATEST_TIMESTAMP}
    with structlog.testing.capture_logs() as logs:
        fetcher.apply_resolved({TP: 60}, counts)
    assert fetcher.states[TP].fetch_offset == 60
    (entry,) = [e for e in logs if e["event"] == "position out of range, reset by policy"]
    assert (entry["skipped_offsets"], entry["refetched_offsets"]) == (0, 30)


@pytest.mark.parametrize("spelling", ["none", "error"])
def test_out_of_range_none_keeps_a_typed_error(spelling: str) -> None:
    """Proves with "none" (or its other spelling "error") an out-of-range position
    becomes an OffsetOutOfRangeError naming the partition and offset, and the
    partition is fetched no more until a seek."""
    fetcher = make_fetcher(spelling)
    fetcher.assign([TP])
    fetcher.seek(TP, 3, offset=True)
    _, seek_counts = fetcher.fetch_request([TP])
    got_data, _ = fetcher.apply(answer({TP: ErrorCode.OFFSET_OUT_OF_RANGE}), seek_counts)
    state = fetcher.states[TP]
    assert got_data  # the owner must wake its reader to raise it
    assert isinstance(state.error, OffsetOutOfRangeError)
    assert "orders-0" in state.error.message and "offset 3" in state.error.message
    assert fetcher.unresolved() == []
    assert fetcher.fetchable(NODE, leader_is(NODE), unresolved_stops=True) == []
    fetcher.seek(TP, 7, offset=True)
    assert state.error is None
    assert fetcher.fetchable(NODE, leader_is(NODE), unresolved_stops=True) == [TP]


def test_no_position_with_policy_none_is_an_error() -> None:
    """Proves a new partition with policy "none" gets OffsetOutOfRangeError when its
    position is resolved, instead of a ListOffsets target."""
    fetcher = make_fetcher("none")
    fetcher.assign([TP])
    targets, _ = fetcher.resolve_targets([TP])
    assert targets == {}
    assert isinstance(fetcher.states[TP].error, OffsetOutOfRangeError)


def test_timestamp_after_every_record_resolves_to_the_log_end() -> None:
    """Proves a timestamp ListOffsets finds nothing for (-1) is asked again as the log end."""
    fetcher = make_fetcher()
    fetcher.assign([TP])
    fetcher.seek(TP, 2_000_000, offset=False)
    targets, counts = fetcher.resolve_targets([TP])
    assert targets == {TP: 2_000_000}
    assert fetcher.apply_resolved({TP: -1}, counts) == {TP: LATEST_TIMESTAMP}
    fetcher.apply_resolved({TP: 12}, counts)
    assert fetcher.states[TP].fetch_offset == 12


def test_resolved_offset_for_a_partition_seeked_meanwhile_is_ignored() -> None:
    """Proves a ListOffsets answer does not overwrite a seek made while it was asked."""
    fetcher = make_fetcher()
    fetcher.assign([TP])
    _, counts = fetcher.resolve_targets([TP])
    fetcher.seek(TP, 77, offset=True)
    fetcher.apply_resolved({TP: 5}, counts)
    assert fetcher.states[TP].fetch_offset == 77


def test_partition_errors_become_actions() -> None:
    """Proves NOT_LEADER asks for a metadata refresh, a retriable error is retried
    quietly, and a non-retriable one is kept for the owner to raise."""
    fetcher = make_fetcher()
    fetcher.assign([TP, TP1, OTHER])
    for tp in (TP, TP1, OTHER):
        fetcher.seek(tp, 0, offset=True)
    _, seek_counts = fetcher.fetch_request([TP, TP1, OTHER])
    _, stale = fetcher.apply(
        answer(
            {
                TP: ErrorCode.NOT_LEADER,
                TP1: ErrorCode.REQUEST_TIMED_OUT,
                OTHER: ErrorCode.INVALID_BATCH,
            }
        ),
        seek_counts,
    )
    assert stale
    assert fetcher.states[TP].error is None and fetcher.states[TP1].error is None
    assert isinstance(fetcher.states[OTHER].error, InvalidBatchError)
    assert fetcher.fetchable(NODE, leader_is(NODE), unresolved_stops=False) == [TP, TP1]


def test_a_batch_bigger_than_the_partition_limit_grows_the_next_ask() -> None:
    """Proves an answer holding only part of one batch makes the next fetch ask for
    the whole batch (and continuations built before are outdated)."""
    fetcher = make_fetcher(partition_bytes_max=64)
    fetcher.assign([TP])
    fetcher.seek(TP, 0, offset=True)
    _, seek_counts = fetcher.fetch_request([TP])
    version = fetcher.sizes_version
    whole = batch_at(0, 5)
    got_data, _ = fetcher.apply(answer({TP: whole[:64]}), seek_counts)
    assert not got_data
    assert fetcher.states[TP].fetch_bytes_max == max(2 * len(whole), GROWN_FETCH_BYTES_MIN)
    assert fetcher.sizes_version > version
    request, _ = fetcher.fetch_request([TP])
    assert request.topics[0].partitions[0].partition_max_bytes == fetcher.states[TP].fetch_bytes_max


def test_fetchable_skips_paused_full_and_other_leaders() -> None:
    """Proves only resolved, unpaused partitions with buffer room led by the node are fetched."""
    fetcher = make_fetcher()
    fetcher.assign([TP, TP1, OTHER])
    fetcher.seek(TP, 0, offset=True)
    fetcher.seek(TP1, 0, offset=True)
    fetcher.states[TP1].paused = True
    leaders = {"orders": NODE, "audit": 2}
    assert fetcher.fetchable(NODE, lambda t, p: leaders[t], unresolved_stops=False) == [TP]
    assert fetcher.fetchable(NODE, lambda t, p: leaders[t], unresolved_stops=True) == []
    for offset in (0, 3):
        _, seek_counts = fetcher.fetch_request([TP])
        fetcher.apply(answer({TP: batch_at(offset, 3)}), seek_counts)
    assert len(fetcher.states[TP].chunks) == fetcher.buffered_chunks_max
    assert fetcher.fetchable(NODE, lambda t, p: leaders[t], unresolved_stops=False) == []
    fetcher.check_invariants()
