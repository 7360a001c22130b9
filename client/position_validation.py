"""Validating a consumer's position after a leader change (KIP-320).

When the metadata names a new leader epoch for a partition the consumer has
fetched records of, the Fetcher stops fetching it (``validating``, see
client/fetcher.py).  :func:`validate_positions` then asks the partition's
leader (OffsetsForLeaderEpoch, with the leader epoch from the metadata as
``current_leader_epoch``) where the epoch of the last fetched batch
(``fetch_epoch``) ends in its log, and :func:`apply_validation` applies the
answer:

- the epoch ends at or past the fetch position: the logs agree, fetching goes
  on under the new leader epoch;
- it ends below the fetch position, at ``end_offset``: the log was truncated
  under the consumer (an unclean leader election; a clean one never removes
  a record a consumer could read).  The buffered records are dropped.  If
  the consumer's position (the next record it returns) is at or before
  ``end_offset``, nothing it returned is gone: it fetches again from there.
  If it is past it, records it returned are not in the log any more: with a
  reset policy the position moves back to ``end_offset`` (as Kafka's consumer
  does: the records the new leader holds from there are read, none skipped,
  and a warning says how many offsets are read again); with "none" the
  partition fails with LogTruncationError, raised by the next read, until a
  seek;
- the leader holds no epoch that old (-1): the position cannot be checked, and
  is out of range (the reset policy applies; "none": OffsetOutOfRangeError);
- NOT_LEADER, FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH,
  UNKNOWN_TOPIC_OR_PARTITION or OFFSET_NOT_AVAILABLE (a new leader that does
  not know its high watermark yet): asked again after a metadata refresh;
  another error fails the partition.

The request and the answers are handled without I/O (:func:`validation_targets`,
:func:`validation_requests`, :func:`apply_validation`); :func:`validate_positions`
sends the requests.  Per leader change, not per fetch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from client._io.cluster import Cluster
from client._logging import get_logger
from client.errors import (
    DistributaryError,
    LogTruncationError,
    NotLeaderError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.fetcher import Fetcher, PartitionFetchState
from client.metrics import error_code_name
from client.protocol.messages import (
    OffsetForLeaderEpochPartition,
    OffsetForLeaderEpochPartitionResponse,
    OffsetForLeaderEpochTopic,
    OffsetsForLeaderEpochRequest,
    OffsetsForLeaderEpochResponse,
)
from client.types import OffsetReset, TopicPartition

log = get_logger("client.position_validation")


class ValidationTarget(NamedTuple):
    """What one partition's validation asks, and the state it was asked in."""

    current_leader_epoch: int  # the metadata's leader epoch
    epoch: int  # the leader epoch of the last fetched batch
    fetch_offset: int
    seek_count: int


def validation_targets(
    fetcher: Fetcher, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, ValidationTarget]:
    """The validations to ask for ``partitions`` (those still waiting for one and
    whose leader epoch the metadata knows)."""
    targets: dict[TopicPartition, ValidationTarget] = {}
    for tp in partitions:
        state = fetcher.states.get(tp)
        if state is None or not state.validating:
            continue
        current = fetcher.leader_epoch_for(tp.topic, tp.partition)
        if current is None:
            continue
        assert state.fetch_offset is not None and state.fetch_epoch >= 0
        targets[tp] = ValidationTarget(
            current, state.fetch_epoch, state.fetch_offset, state.seek_count
        )
    return targets


def validation_requests(
    targets: dict[TopicPartition, ValidationTarget],
    leader_for: Callable[[str, int], int | None],
) -> dict[int, OffsetsForLeaderEpochRequest]:
    """One OffsetsForLeaderEpoch request per leader (-1: leader unknown)."""
    by_leader: dict[int, dict[str, list[OffsetForLeaderEpochPartition]]] = {}
    for tp, target in targets.items():
        leader = leader_for(tp.topic, tp.partition)
        topics = by_leader.setdefault(leader if leader is not None else -1, {})
        topics.setdefault(tp.topic, []).append(
            OffsetForLeaderEpochPartition(tp.partition, target.epoch, target.current_leader_epoch)
        )
    return {
        leader: OffsetsForLeaderEpochRequest(
            [OffsetForLeaderEpochTopic(name, parts) for name, parts in topics.items()]
        )
        for leader, topics in by_leader.items()
    }


def apply_validation(
    fetcher: Fetcher,
    tp: TopicPartition,
    target: ValidationTarget,
    answer: OffsetForLeaderEpochPartitionResponse,
) -> bool:
    """Apply one partition's answer (see the module docstring).  True: ask again
    after a metadata refresh (a retriable error, or the partition moved since it
    was asked)."""
    state = fetcher.states.get(tp)
    if state is None or not state.validating:
        return False  # seeked, reset or dropped meanwhile: nothing to check
    if (
        state.seek_count != target.seek_count
        or state.fetch_offset != target.fetch_offset
        or state.fetch_epoch != target.epoch
    ):
        return True  # an answer in flight moved it: check the new position
    if answer.error_code:
        fetcher.counters.count_error(error_code_name(answer.error_code))
        error = error_for_code(answer.error_code, answer.error_message)
        if error.retriable:
            return True
        state.validating = False
        state.error = error
        return False
    state.validating = False
    state.leader_epoch = target.current_leader_epoch
    if answer.leader_epoch < 0 or answer.end_offset < 0:
        state.clear()
        state.fetch_offset = target.fetch_offset
        fetcher.position_out_of_range(
            tp,
            state,
            f"the leader's log holds no leader epoch up to {target.epoch} any more",
        )
        return False
    if answer.end_offset >= target.fetch_offset:
        return False  # the logs agree up to the position
    _truncated(fetcher, tp, state, answer.end_offset, answer.leader_epoch)
    return False


def _truncated(
    fetcher: Fetcher,
    tp: TopicPartition,
    state: PartitionFetchState,
    end_offset: int,
    end_epoch: int,
) -> None:
    """The leader's log ends ``tp``'s last fetched epoch at ``end_offset``, below
    the fetch position: drop what was fetched past it and move or fail."""
    position = state.position()
    assert position is not None
    fetch_offset = state.fetch_offset
    state.clear()
    policy = fetcher.auto_offset_reset
    fields = {
        "topic": tp.topic,
        "partition": tp.partition,
        "position": position,
        "fetch_offset": fetch_offset,
        "divergent_offset": end_offset,
    }
    if position <= end_offset:
        # Nothing returned is gone; the records buffered past it are dropped.
        log.warning("log truncated past the consumer's position: fetching again", **fields)
        state.fetch_offset = position
        state.fetch_epoch = end_epoch  # the epoch at end_offset - 1 bounds the one before
        return
    if policy is OffsetReset.NONE:
        log.warning("log truncated below the consumer's position", policy="none", **fields)
        state.fetch_offset = None
        state.reset = None
        state.error = LogTruncationError(
            f"{tp}: the log was truncated at offset {end_offset}, below the position "
            f"{position} (records returned are gone); auto_offset_reset is 'none': seek to go on",
            end_offset,
        )
        return
    log.warning(
        "log truncated below the consumer's position, reset to where it diverges",
        refetched_offsets=position - end_offset,
        **fields,
    )
    state.fetch_offset = end_offset
    state.fetch_epoch = end_epoch


async def validate_positions(
    cluster: Cluster, fetcher: Fetcher, partitions: Iterable[TopicPartition]
) -> bool:
    """Validate the positions of ``partitions`` that wait for it with their
    leaders.  Returns True when some must be asked again after a metadata
    refresh.  Raises the typed error of a connection or request."""
    states = fetcher.states
    wanted = [tp for tp in partitions if tp in states and states[tp].validating]
    targets = validation_targets(fetcher, wanted)
    again = len(targets) < len(wanted)
    for leader, request in validation_requests(targets, cluster.leader_for).items():
        if leader < 0:
            again = True
            continue
        connection = await cluster.connection_for_node(leader)
        response = await connection.request(request)
        body = response.body
        assert isinstance(body, OffsetsForLeaderEpochResponse)
        for topic in body.topics:
            for answer in topic.partitions:
                tp = TopicPartition(topic.name, answer.partition)
                target = targets.get(tp)
                if target is None:
                    continue
                if apply_validation(fetcher, tp, target, answer):
                    again = True
                    if answer.error_code and _leader_may_have_moved(answer.error_code):
                        cluster.invalidate(topic.name)
    return again


def _leader_may_have_moved(code: int) -> bool:
    error: DistributaryError = error_for_code(code)
    return isinstance(error, NotLeaderError | UnknownTopicOrPartitionError)
