"""The client's fetch core: positions of the fetched partitions, Fetch requests, answers.

A :class:`Fetcher` is a plain class (no sockets, no event loop): it keeps one
:class:`PartitionFetchState` per fetched partition (the next offset to fetch,
how to resolve it when unknown, the decoded records waiting to be taken, the
last error), builds FetchRequests -- from offsets, or as continuations
(FETCH_OFFSET_CONTINUE: the broker resumes where the connection's previous
fetch of the partition ended) and streams (``responses_max`` > 1, docs/protocol.md)
-- and applies FetchResponses: each partition's share of the payload is decoded
per batch in C into a list of records (one "chunk"), and its position moves past it.

A partition's error in an answer becomes an action: OFFSET_OUT_OF_RANGE resets
the position by the ``auto_offset_reset`` policy ("earliest": the log start,
"latest": the log end; the owner resolves it with ListOffsets and hands the
answer to :meth:`Fetcher.apply_resolved`, which logs what was skipped) or, with
"none", keeps an OffsetOutOfRangeError for the owner to raise; NOT_LEADER and
UNKNOWN_TOPIC_OR_PARTITION ask for a metadata refresh; other non-retriable
errors are kept for the owner to raise.

Every seek bumps the partition's ``seek_count``; a request remembers the
counts it was built with, and an answer for an older count is dropped (its
records belong to a position the owner has left).

Leader epochs (KIP-320).  Each fetch names the partition's leader epoch from
the owner's metadata (``current_leader_epoch``: the broker refuses a stale one,
FENCED_LEADER_EPOCH, or one it does not know yet, UNKNOWN_LEADER_EPOCH; both,
like NOT_LEADER, ask for a metadata refresh), and each partition remembers the
leader epoch of the last batch it fetched (``fetch_epoch``).  When the metadata
names a new leader epoch for a partition that has fetched records, the
partition stops fetching until its position is validated
(client/position_validation.py): the new leader says where that epoch ends in
its log, and a log that ends it below the position was truncated under the
consumer.

The owner (client/fetch_loop.py for the Consumer) does the I/O: it sends
what the Fetcher builds, asks ListOffsets, refreshes metadata, and takes the
chunks.  Nothing here is consumer-only (groups, iteration), so a follower's
fetcher can drive the same class.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from client._logging import get_logger
from client.errors import (
    DistributaryError,
    ErrorCode,
    FencedLeaderEpochError,
    NotLeaderError,
    OffsetOutOfRangeError,
    UnknownLeaderEpochError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.metrics import ConsumerCounters, error_code_name
from client.protocol.connection import IncomingResponse
from client.protocol.messages import (
    EARLIEST_TIMESTAMP,
    FETCH_OFFSET_CONTINUE,
    LATEST_TIMESTAMP,
    FetchPartition,
    FetchRequest,
    FetchResponse,
    FetchTopic,
)
from client.records.decoder import Record, RecordDecoder
from client.records.header import BATCH_BYTES_LIMIT
from client.types import OffsetReset, TopicPartition

log = get_logger("client.fetcher")

# Fetched chunks (one decoded answer's share) buffered per partition before it
# is fetched no more: one being handed out, one ready.
BUFFERED_CHUNKS_MAX: Final = 2
# The smallest per-partition size asked for after one batch did not fit the
# partition's limit (then twice the batch, up to the largest batch allowed).
GROWN_FETCH_BYTES_MIN: Final = 1 << 16

# seek_count per partition when a request was built (see the module docstring).
SeekCounts = dict[TopicPartition, int]


class PartitionFetchState:
    """Where one fetched partition stands.  ``fetch_offset`` None: unresolved."""

    __slots__ = (
        "chunks",
        "error",
        "fetch_bytes_max",
        "fetch_epoch",
        "fetch_offset",
        "head",
        "high_watermark",
        "leader_epoch",
        "out_of_range_offset",
        "paused",
        "reset",
        "seek_count",
        "validating",
    )

    def __init__(self, reset: OffsetReset | int | None) -> None:
        self.fetch_offset: int | None = None
        # How to resolve the offset: a policy, a timestamp (ms), or None (wait for seek).
        self.reset = reset
        self.chunks: deque[list[Record[Any]]] = deque()
        self.head = 0  # index of the next record in chunks[0]
        # Bumped by every seek: answers to requests built before it are dropped.
        self.seek_count = 0
        self.error: DistributaryError | None = None
        self.high_watermark = -1
        # The per-partition size to ask for; 0: the fetcher's default.
        self.fetch_bytes_max = 0
        # Held by the owner: not fetched (and, in the consumer, not handed out).
        self.paused = False
        # The position an OFFSET_OUT_OF_RANGE answer refused, until the reset
        # policy's offset is known (then what was skipped is logged).
        self.out_of_range_offset: int | None = None
        # The leader epoch fetches name (the metadata's when last fetched; -1:
        # none yet) and the leader epoch of the last batch fetched, i.e. of the
        # record before ``fetch_offset`` or a later one (-1: unknown, after a seek).
        self.leader_epoch = -1
        self.fetch_epoch = -1
        # The metadata names a new leader epoch: not fetched until the position is
        # validated against the new leader's log (client/position_validation.py).
        self.validating = False

    def clear(self) -> None:
        """Forget buffered records and errors (a seek): answers in flight are dropped."""
        self.chunks.clear()
        self.head = 0
        self.seek_count += 1
        self.error = None
        self.out_of_range_offset = None
        self.validating = False

    def position(self) -> int | None:
        """The offset of the next record to be taken (None: unresolved)."""
        if self.chunks:
            return int(self.chunks[0][self.head].offset)
        return self.fetch_offset

    def check_invariants(self) -> None:
        assert self.fetch_offset is None or self.fetch_offset >= 0, self.fetch_offset
        assert self.seek_count >= 0 and self.fetch_bytes_max >= 0
        assert self.leader_epoch >= -1 and self.fetch_epoch >= -1
        assert not self.validating or (self.fetch_offset is not None and self.fetch_epoch >= 0)
        assert not self.chunks or 0 <= self.head < len(self.chunks[0]), self.head
        assert all(self.chunks), "no empty chunk is buffered"
        if self.chunks:
            assert self.fetch_offset is not None
            assert int(self.chunks[-1][-1].offset) < self.fetch_offset


class Fetcher:
    """Positions and fetch state of a set of partitions (see the module docstring)."""

    def __init__(
        self,
        decoder: RecordDecoder[Any],
        *,
        max_wait_ms: int,
        min_bytes: int,
        max_bytes: int,
        partition_bytes_max: int,
        auto_offset_reset: OffsetReset,
        buffered_chunks_max: int = BUFFERED_CHUNKS_MAX,
        replica_id: int = -1,
    ) -> None:
        assert max_wait_ms >= 0 and min_bytes >= 0
        assert max_bytes > 0 and partition_bytes_max > 0 and buffered_chunks_max > 0
        self.decoder = decoder
        self.max_wait_ms = max_wait_ms
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self.partition_bytes_max = partition_bytes_max
        self.auto_offset_reset = auto_offset_reset
        self.buffered_chunks_max = buffered_chunks_max
        # Sent in every request: -1 for a consumer, the node id for a follower.
        self.replica_id = replica_id
        # The leader epoch the owner's metadata names for a partition (None:
        # unknown); the owner sets it (a Cluster's ``leader_epoch_for``).
        self.leader_epoch_for: Callable[[str, int], int | None] = _no_leader_epoch
        self.states: dict[TopicPartition, PartitionFetchState] = {}
        # Bumped whenever a partition's fetch_bytes_max changes or partitions come
        # and go: continuations built before then must be rebuilt.
        self.sizes_version = 0
        # Records, bytes, answers and errors so far (client/metrics.py).
        self.counters = ConsumerCounters()

    # -- partitions and positions -----------------------------------------------------

    def assign(self, partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Fetch exactly ``partitions`` (kept ones keep their state; new ones start
        by ``auto_offset_reset``).  Returns the partitions dropped."""
        previous = self.states
        states = {
            tp: previous.get(tp) or PartitionFetchState(self.auto_offset_reset) for tp in partitions
        }
        dropped = [tp for tp in previous if tp not in states]
        for tp in dropped:
            previous[tp].clear()
        self.states = states
        self.sizes_version += 1
        return dropped

    def add(self, tp: TopicPartition, offset: int | None) -> PartitionFetchState:
        """Start fetching ``tp`` at ``offset`` (None: by ``auto_offset_reset``)."""
        state = PartitionFetchState(self.auto_offset_reset if offset is None else None)
        state.fetch_offset = offset
        self.states[tp] = state
        self.sizes_version += 1
        return state

    def remove(self, tp: TopicPartition) -> None:
        state = self.states.pop(tp, None)
        if state is not None:
            state.clear()
            self.sizes_version += 1

    def seek(
        self,
        tp: TopicPartition,
        target: OffsetReset | int,
        *,
        offset: bool,
        keep_epoch: bool = False,
    ) -> None:
        """Drop ``tp``'s buffered records and move it: to the offset ``target``
        (``offset`` True), or to where the policy or timestamp ``target``
        resolves (done by the owner, see :meth:`resolve_targets`).
        ``keep_epoch``: ``target`` is at or before the fetched position (a pause),
        so the last fetched batch's leader epoch still bounds the epoch there."""
        state = self.states[tp]
        state.clear()
        if not keep_epoch:
            state.fetch_epoch = -1
        if offset:
            assert isinstance(target, int) and target >= 0, target
            state.fetch_offset = target
            state.reset = None
        else:
            state.fetch_offset = None
            state.reset = target

    def unresolved(self) -> list[TopicPartition]:
        """The partitions whose offset waits to be resolved (ListOffsets)."""
        return [
            tp
            for tp, state in self.states.items()
            if state.fetch_offset is None and state.reset is not None
        ]

    def resolve_targets(
        self, partitions: Iterable[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], SeekCounts]:
        """The ListOffsets targets (EARLIEST/LATEST_TIMESTAMP or a timestamp) that
        resolve ``partitions``' positions, and their seek counts now.  With the
        policy "none" a partition gets an OffsetOutOfRangeError instead."""
        targets: dict[TopicPartition, int] = {}
        seek_counts: SeekCounts = {}
        for tp in partitions:
            state = self.states.get(tp)
            if state is None or state.fetch_offset is not None or state.reset is None:
                continue
            reset = state.reset
            if reset is OffsetReset.NONE:
                state.error = OffsetOutOfRangeError(
                    f"{tp} has no position and auto_offset_reset is 'none': seek first"
                )
                state.reset = None
                continue
            seek_counts[tp] = state.seek_count
            if reset is OffsetReset.EARLIEST:
                targets[tp] = EARLIEST_TIMESTAMP
            elif reset is OffsetReset.LATEST:
                targets[tp] = LATEST_TIMESTAMP
            else:
                assert isinstance(reset, int)
                targets[tp] = reset
        return targets, seek_counts

    def apply_resolved(
        self, offsets: Mapping[TopicPartition, int], seek_counts: SeekCounts
    ) -> dict[TopicPartition, int]:
        """Set the positions ListOffsets found for :meth:`resolve_targets`' targets.
        A partition seeked meanwhile is left alone.  Returns the partitions with no
        record at or after their timestamp (offset -1): ask again for their log
        end (LATEST_TIMESTAMP), with the same ``seek_counts``."""
        again: dict[TopicPartition, int] = {}
        for tp, offset in offsets.items():
            state = self.states.get(tp)
            if (
                state is None
                or state.fetch_offset is not None
                or state.seek_count != seek_counts.get(tp)
            ):
                continue  # resolved meanwhile, or seeked while ListOffsets was asked
            if offset < 0:
                again[tp] = LATEST_TIMESTAMP
                continue
            if state.out_of_range_offset is not None:
                self._log_reset(tp, state, state.out_of_range_offset, offset)
                state.out_of_range_offset = None
            state.fetch_offset = offset
            state.reset = None
        return again

    def _log_reset(
        self, tp: TopicPartition, state: PartitionFetchState, old: int, new: int
    ) -> None:
        policy = state.reset.value if isinstance(state.reset, OffsetReset) else state.reset
        log.warning(
            "position out of range, reset by policy",
            topic=tp.topic,
            partition=tp.partition,
            policy=policy,
            old_position=old,
            new_position=new,
            skipped_offsets=max(0, new - old),
            refetched_offsets=max(0, old - new),
        )

    # -- building requests ------------------------------------------------------------

    def fetchable(
        self, node: int, leader_for: Callable[[str, int], int | None], *, unresolved_stops: bool
    ) -> list[TopicPartition]:
        """The partitions to fetch from ``node`` now: resolved, not failed, not
        paused, with room in their buffer, led by ``node`` (-1: leader unknown).
        ``unresolved_stops``: none (an empty list) when some partition waits for
        its offset to be resolved, which only the owner can do."""
        ready: list[TopicPartition] = []
        chunks_max = self.buffered_chunks_max
        leader_epoch_for = self.leader_epoch_for
        for tp, state in self.states.items():
            if state.fetch_offset is None:
                if unresolved_stops and state.reset is not None:
                    return []
                continue
            if state.error is not None or state.paused or len(state.chunks) >= chunks_max:
                continue
            leader = leader_for(tp.topic, tp.partition)
            if (leader if leader is not None else -1) != node:
                continue
            if not state.validating:
                epoch = leader_epoch_for(tp.topic, tp.partition)
                if epoch is not None and epoch != state.leader_epoch:
                    if state.leader_epoch < 0 or state.fetch_epoch < 0:
                        state.leader_epoch = epoch  # nothing fetched to validate
                    else:
                        state.validating = True
            if state.validating:
                if unresolved_stops:
                    return []
                continue
            ready.append(tp)
        return ready

    def to_validate(self) -> list[TopicPartition]:
        """The partitions waiting for their position to be validated after a leader
        change (client/position_validation.py)."""
        return [tp for tp, state in self.states.items() if state.validating]

    def fetch_request(
        self, partitions: list[TopicPartition], responses_max: int = 1
    ) -> tuple[FetchRequest, SeekCounts]:
        """The fetch of ``partitions`` (each resolved and listed once) from their
        positions, and their seek counts now.  ``responses_max`` > 1: a stream."""
        by_topic: dict[str, list[FetchPartition]] = {}
        seek_counts: SeekCounts = {}
        states = self.states
        default_bytes = self.partition_bytes_max
        for tp in partitions:
            state = states[tp]
            assert state.fetch_offset is not None
            seek_counts[tp] = state.seek_count
            fetch_partition = FetchPartition(
                tp.partition,
                state.fetch_offset,
                state.fetch_bytes_max or default_bytes,
                state.leader_epoch,
            )
            group = by_topic.get(tp.topic)
            if group is None:
                by_topic[tp.topic] = [fetch_partition]
            else:
                group.append(fetch_partition)
        return self._request(by_topic, responses_max), seek_counts

    def continuation_request(
        self, partitions: list[TopicPartition], responses_max: int
    ) -> FetchRequest:
        """A fetch of ``partitions`` from where the connection's previous fetch of
        each ended (the broker resolves FETCH_OFFSET_CONTINUE in request order)."""
        by_topic: dict[str, list[FetchPartition]] = {}
        states = self.states
        default_bytes = self.partition_bytes_max
        for tp in partitions:
            state = states[tp]
            fetch_partition = FetchPartition(
                tp.partition,
                FETCH_OFFSET_CONTINUE,
                state.fetch_bytes_max or default_bytes,
                state.leader_epoch,
            )
            group = by_topic.get(tp.topic)
            if group is None:
                by_topic[tp.topic] = [fetch_partition]
            else:
                group.append(fetch_partition)
        return self._request(by_topic, responses_max)

    def _request(
        self, by_topic: dict[str, list[FetchPartition]], responses_max: int
    ) -> FetchRequest:
        return FetchRequest(
            max_wait_ms=self.max_wait_ms,
            min_bytes=self.min_bytes,
            max_bytes=self.max_bytes,
            topics=[FetchTopic(name, parts) for name, parts in by_topic.items()],
            responses_max=responses_max,
            replica_id=self.replica_id,
        )

    def seek_counts_unchanged(self, seek_counts: SeekCounts) -> bool:
        """True when no partition of ``seek_counts`` was seeked (or reset) since
        they were taken.  A plain loop: per answer, it costs a generator less than
        ``all``."""
        states = self.states
        for tp, count in seek_counts.items():
            state = states.get(tp)
            if state is None or state.seek_count != count:
                return False
        return True

    # -- applying answers -------------------------------------------------------------

    def apply(self, response: IncomingResponse, seek_counts: SeekCounts) -> tuple[bool, bool]:
        """Decode a fetch answer into the partitions' buffers and move their
        positions.  Returns (records or an error arrived for the owner to hand
        out, a partition's leader moved: metadata must be refreshed)."""
        body = response.body
        assert isinstance(body, FetchResponse)
        # The connection checked the payload rule: records_bytes add up, no
        # partition twice, none negative.  Cut it per partition without copying.
        payload = response.payload
        counters = self.counters
        counters.fetch_responses += 1
        counters.bytes_fetched += len(payload)
        position = 0
        got_data = False
        stale = False
        states = self.states
        for topic in body.topics:
            name = topic.name
            for result in topic.partitions:
                size = result.records_bytes
                start = position
                position += size
                key = TopicPartition(name, result.partition)
                state = states.get(key)
                if (
                    state is None
                    or seek_counts.get(key) != state.seek_count
                    or state.fetch_offset is None
                ):
                    continue  # not fetched any more, or seeked while the fetch was out
                if result.error_code:
                    stale |= self._partition_error(
                        key, state, result.error_code, result.error_message
                    )
                    got_data |= state.error is not None
                    continue
                state.high_watermark = result.high_watermark
                if size:
                    got_data |= self._decode_into(state, payload[start:position])
                elif state.fetch_bytes_max:
                    self._set_fetch_bytes_max(state, 0)  # what decoding nothing would leave
        assert position == len(payload), (position, len(payload))
        return got_data, stale

    def _decode_into(self, state: PartitionFetchState, view: memoryview) -> bool:
        assert state.fetch_offset is not None
        try:
            fetched = self.decoder.decode_fetch(view, state.fetch_offset)
        except DistributaryError as error:
            state.error = error
            return True
        records = fetched.records
        if records:
            state.chunks.append(records)
            self.counters.records_fetched += len(records)
            state.fetch_epoch = records[-1].batch.leader_epoch
        if fetched.bytes_consumed == 0 and fetched.partial_batch_bytes:
            # One batch bigger than the per-partition limit: ask for all of it next time.
            self._set_fetch_bytes_max(
                state,
                min(
                    BATCH_BYTES_LIMIT,
                    max(fetched.partial_batch_bytes * 2, GROWN_FETCH_BYTES_MIN),
                ),
            )
        elif state.fetch_bytes_max:
            self._set_fetch_bytes_max(state, 0)
        state.fetch_offset = fetched.next_offset
        return bool(fetched.records)

    def _set_fetch_bytes_max(self, state: PartitionFetchState, fetch_bytes_max: int) -> None:
        if state.fetch_bytes_max != fetch_bytes_max:
            state.fetch_bytes_max = fetch_bytes_max
            self.sizes_version += 1

    def position_out_of_range(
        self, tp: TopicPartition, state: PartitionFetchState, message: str
    ) -> None:
        """``tp``'s fetch position is not in the log (``message`` says why): reset
        it by ``auto_offset_reset`` (the owner resolves it), or with "none" keep an
        OffsetOutOfRangeError for the owner to raise."""
        offset = state.fetch_offset
        assert offset is not None
        if self.auto_offset_reset is OffsetReset.NONE:
            state.error = OffsetOutOfRangeError(
                f"{tp}: offset {offset} is out of range ({message}) and "
                "auto_offset_reset is 'none': seek to go on"
            )
            log.warning(
                "position out of range",
                topic=tp.topic,
                partition=tp.partition,
                position=offset,
                policy="none",
            )
            state.reset = None
        else:
            state.out_of_range_offset = offset
            state.reset = self.auto_offset_reset
        state.fetch_offset = None
        state.validating = False

    def _partition_error(
        self, tp: TopicPartition, state: PartitionFetchState, code: int, message: str
    ) -> bool:
        """Apply a partition's fetch error; True when metadata must be refreshed."""
        self.counters.count_error(error_code_name(code))
        if code == ErrorCode.OFFSET_OUT_OF_RANGE:
            self.position_out_of_range(tp, state, message)
            return False
        error = error_for_code(code, message)
        if isinstance(
            error,
            NotLeaderError
            | UnknownTopicOrPartitionError
            | FencedLeaderEpochError
            | UnknownLeaderEpochError,
        ):
            return True
        if not error.retriable:
            state.error = error
        return False

    def check_invariants(self) -> None:
        assert self.sizes_version >= 0
        for state in self.states.values():
            state.check_invariants()


def _no_leader_epoch(topic: str, partition: int) -> int | None:
    return None
