"""Leader epochs in the consumer's fetches and the validation of its position after a
leader change (KIP-320), driven without sockets: a Fetcher, hand-made answers."""

from __future__ import annotations

import pytest
import structlog

from client.errors import (
    ErrorCode,
    LogTruncationError,
    OffsetOutOfRangeError,
    StorageError,
)
from client.fetcher import Fetcher
from client.position_validation import (
    ValidationTarget,
    apply_validation,
    validation_requests,
    validation_targets,
)
from client.protocol.connection import IncomingResponse
from client.protocol.messages import (
    FetchPartitionResponse,
    FetchResponse,
    FetchTopicResponse,
    OffsetForLeaderEpochPartitionResponse,
)
from client.records.builder import build_batch
from client.records.decoder import RecordDecoder
from client.records.header import BatchHeader, byte_view
from client.types import OffsetReset, TopicPartition

TP = TopicPartition("orders", 0)
OTHER = TopicPartition("audit", 0)
NODE = 1


class Metadata:
    """The leader epochs the owner's metadata names, changed by the tests."""

    def __init__(self) -> None:
        self.epochs = {TP: 3, OTHER: 7}

    def leader_epoch_for(self, topic: str, partition: int) -> int | None:
        return self.epochs.get(TopicPartition(topic, partition))


def make_fetcher(reset: str = "earliest") -> tuple[Fetcher, Metadata]:
    fetcher = Fetcher(
        RecordDecoder(),
        max_wait_ms=500,
        min_bytes=1,
        max_bytes=1 << 24,
        partition_bytes_max=1 << 20,
        auto_offset_reset=OffsetReset(reset),
    )
    metadata = Metadata()
    fetcher.leader_epoch_for = metadata.leader_epoch_for
    return fetcher, metadata


def leader(topic: str, partition: int) -> int:
    return NODE


def batch_at(base_offset: int, count: int, leader_epoch: int) -> bytes:
    data = build_batch([b"v%d" % (base_offset + i) for i in range(count)], timestamp_ms=1_000)
    BatchHeader.parse(byte_view(data), 0).stamp(base_offset, leader_epoch)
    return bytes(data)


def fetched(tp: TopicPartition, data: bytes | int) -> IncomingResponse:
    """A fetch answer for ``tp``: its batches (bytes) or an error code (int)."""
    if isinstance(data, int):
        result = FetchPartitionResponse(tp.partition, error_code=data, error_message="test")
        payload = b""
    else:
        result = FetchPartitionResponse(tp.partition, high_watermark=100, records_bytes=len(data))
        payload = data
    body = FetchResponse([FetchTopicResponse(tp.topic, [result])])
    return IncomingResponse(1, 1, body, memoryview(payload))


def fetch_records(fetcher: Fetcher, tp: TopicPartition, data: bytes) -> None:
    """Fetch ``tp`` once and apply ``data`` as the answer."""
    assert fetcher.fetchable(NODE, leader, unresolved_stops=False) == [tp]
    _request, seek_counts = fetcher.fetch_request([tp])
    fetcher.apply(fetched(tp, data), seek_counts)
    fetcher.check_invariants()


def fetched_then_new_leader(reset: str = "earliest") -> tuple[Fetcher, Metadata]:
    """TP fetched to offset 10 (epoch 3, last batch epoch 3), then the metadata names
    leader epoch 4: the partition waits for validation."""
    fetcher, metadata = make_fetcher(reset)
    fetcher.assign([TP])
    fetcher.seek(TP, 0, offset=True)
    fetch_records(fetcher, TP, batch_at(0, 4, 2) + batch_at(4, 6, 3))
    metadata.epochs[TP] = 4
    assert fetcher.fetchable(NODE, leader, unresolved_stops=False) == []
    assert fetcher.to_validate() == [TP]
    return fetcher, metadata


def take(fetcher: Fetcher, tp: TopicPartition, count: int) -> None:
    """The application takes ``count`` records of the first chunk (as getmany does)."""
    state = fetcher.states[tp]
    state.head += count
    if state.head == len(state.chunks[0]):
        state.chunks.popleft()
        state.head = 0


def target_of(fetcher: Fetcher) -> ValidationTarget:
    targets = validation_targets(fetcher, [TP])
    return targets[TP]


def answer(
    leader_epoch: int, end_offset: int, code: int = 0
) -> OffsetForLeaderEpochPartitionResponse:
    return OffsetForLeaderEpochPartitionResponse(
        TP.partition, code, "test" if code else "", leader_epoch, end_offset
    )


def test_fetches_name_the_metadata_leader_epoch() -> None:
    """Proves fetches from offsets and continuations carry the partition's leader
    epoch from the metadata, and the first epoch is taken without validation."""
    fetcher, _metadata = make_fetcher()
    fetcher.assign([TP, OTHER])
    fetcher.seek(TP, 0, offset=True)
    fetcher.seek(OTHER, 5, offset=True)
    assert fetcher.fetchable(NODE, leader, unresolved_stops=True) == [TP, OTHER]
    request, _ = fetcher.fetch_request([TP, OTHER])
    continuation = fetcher.continuation_request([TP, OTHER], 4)
    for built in (request, continuation):
        epochs = {
            (topic.name, part.partition): part.current_leader_epoch
            for topic in built.topics
            for part in topic.partitions
        }
        assert epochs == {("orders", 0): 3, ("audit", 0): 7}
    assert fetcher.to_validate() == []


def test_a_new_leader_epoch_holds_the_partition_until_validated() -> None:
    """Proves a partition that fetched records stops being fetchable when the
    metadata names a new leader epoch (an answering chain stops too), the
    validation asks the new leader where the last fetched batch's epoch ends,
    and agreeing logs let it fetch on under the new epoch, buffer kept."""
    fetcher, _metadata = fetched_then_new_leader()
    assert fetcher.fetchable(NODE, leader, unresolved_stops=True) == []
    targets = validation_targets(fetcher, [TP])
    assert targets == {TP: ValidationTarget(4, 3, 10, fetcher.states[TP].seek_count)}
    (request,) = validation_requests(targets, leader).values()
    (asked,) = request.topics[0].partitions
    assert (asked.leader_epoch, asked.current_leader_epoch, request.replica_id) == (3, 4, -1)
    assert not apply_validation(fetcher, TP, targets[TP], answer(3, 10))
    state = fetcher.states[TP]
    assert not state.validating and state.fetch_offset == 10 and state.chunks
    assert fetcher.fetchable(NODE, leader, unresolved_stops=True) == [TP]
    request, _ = fetcher.fetch_request([TP])
    assert request.topics[0].partitions[0].current_leader_epoch == 4
    fetcher.check_invariants()


def test_truncation_past_the_consumer_position_refetches_from_it() -> None:
    """Proves a log that ends the epoch below the fetch position but at or past the
    consumer's position drops the buffered records and fetches again from the
    position, with no error."""
    fetcher, _metadata = fetched_then_new_leader()
    take(fetcher, TP, 5)  # the application has offsets 0..4
    assert not apply_validation(fetcher, TP, target_of(fetcher), answer(3, 7))
    state = fetcher.states[TP]
    assert (state.fetch_offset, state.error, list(state.chunks)) == (5, None, [])
    assert state.fetch_epoch == 3
    fetcher.check_invariants()


def test_truncation_below_the_position_resets_to_the_divergence_with_a_policy() -> None:
    """Proves that when records already returned are gone (the log ends the epoch
    below the consumer's position) a consumer with a reset policy moves back to
    where the logs diverge (no record skipped) and logs how much it reads again."""
    fetcher, _metadata = fetched_then_new_leader("earliest")
    take(fetcher, TP, 10)
    with structlog.testing.capture_logs() as logs:
        assert not apply_validation(fetcher, TP, target_of(fetcher), answer(2, 4))
    state = fetcher.states[TP]
    assert (state.fetch_offset, state.fetch_epoch, state.error) == (4, 2, None)
    (entry,) = [e for e in logs if e["log_level"] == "warning"]
    assert (entry["position"], entry["divergent_offset"], entry["refetched_offsets"]) == (10, 4, 6)
    assert fetcher.fetchable(NODE, leader, unresolved_stops=True) == [TP]
    fetcher.check_invariants()


def test_truncation_below_the_position_with_policy_none_is_a_log_truncation_error() -> None:
    """Proves that with auto_offset_reset "none" records returned and then truncated
    away fail the partition with LogTruncationError (an OffsetOutOfRangeError)
    naming where the logs diverge, and the partition waits for a seek."""
    fetcher, _metadata = fetched_then_new_leader("none")
    take(fetcher, TP, 8)
    assert not apply_validation(fetcher, TP, target_of(fetcher), answer(2, 4))
    state = fetcher.states[TP]
    assert isinstance(state.error, LogTruncationError)
    assert isinstance(state.error, OffsetOutOfRangeError)
    assert state.error.divergent_offset == 4 and "truncated at offset 4" in str(state.error)
    assert state.fetch_offset is None and state.reset is None
    assert fetcher.fetchable(NODE, leader, unresolved_stops=False) == []
    fetcher.seek(TP, 4, offset=True)
    assert fetcher.fetchable(NODE, leader, unresolved_stops=False) == [TP]
    fetcher.check_invariants()


def test_an_epoch_the_leader_no_longer_holds_resets_by_policy() -> None:
    """Proves an answer naming no epoch (-1: the leader's log starts past it) makes
    the position out of range: reset by the policy."""
    fetcher, _metadata = fetched_then_new_leader("latest")
    assert not apply_validation(fetcher, TP, target_of(fetcher), answer(-1, -1))
    state = fetcher.states[TP]
    assert state.fetch_offset is None and state.reset is OffsetReset.LATEST
    assert fetcher.unresolved() == [TP]
    fetcher.check_invariants()


@pytest.mark.parametrize(
    "code",
    [
        ErrorCode.NOT_LEADER,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
        ErrorCode.OFFSET_NOT_AVAILABLE,
    ],
)
def test_retriable_validation_errors_ask_again(code: int) -> None:
    """Proves a retriable error leaves the partition waiting for validation and asks
    for another try (after a metadata refresh)."""
    fetcher, _metadata = fetched_then_new_leader()
    assert apply_validation(fetcher, TP, target_of(fetcher), answer(-1, -1, code))
    assert fetcher.to_validate() == [TP]
    fetcher.check_invariants()


def test_a_non_retriable_validation_error_fails_the_partition() -> None:
    """Proves a non-retriable error is kept for the owner to raise."""
    fetcher, _metadata = fetched_then_new_leader()
    code = ErrorCode.STORAGE_ERROR
    assert not apply_validation(fetcher, TP, target_of(fetcher), answer(-1, -1, code))
    assert isinstance(fetcher.states[TP].error, StorageError)
    assert fetcher.to_validate() == []


def test_an_answer_for_a_position_that_moved_meanwhile_asks_again() -> None:
    """Proves a validation answer is not applied to a position that moved after it
    was asked (a fetch answer in flight arrived): the new position is checked."""
    fetcher, _metadata = fetched_then_new_leader()
    target = target_of(fetcher)
    _request, seek_counts = fetcher.fetch_request([TP])
    fetcher.apply(fetched(TP, batch_at(10, 2, 3)), seek_counts)
    assert apply_validation(fetcher, TP, target, answer(2, 4))
    state = fetcher.states[TP]
    assert state.validating and state.fetch_offset == 12 and state.error is None


def test_a_seek_needs_no_validation_and_a_pause_keeps_the_epoch() -> None:
    """Proves a seek forgets the fetched epoch (the new position's is unknown: the
    next leader change is not validated until records are fetched), while a
    pause's seek to its own position keeps it."""
    fetcher, metadata = make_fetcher()
    fetcher.assign([TP])
    fetcher.seek(TP, 0, offset=True)
    fetch_records(fetcher, TP, batch_at(0, 4, 3))
    fetcher.seek(TP, 2, offset=True, keep_epoch=True)
    assert fetcher.states[TP].fetch_epoch == 3
    fetcher.seek(TP, 100, offset=True)
    assert fetcher.states[TP].fetch_epoch == -1
    metadata.epochs[TP] = 9
    assert fetcher.fetchable(NODE, leader, unresolved_stops=True) == [TP]
    assert fetcher.states[TP].leader_epoch == 9 and fetcher.to_validate() == []


@pytest.mark.parametrize(
    "code", [ErrorCode.FENCED_LEADER_EPOCH, ErrorCode.UNKNOWN_LEADER_EPOCH, ErrorCode.NOT_LEADER]
)
def test_leader_epoch_errors_in_a_fetch_ask_for_a_metadata_refresh(code: int) -> None:
    """Proves FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH and NOT_LEADER fetch answers
    ask the owner to refresh its metadata, leaving the position alone."""
    fetcher, _metadata = make_fetcher()
    fetcher.assign([TP])
    fetcher.seek(TP, 6, offset=True)
    _request, seek_counts = fetcher.fetch_request([TP])
    got_data, stale = fetcher.apply(fetched(TP, code), seek_counts)
    assert stale and not got_data
    state = fetcher.states[TP]
    assert state.fetch_offset == 6 and state.error is None
