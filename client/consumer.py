"""The async consumer: assigned partitions or a consumer group, positions, prefetching.

Runs on trio or asyncio (anyio).  One fetcher task per leader broker keeps a
long-polling Fetch request in flight for every assigned partition whose buffer
has room; each response is cut per partition and decoded per batch in C
(client/records/decoder.py) into lists of records, which wait in a small
per-partition buffer.  :meth:`Consumer.getmany` and ``async for`` hand out
those lists, so the next fetch is already on the wire while the caller works on
the current one, and the per-record cost of iterating is one list index.

The response is handled in its callback, inside the connection's dispatch (no
task switch), which decodes it, sends the next fetch right there when that
needs no awaiting (asyncio: a write never waits; no offset to resolve, no
metadata to refresh), then wakes the reader: a waiting ``getmany`` returns on
the next turn of the event loop.  Anything else hands back to the fetcher task
(see ``_FetchChain``).

Positions: ``position(tp)`` is the offset of the next record the caller will get.
A position is set by ``seek`` or resolved from the broker (ListOffsets) by
``seek_to_beginning`` / ``seek_to_end`` / ``seek_to_timestamp`` or, when none was
chosen, by ``auto_offset_reset``.  OFFSET_OUT_OF_RANGE from a fetch re-resolves by
the same policy ("earliest", "latest"), or raises OffsetOutOfRangeError from
``getmany`` ("error") and stops that partition until the next seek.

Connection trouble is retried in the background with backoff; after a broker
stays unreachable ``getmany`` raises BrokerUnavailableError once (and keeps trying).

Groups: with ``group="name"`` the consumer ``subscribe``s instead of assigning;
the broker assigns partitions and client/group.py keeps the membership, commits
(auto-commit by default) and calls ``on_assign`` / ``on_revoke``.  A record
counts as processed once the application asks for more (the next ``getmany`` or
iteration step): auto-commit and revocation use the positions as of then, so a
rebalance without failures delivers each record once, and a crash re-delivers
what was not committed but never skips.  ``pause``/``resume`` stop and restart
handing out (and fetching) partitions without leaving the group.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Final, Literal

import anyio
import anyio.abc

from client._io.cluster import Cluster, ClusterClient, backoff_ms
from client._io.connection import BrokerConnection, EventLoopTools, LoopEvent, PendingResponse
from client._logging import get_logger
from client.errors import (
    ConnectionClosedError,
    DistributaryError,
    ErrorCode,
    NotLeaderError,
    OffsetOutOfRangeError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.group import (
    GroupMembership,
    GroupOptions,
    PartitionsCallback,
    fetch_committed,
)
from client.protocol.connection import IncomingResponse
from client.protocol.messages import (
    EARLIEST_TIMESTAMP,
    FETCH_OFFSET_CONTINUE,
    LATEST_TIMESTAMP,
    FetchPartition,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsetsTopic,
)
from client.records.decoder import Record, RecordDecoder, ValueFormat
from client.records.header import BATCH_BYTES_MAX_DEFAULT
from client.types import MiB, OffsetAndTimestamp, OffsetReset, PartitionLag, TopicPartition

log = get_logger("client.consumer")

ConsumerRecord = Record
# Fetched chunks (one decoded fetch response share) buffered per partition
# before the fetcher stops asking for more: one being handed out, one ready.
BUFFERED_CHUNKS_MAX: Final = 2
# Fetches one chain keeps on the wire (asyncio): the one being answered and a
# continuation waiting at the broker behind it.
FETCHES_PIPELINED: Final = 2
# Answers one continuation may bring (a fetch stream, docs/protocol.md): each
# is at most 16 KiB, so a stream the consumer stops using (a full buffer) costs
# at most 1 MiB of ignored answers.
FETCH_STREAM_RESPONSES: Final = 64
RETRY_BACKOFF_MS: Final = 100
RETRY_BACKOFF_MAX_MS: Final = 1_000


class _PartitionState:
    """Where one assigned partition stands.  ``fetch_offset`` None: unresolved."""

    __slots__ = (
        "chunks",
        "epoch",
        "error",
        "fetch_bytes_max",
        "fetch_offset",
        "head",
        "high_watermark",
        "paused",
        "processed",
        "reset",
    )

    def __init__(self, reset: OffsetReset | int | None) -> None:
        self.fetch_offset: int | None = None
        # How to resolve the offset: a policy, a timestamp (ms), or None (wait for seek).
        self.reset = reset
        self.chunks: deque[list[Record[Any]]] = deque()
        self.head = 0  # index of the next record in chunks[0]
        self.epoch = 0  # bumped by every seek: in-flight results for older epochs are dropped
        self.error: DistributaryError | None = None
        self.high_watermark = -1
        self.fetch_bytes_max = 0
        # Paused (by the application, or while being released): not fetched, not
        # handed out.
        self.paused = False
        # The position as of the application's last getmany / iteration step: every
        # record before it has been processed (what auto-commit commits).
        self.processed: int | None = None

    def clear(self) -> None:
        self.chunks.clear()
        self.head = 0
        self.epoch += 1
        self.error = None

    def position(self) -> int | None:
        if self.chunks:
            return int(self.chunks[0][self.head].offset)
        return self.fetch_offset


def _epochs_unchanged(
    states: dict[TopicPartition, _PartitionState], epochs: dict[TopicPartition, int]
) -> bool:
    """True when no partition of ``epochs`` was seeked (or reset) since they were
    taken.  A plain loop: per fetch response, it costs a generator less than ``all``."""
    for tp, epoch in epochs.items():  # noqa: SIM110 - all() would add a generator
        if states[tp].epoch != epoch:
            return False
    return True


class _FetchChain:
    """The fetches one fetcher task has on the wire, back to back.

    The task sends the first; each response is handled in its ``on_done``
    callback, inside the connection's dispatch, which sends the next fetch right
    there (no task switch) while the connection takes a write at once and the
    partitions need nothing awaited (no offset to resolve, no metadata to
    refresh).  Otherwise the chain finishes and the task takes over again.

    Where the connection takes writes at once (asyncio), the chain keeps a second
    fetch on the wire: a continuation (FETCH_OFFSET_CONTINUE) of the same
    partitions, which the broker resolves to where the fetch before it ended.  So
    while one response travels and is handled, the next long poll already waits
    at the broker, and a record appended meanwhile leaves at once.  Each
    continuation is a stream (``responses_max``, docs/protocol.md): while the
    partition is a live tail the broker answers it again after every append, so
    the consumer sends no request per answer (:meth:`Consumer._fetch_more`).
    Where continuations cannot be written from a callback (trio), the task's
    fetch is itself such a stream."""

    __slots__ = (
        "connection",
        "continuation",
        "continuation_sizes",
        "continuing",
        "done",
        "error",
        "finished",
        "node",
        "pending",
        "stale",
    )

    def __init__(self, node: int, connection: BrokerConnection, done: LoopEvent) -> None:
        self.node = node
        self.connection = connection
        self.done = done
        self.pending: set[PendingResponse] = set()  # the fetches in flight
        # The partitions (in request order) that continuations may fetch: those of
        # the chain's last fetch from offsets; None: send no continuation.
        self.continuing: list[TopicPartition] | None = None
        # The continuation request of ``continuing``, reused while the partitions'
        # fetch sizes stay as they were (``continuation_sizes``: the consumer's
        # ``_fetch_sizes_version`` when it was built).
        self.continuation: FetchRequest | None = None
        self.continuation_sizes = -1
        self.finished = False
        self.stale = False  # a partition moved: metadata must be refreshed
        self.error: DistributaryError | None = None

    def finish(self, error: DistributaryError | None = None) -> None:
        self.error = error
        self.finished = True
        self.done.set()


class Consumer(ClusterClient):
    """Reads assigned partitions.  Use as ``async with Consumer(...) as consumer:``.

    ``value_type``: decode every value into this msgspec-compatible type (with
    ``value_format`` "json" or "msgpack"); None keeps bytes.  ``fetch_*`` bound a
    fetch request: the broker waits up to ``fetch_max_wait_ms`` for
    ``fetch_min_bytes``, returns at most ``fetch_max_bytes`` in all and
    ``partition_fetch_bytes_max`` per partition.  ``auto_offset_reset`` picks the
    start when no position was chosen (in a group: when nothing is committed) and
    after OFFSET_OUT_OF_RANGE.

    Group options (docs/groups.md): ``group`` joins that consumer group on
    :meth:`subscribe`; ``session_timeout_ms`` / ``heartbeat_interval_ms`` (None:
    the broker's defaults, 10 s / 1 s; clamped into its bounds), ``assignor``
    ("range" or "sticky"), ``instance_id`` (static membership: a restart within
    the session timeout keeps the partitions), ``enable_auto_commit`` and
    ``auto_commit_interval_ms``, and ``on_assign`` / ``on_revoke`` / ``on_lost``
    callbacks (functions or coroutines taking a set of TopicPartition).
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str] = "127.0.0.1:9392",
        *,
        client_id: str = "",
        value_type: Any = None,
        value_format: ValueFormat = "json",
        fetch_max_wait_ms: int = 500,
        fetch_min_bytes: int = 1,
        fetch_max_bytes: int = 50 * MiB,
        partition_fetch_bytes_max: int = 1 * MiB,
        auto_offset_reset: Literal["earliest", "latest", "error"] = "latest",
        verify_crc: bool = True,
        request_timeout_ms: int = 30_000,
        connect_timeout_ms: int = 5_000,
        reconnect_attempts_max: int = 5,
        rng: random.Random | None = None,
        group: str | None = None,
        session_timeout_ms: int | None = None,
        heartbeat_interval_ms: int | None = None,
        rebalance_timeout_ms: int | None = None,
        assignor: Literal["range", "sticky"] | None = None,
        instance_id: str | None = None,
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5_000,
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
        on_lost: PartitionsCallback | None = None,
    ) -> None:
        assert fetch_max_wait_ms >= 0 and fetch_min_bytes >= 0
        assert auto_commit_interval_ms > 0, auto_commit_interval_ms
        assert assignor in (None, "range", "sticky"), assignor
        assert fetch_max_bytes > 0 and partition_fetch_bytes_max > 0
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_bytes = fetch_max_bytes
        self.partition_fetch_bytes_max = partition_fetch_bytes_max
        self.auto_offset_reset = OffsetReset(auto_offset_reset)
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.reconnect_attempts_max = reconnect_attempts_max
        self._random = rng if rng is not None else random.Random()
        self._decoder: RecordDecoder[Any] = RecordDecoder(
            value_type, value_format=value_format, verify_crc=verify_crc
        )
        self._states: dict[TopicPartition, _PartitionState] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._cluster: Cluster | None = None
        self._fetchers: set[int] = set()
        self._data_ready: LoopEvent | None = None
        self._room: LoopEvent | None = None
        self._tools: EventLoopTools | None = None
        self._data_timer: asyncio.TimerHandle | None = None  # see _wait_for_data
        self._data_timer_at = math.inf  # when _data_timer fires (loop clock)
        self._pending_errors: list[DistributaryError] = []
        # The chunk ``async for`` is walking: its partition, list and next index.
        self._iter_tp: TopicPartition | None = None
        self._iter_records: list[Record[Any]] = []
        self._iter_index = 0
        self._rotation = 0
        # Bumped whenever a partition's fetch_bytes_max changes (continuations
        # built before then are rebuilt).
        self._fetch_sizes_version = 0
        self._closed = False
        self._group_options = (
            None
            if group is None
            else GroupOptions(
                group_id=group,
                instance_id=instance_id,
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                rebalance_timeout_ms=rebalance_timeout_ms,
                assignor=assignor,
                enable_auto_commit=enable_auto_commit,
                auto_commit_interval_ms=auto_commit_interval_ms,
                on_assign=on_assign,
                on_revoke=on_revoke,
                on_lost=on_lost,
            )
        )
        self._group: GroupMembership | None = None
        # True from handing records out until the application asks for more: it
        # may be processing them, so revocation waits (see client/group.py).
        self._busy = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the consumer; ``close()`` must be called from the same task."""
        cluster = await self._open_cluster()
        self._tools = EventLoopTools()
        if self._group_options is not None:
            self._group = GroupMembership(self, cluster, self._group_options, self._random)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Stop fetching and close connections.  Buffered records are dropped.  In a
        group: commit (with auto-commit), ``on_revoke``, and leave the group so its
        partitions move at once."""
        if self._closed:
            return
        if self._group is not None and self._task_group is not None:
            # Shielded (and bounded inside): closing on Ctrl-C must still leave the group.
            with anyio.CancelScope(shield=True):
                await self._group.leave()
        self._closed = True
        assert self._cluster is not None, "the consumer was never started"
        if self._data_timer is not None:
            self._data_timer.cancel()
            self._data_timer = None
        self._signal(data=True, room=True)
        await self._cluster.shutdown()

    # -- assignment and positions ---------------------------------------------------------

    async def assign(self, partitions: Iterable[TopicPartition | str]) -> None:
        """Read exactly these partitions (a topic name means all its partitions),
        replacing any previous assignment.  Positions of partitions kept are kept.
        Raises UnknownTopicOrPartitionError for a topic or partition that does not exist."""
        assert self._group is None, "a group consumer gets its partitions from subscribe()"
        cluster = self._require_cluster()
        wanted: list[TopicPartition] = []
        for item in partitions:
            if isinstance(item, str):
                metadata = await cluster.topic_metadata(item)
                wanted.extend(TopicPartition(item, p.partition) for p in metadata.partitions)
            else:
                metadata = await cluster.topic_metadata(item.topic)
                if not 0 <= item.partition < len(metadata.partitions):
                    raise UnknownTopicOrPartitionError(f"no partition {item}")
                wanted.append(TopicPartition(item.topic, item.partition))
        states = {
            tp: self._states.get(tp) or _PartitionState(self.auto_offset_reset) for tp in wanted
        }
        for tp in set(self._states) - set(states):
            self._states[tp].clear()
        self._states = states
        self._fetch_sizes_version += 1  # new partition states: rebuild continuations
        if self._iter_tp is not None and self._iter_tp not in states:
            self._drop_iterator_chunk()
        self._start_fetchers()
        self._signal(room=True)

    def assignment(self) -> set[TopicPartition]:
        return set(self._states)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Continue ``tp`` from ``offset`` (the next fetch starts there)."""
        assert offset >= 0, offset
        state = self._state(tp)
        self._reset_state(tp, state)
        state.fetch_offset = offset
        state.reset = None
        self._signal(room=True)

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        """Move to the log start of each partition (default: all assigned)."""
        await self._seek_to(partitions, OffsetReset.EARLIEST)

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Move to the log end: only records produced from now on are read."""
        await self._seek_to(partitions, OffsetReset.LATEST)

    async def seek_to_timestamp(self, timestamp_ms: int, *partitions: TopicPartition) -> None:
        """Move to the first record with a timestamp >= ``timestamp_ms`` (the log end
        if there is none)."""
        assert timestamp_ms >= 0, timestamp_ms
        await self._seek_to(partitions, timestamp_ms)

    async def _seek_to(
        self, partitions: Sequence[TopicPartition], target: OffsetReset | int
    ) -> None:
        tps = list(partitions) or list(self._states)
        for tp in tps:
            state = self._state(tp)
            self._reset_state(tp, state)
            state.fetch_offset = None
            state.reset = target
        await self._resolve_offsets(tps)
        self._signal(room=True)

    async def position(self, tp: TopicPartition) -> int:
        """The offset of the next record this consumer returns for ``tp``
        (resolving it from the broker if no position is set yet)."""
        state = self._state(tp)
        if self._iter_tp == tp and self._iter_index < len(self._iter_records):
            return int(self._iter_records[self._iter_index].offset)
        position = state.position()
        if position is None:
            await self._resolve_offsets([tp])
            position = state.position()
            if position is None:
                raise OffsetOutOfRangeError(f"{tp} has no position: seek first")
        return position

    def high_watermark(self, tp: TopicPartition) -> int:
        """The partition's high watermark as of the last fetch (-1 before one)."""
        return self._state(tp).high_watermark

    def _state(self, tp: TopicPartition) -> _PartitionState:
        state = self._states.get(tp)
        assert state is not None, f"{tp} is not assigned to this consumer"
        return state

    def _reset_state(self, tp: TopicPartition, state: _PartitionState) -> None:
        state.clear()
        state.processed = None  # known again at the next getmany / iteration step
        if self._iter_tp == tp:
            self._drop_iterator_chunk()

    def _drop_iterator_chunk(self) -> None:
        self._iter_tp = None
        self._iter_records = []
        self._iter_index = 0

    def _require_cluster(self) -> Cluster:
        if self._closed:
            raise ConnectionClosedError("the consumer is closed")
        assert self._cluster is not None, "the consumer is not started (use `async with`)"
        return self._cluster

    # -- groups -------------------------------------------------------------------------

    @property
    def group(self) -> str | None:
        return None if self._group_options is None else self._group_options.group_id

    @property
    def member_id(self) -> str:
        """This member's id in its group ("" before the first join)."""
        return "" if self._group is None else self._group.member_id

    @property
    def member_epoch(self) -> int:
        return 0 if self._group is None else self._group.member_epoch

    def _require_group(self) -> GroupMembership:
        self._require_cluster()
        assert self._group is not None, "this needs a consumer created with group=..."
        return self._group

    async def subscribe(self, topics: Iterable[str] = (), *, pattern: str | None = None) -> None:
        """Join the group for these topics (and/or every topic whose whole name
        matches the regex ``pattern``; internal ``__`` topics never match).  The
        broker assigns partitions; they start at the group's committed offsets (or
        by ``auto_offset_reset``).  Calling it again changes the subscription."""
        membership = self._require_group()
        topics = [topics] if isinstance(topics, str) else list(topics)
        assert topics or pattern, "subscribe to topic names or a pattern"
        membership.subscribe(topics, pattern)
        assert self._task_group is not None
        if not membership._running:
            self._task_group.start_soon(membership.run)
            if membership.options.enable_auto_commit:
                self._task_group.start_soon(membership.auto_commit_loop)

    async def wait_for_assignment(self, timeout_ms: int = 30_000) -> set[TopicPartition]:
        """Wait until the group has given this member at least one partition (or the
        timeout passes); returns the assignment."""
        membership = self._require_group()
        with anyio.move_on_after(timeout_ms / 1000):
            while not self._states:
                await membership.assignment_changed.wait()
        return self.assignment()

    async def commit(
        self, offsets: Mapping[TopicPartition, int] | None = None, *, metadata: str = ""
    ) -> None:
        """Commit offsets for the group: the given ones (each the *next* offset to
        consume), or the position of every owned partition (everything handed out so
        far counts as processed).  Raises UnknownMemberError / FencedMemberEpochError
        (this member was expelled: its partitions moved), or a partition's typed
        error (e.g. FencedMemberEpochError for one it no longer owns)."""
        membership = self._require_group()
        if offsets is None:
            offsets = self._current_positions(membership.owned)
        await membership.commit(dict(offsets), metadata)

    async def committed(
        self, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, int]:
        """The group's committed offsets of ``partitions`` (default: the owned ones);
        partitions without a commit are left out."""
        membership = self._require_group()
        wanted = set(membership.owned) if partitions is None else set(partitions)
        return await fetch_committed(
            membership.cluster,
            membership.group_id,
            wanted,
            attempts_max=self.reconnect_attempts_max,
        )

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching and handing out these partitions (positions are kept;
        records buffered for them are dropped and fetched again on resume)."""
        for tp in partitions:
            state = self._state(tp)
            if not state.paused:
                self._freeze(tp, state)

    def resume(self, *partitions: TopicPartition) -> None:
        """Undo :meth:`pause`."""
        for tp in partitions:
            self._state(tp).paused = False
        self._signal(room=True)

    def paused(self) -> set[TopicPartition]:
        return {tp for tp, state in self._states.items() if state.paused}

    async def lag(self) -> dict[TopicPartition, PartitionLag]:
        """Per assigned partition: position, committed offset (groups only; None if
        nothing is committed), log end offset and lag (log end - position)."""
        tps = sorted(self._states)
        if not tps:
            return {}
        ends = await self.list_offsets({tp: LATEST_TIMESTAMP for tp in tps})
        committed: dict[TopicPartition, int] = {}
        if self._group is not None:
            committed = await self.committed(tps)
        result: dict[TopicPartition, PartitionLag] = {}
        for tp in tps:
            if tp not in self._states:
                continue
            position = await self.position(tp)
            result[tp] = PartitionLag(
                tp.topic,
                tp.partition,
                position,
                committed.get(tp),
                ends[tp],
                max(0, ends[tp] - position),
            )
        return result

    async def _before_poll(self) -> None:
        """The application asks for more: what it had is processed.  Note the
        positions, and finish a revocation that waited for this moment."""
        self._busy = False
        if self._group is None:
            return
        for state in self._states.values():
            state.processed = state.position()
        if self._group.revoking:
            await self._group.complete_revocation()

    def _freeze(self, tp: TopicPartition, state: _PartitionState) -> int | None:
        """Pause ``tp`` at the first record not handed out; returns that position."""
        position = state.position()
        if self._iter_tp == tp:
            if self._iter_index < len(self._iter_records):
                position = int(self._iter_records[self._iter_index].offset)
            self._drop_iterator_chunk()
        self._reset_state(tp, state)
        state.paused = True
        if position is not None:
            state.fetch_offset = position
            state.reset = None
        return position

    def _group_freeze(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Stop handing out partitions being released; returns the processed positions
        to commit (see client/group.py for why they are processed)."""
        positions: dict[TopicPartition, int] = {}
        for tp in partitions:
            state = self._states.get(tp)
            if state is None:
                continue
            processed = state.processed
            current = self._freeze(tp, state)
            position = processed if processed is not None else current
            if position is not None:
                positions[tp] = position
        return positions

    def _group_remove(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            state = self._states.pop(tp, None)
            if state is not None:
                state.clear()
        self._signal(room=True)

    async def _group_add(self, partitions: Mapping[TopicPartition, int | None]) -> None:
        """Start fetching newly assigned partitions from their committed offsets (or
        by auto_offset_reset)."""
        cluster = self._require_cluster()
        for topic in sorted({tp.topic for tp in partitions}):
            try:
                await cluster.topic_metadata(topic)
            except DistributaryError as error:  # fetchers retry; leaders resolve later
                log.info("no metadata for an assigned topic", topic=topic, error=str(error))
        for tp, committed in partitions.items():
            state = _PartitionState(self.auto_offset_reset if committed is None else None)
            state.fetch_offset = committed
            state.processed = committed
            self._states[tp] = state
        self._fetch_sizes_version += 1  # new partition states: rebuild continuations
        self._start_fetchers()
        self._signal(room=True)

    def _processed_positions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        positions: dict[TopicPartition, int] = {}
        for tp in partitions:
            state = self._states.get(tp)
            if state is not None and state.processed is not None:
                positions[tp] = state.processed
        return positions

    def _current_positions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        positions: dict[TopicPartition, int] = {}
        for tp in partitions:
            state = self._states.get(tp)
            if state is None:
                continue
            position = state.position()
            if self._iter_tp == tp and self._iter_index < len(self._iter_records):
                position = int(self._iter_records[self._iter_index].offset)
            if position is not None:
                positions[tp] = position
        return positions

    def _report_error(self, error: BaseException) -> None:
        """Hand an error from a background task to the next getmany / iteration."""
        if isinstance(error, DistributaryError):
            self._pending_errors.append(error)
        else:
            self._pending_errors.append(DistributaryError(f"callback failed: {error!r}"))
        self._signal(data=True)

    # -- handing records out --------------------------------------------------------------

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record[Any]]]:
        """Records fetched so far, per partition, in offset order; waits up to
        ``timeout_ms`` for the first to arrive (an empty dict after that).

        Raises OffsetOutOfRangeError (``auto_offset_reset="error"``), the typed
        error of a partition that failed for good, or BrokerUnavailableError when
        the broker could not be reached for a while (fetching goes on).
        """
        assert max_records is None or max_records > 0
        self._require_cluster()
        if self._iter_tp is not None:
            # Hand back what ``async for`` had not reached yet, in order.
            self._return_iterator_chunk()
        if self._group is None:
            self._busy = False  # all _before_poll does without a group
        else:
            await self._before_poll()
        limit = max_records if max_records is not None else math.inf
        tools = self._tools
        assert tools is not None
        deadline = tools.clock() + timeout_ms / 1000
        while True:
            self._raise_pending()
            result = self._take(limit)
            if result:
                return result
            if self._closed:
                raise ConnectionClosedError("the consumer is closed")
            if tools.clock() >= deadline:
                return {}
            await self._wait_for_data(tools, deadline)

    async def _wait_for_data(self, tools: EventLoopTools, deadline: float) -> None:
        """Park until data (or an error) may be there, or ``deadline`` (on the
        ``tools.clock`` scale) passed; waking early is allowed."""
        event = self._data_ready
        if event is None:
            event = self._data_ready = tools.event()
        call_at = tools.call_at
        if call_at is None:  # trio: its cancel scopes are cheap
            await tools.wait_or_timeout(event, deadline - tools.clock())
            if self._data_ready is event:  # set by the timeout, not by _signal
                self._data_ready = None
            return
        # asyncio: one timer serves the waits of successive getmany calls (a poll
        # loop), as long as it fires no later than their deadlines; it may fire
        # early, and the caller then waits again.
        timer = self._data_timer
        if timer is None or self._data_timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self._data_timer = call_at(deadline, self._data_timer_fired)
            self._data_timer_at = deadline
        await event.wait()

    def _data_timer_fired(self) -> None:
        self._data_timer = None
        self._signal(data=True)

    def _return_iterator_chunk(self) -> None:
        tp = self._iter_tp
        assert tp is not None
        state = self._states.get(tp)
        rest = self._iter_records[self._iter_index :]
        if state is not None and rest:
            if state.chunks:
                rest.extend(state.chunks[0][state.head :])
                state.chunks[0] = rest
            else:
                state.chunks.append(rest)
            state.head = 0
        self._drop_iterator_chunk()

    def _take(self, max_records: float) -> dict[TopicPartition, list[Record[Any]]]:
        result: dict[TopicPartition, list[Record[Any]]] = {}
        taken = 0
        states = self._states
        items: Iterable[tuple[TopicPartition, _PartitionState]]
        if len(states) <= 1:
            items = states.items()
        else:
            # Start from a rotating partition so none starves under max_records.
            rotated = list(states.items())
            self._rotation = (self._rotation + 1) % len(rotated)
            items = rotated[self._rotation :] + rotated[: self._rotation]
        for tp, state in items:
            if state.paused:
                continue
            chunks = state.chunks
            head = state.head
            while chunks and taken < max_records:
                chunk = chunks[0]
                available = len(chunk) - head
                if available <= max_records - taken:  # the rest of the chunk
                    part = chunk[head:] if head else chunk
                    chunks.popleft()
                    head = 0
                    count = available
                else:
                    count = int(max_records - taken)
                    part = chunk[head : head + count]
                    head += count
                existing = result.get(tp)
                if existing is None:
                    result[tp] = part
                else:
                    existing.extend(part)
                taken += count
            state.head = head
            if taken >= max_records:
                break
        if taken:
            self._busy = True
            if self._room is not None:
                self._signal(room=True)
        return result

    def _raise_pending(self) -> None:
        if self._pending_errors:
            raise self._pending_errors.pop(0)
        for tp, state in self._states.items():
            if state.error is not None and not state.chunks:
                error, state.error = state.error, None
                log.info("partition error", partition=str(tp), error=str(error))
                raise error

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Record[Any]:
        """The next record of any assigned partition (waits as long as needed)."""
        index = self._iter_index
        records = self._iter_records
        if index < len(records):
            self._iter_index = index + 1
            return records[index]
        self._drop_iterator_chunk()
        self._require_cluster()
        await self._before_poll()
        while True:
            self._raise_pending()
            taken = self._take_chunk()
            if taken is not None:
                self._iter_tp, self._iter_records = taken
                self._iter_index = 1
                return self._iter_records[0]
            if self._closed:
                raise StopAsyncIteration
            if self._data_ready is None:
                assert self._tools is not None
                self._data_ready = self._tools.event()
            await self._data_ready.wait()

    def _take_chunk(self) -> tuple[TopicPartition, list[Record[Any]]] | None:
        """The rest of the first buffered chunk of the next partition that has one."""
        items = list(self._states.items())
        count = len(items)
        for step in range(count):
            tp, state = items[(self._rotation + step) % count]
            if state.chunks and not state.paused:
                self._busy = True
                self._rotation = (self._rotation + step + 1) % count
                chunk = state.chunks.popleft()
                if state.head:
                    chunk = chunk[state.head :]
                    state.head = 0
                self._signal(room=True)
                return tp, chunk
        return None

    # -- fetching (background) ----------------------------------------------------------------

    def _signal(self, *, data: bool = False, room: bool = False) -> None:
        if data and self._data_ready is not None:
            self._data_ready.set()
            self._data_ready = None
        if room and self._room is not None:
            self._room.set()
            self._room = None

    def _start_fetchers(self) -> None:
        cluster = self._cluster
        assert cluster is not None and self._task_group is not None
        for tp in self._states:
            leader = cluster.leader_for(tp.topic, tp.partition)
            node = leader if leader is not None else -1
            if node not in self._fetchers:
                self._fetchers.add(node)
                self._task_group.start_soon(self._fetch_loop, node)

    def _fetchable(self, node: int, *, unresolved_stops: bool = False) -> list[TopicPartition]:
        """The partitions to fetch from ``node`` now.  ``unresolved_stops``: none
        (an empty list) when some partition waits for its offset to be resolved,
        which only the fetcher task can do."""
        cluster = self._cluster
        assert cluster is not None
        ready: list[TopicPartition] = []
        for tp, state in self._states.items():
            if state.fetch_offset is None:
                if unresolved_stops and state.reset is not None:
                    return []
                continue
            if state.error is not None or state.paused:
                continue
            if len(state.chunks) >= BUFFERED_CHUNKS_MAX:
                continue
            leader = cluster.leader_for(tp.topic, tp.partition)
            if (leader if leader is not None else -1) == node:
                ready.append(tp)
        return ready

    async def _fetch_loop(self, node: int) -> None:
        failures = 0
        while not self._closed:
            unresolved = [
                tp
                for tp, state in self._states.items()
                if state.fetch_offset is None and state.reset is not None
            ]
            try:
                if unresolved:
                    await self._resolve_offsets(unresolved)
                partitions = self._fetchable(node)
                if not partitions:
                    assert self._tools is not None
                    self._room = room = self._tools.event()
                    # Re-check leaders now and then.
                    await self._tools.wait_or_timeout(room, 1.0)
                    if self._room is room:
                        self._room = None
                    continue
                await self._fetch_once(node, partitions)
                failures = 0
            except DistributaryError as error:
                if self.closed:  # the error is our own close() under the fetch
                    return
                failures += 1
                if not error.retriable or failures >= self.reconnect_attempts_max:
                    self._pending_errors.append(error)
                    self._signal(data=True)
                    failures = 0
                log.info("fetch failed", node=node, error=str(error), failures=failures)
                await self._refresh_assigned_metadata()
                delay = backoff_ms(failures, RETRY_BACKOFF_MS, RETRY_BACKOFF_MAX_MS, self._random)
                await anyio.sleep(delay / 1000)

    async def _refresh_assigned_metadata(self) -> None:
        cluster = self._cluster
        assert cluster is not None
        try:
            await cluster.refresh_metadata(sorted({tp.topic for tp in self._states}))
        except DistributaryError as error:
            log.debug("metadata refresh failed", error=str(error))

    async def _fetch_once(self, node: int, partitions: list[TopicPartition]) -> None:
        """Fetch ``partitions`` from ``node``, then keep fetching from the response
        callbacks (see :class:`_FetchChain`) until that needs the task again.
        Raises the typed error that ended the chain."""
        cluster = self._cluster
        assert cluster is not None and self._tools is not None
        connection = await cluster.connection_for_node(node)
        chain = _FetchChain(node, connection, self._tools.event())
        # Where no continuation can be written from a callback (trio: a write may
        # have to wait half-way), the fetch itself is a stream: the broker keeps
        # answering it while the partitions are a live tail.
        stream = not connection.writable_now
        request, epochs = self._fetch_request(partitions, FETCH_STREAM_RESPONSES if stream else 1)
        if stream:
            chain.continuing = partitions  # what its answers flagged MORE may feed
        pending = await connection.send(
            request,
            timeout_ms=self.request_timeout_ms + self.fetch_max_wait_ms,
            on_done=partial(self._fetch_done, chain, epochs),
            on_more=partial(self._fetch_more, chain, epochs) if stream else None,
            checked=False,  # valid by construction (see _fetch_request)
        )
        assert pending is not None
        if not pending.done:  # else its callback ran already and moved the chain on
            chain.pending.add(pending)
            chain.continuing = partitions
            self._send_continuation(chain, epochs)
        try:
            await chain.done.wait()
        finally:
            # Finished (or cancelled): a fetch still on the wire is nobody's any
            # more; its late response is ignored (its records are fetched again).
            chain.finished = True
            for left in chain.pending:
                connection.abandon(left)
            chain.pending.clear()
        if chain.stale:
            await self._refresh_assigned_metadata()
            self._start_fetchers()
        if chain.error is not None:
            raise chain.error

    def _fetch_request(
        self, partitions: list[TopicPartition], responses_max: int = 1
    ) -> tuple[FetchRequest, dict[TopicPartition, int]]:
        """The fetch of ``partitions`` (each resolved and listed once), and their
        epochs now.  ``responses_max`` > 1: a stream (see :meth:`_fetch_more`)."""
        by_topic: dict[str, list[FetchPartition]] = {}
        epochs: dict[TopicPartition, int] = {}
        states = self._states
        for tp in partitions:
            state = states[tp]
            assert state.fetch_offset is not None
            epochs[tp] = state.epoch
            fetch_partition = FetchPartition(
                tp.partition,
                state.fetch_offset,
                state.fetch_bytes_max or self.partition_fetch_bytes_max,
            )
            group = by_topic.get(tp.topic)
            if group is None:
                by_topic[tp.topic] = [fetch_partition]
            else:
                group.append(fetch_partition)
        request = FetchRequest(
            max_wait_ms=self.fetch_max_wait_ms,
            min_bytes=self.fetch_min_bytes,
            max_bytes=self.fetch_max_bytes,
            topics=[FetchTopic(name, parts) for name, parts in by_topic.items()],
            responses_max=responses_max,
        )
        return request, epochs

    def _fetch_done(
        self, chain: _FetchChain, epochs: dict[TopicPartition, int], pending: PendingResponse
    ) -> None:
        """A fetch response (or its error), inside the connection's dispatch: hand
        the records over, then send the next fetch at once if nothing needs the
        task.  ``epochs``: the partitions' epochs when the fetch was built.  Must
        not raise."""
        chain.pending.discard(pending)
        if not self._apply_in_chain(chain, epochs, pending):
            return
        connection = chain.connection
        partitions = self._fetchable(chain.node, unresolved_stops=True)
        if not partitions or not connection.writable_now:
            chain.finish()
            return
        states = self._states
        if partitions == chain.continuing and _epochs_unchanged(states, epochs):
            # Nothing moved since the chain's fetch from offsets: keep one
            # continuation on the wire behind the one still there.  While that one
            # waits at the broker, the next can wait until the application has
            # taken these records (call_soon runs after the woken getmany).
            tools = self._tools
            if chain.pending and tools is not None and tools.call_soon is not None:
                tools.call_soon(partial(self._send_continuation, chain, epochs))
            else:
                self._send_continuation(chain, epochs)
            return
        if chain.pending:
            # Something moved (a seek, a pause, a full buffer): a fetch from
            # offsets now could overlap the one still in flight; let the task
            # start afresh (the broker ends that long poll when the next request
            # arrives behind it).
            chain.finish()
            return
        request, epochs = self._fetch_request(partitions)
        if self._send_in_chain(chain, request, epochs):
            chain.continuing = partitions
            chain.continuation = None
            self._send_continuation(chain, epochs)

    def _fetch_more(
        self, chain: _FetchChain, epochs: dict[TopicPartition, int], response: IncomingResponse
    ) -> None:
        """An answer flagged MORE of a continuation stream: its records, as in
        :meth:`_fetch_done`, while the stream goes on.  When something moved (a
        seek, a pause, a full buffer, a leader change) the chain finishes: the
        rest of the stream is ignored and the task starts afresh.  Must not
        raise."""
        if not self._apply_in_chain(chain, epochs, response):
            return
        partitions = self._fetchable(chain.node, unresolved_stops=True)
        if partitions != chain.continuing or not _epochs_unchanged(self._states, epochs):
            chain.finish()

    def _apply_in_chain(
        self,
        chain: _FetchChain,
        epochs: dict[TopicPartition, int],
        answer: PendingResponse | IncomingResponse,
    ) -> bool:
        """Hand a chain's fetch answer (a completed slot, or a stream's answer
        flagged MORE) over to the partitions; False when the chain is finished:
        abandoned before, or now by an error, a moved leader or closing."""
        if chain.finished:  # abandoned
            return False
        try:
            response = answer.result() if isinstance(answer, PendingResponse) else answer
            stale = self._apply_fetch(response, epochs)
        except DistributaryError as error:
            chain.finish(error)
            return False
        if stale or self._closed:
            chain.stale = stale
            chain.finish()
            return False
        return True

    def _send_continuation(self, chain: _FetchChain, epochs: dict[TopicPartition, int]) -> None:
        """Put a continuation of ``chain.continuing`` on the wire if the chain has
        room for it and the connection takes it at once (asyncio); else nothing."""
        partitions = chain.continuing
        connection = chain.connection
        if (
            partitions is None
            or chain.finished
            or len(chain.pending) >= FETCHES_PIPELINED
            or not connection.writable_now
        ):
            return
        request = chain.continuation
        if request is None or chain.continuation_sizes != self._fetch_sizes_version:
            request = chain.continuation = self._continuation_request(partitions)
            chain.continuation_sizes = self._fetch_sizes_version
        self._send_in_chain(chain, request, epochs, stream=True)

    def _send_in_chain(
        self,
        chain: _FetchChain,
        request: FetchRequest,
        epochs: dict[TopicPartition, int],
        *,
        stream: bool = False,
    ) -> bool:
        """Write ``request`` now (the connection takes it whole); its response goes
        to :meth:`_fetch_done` (a stream's answers flagged MORE to
        :meth:`_fetch_more`).  False when that failed (the chain is finished)."""
        try:
            sent = chain.connection.send_nowait(
                request,
                timeout_ms=self.request_timeout_ms + self.fetch_max_wait_ms,
                on_done=partial(self._fetch_done, chain, epochs),
                on_more=partial(self._fetch_more, chain, epochs) if stream else None,
                checked=False,  # valid by construction (see _fetch_request)
            )
        except DistributaryError as error:
            chain.finish(error)
            return False
        assert sent is not None  # a fetch always wants its response
        chain.pending.add(sent)
        return True

    def _continuation_request(self, partitions: list[TopicPartition]) -> FetchRequest:
        """A fetch of ``partitions`` from where the connection's previous fetch of
        each ended (the broker resolves FETCH_OFFSET_CONTINUE in request order)."""
        by_topic: dict[str, list[FetchPartition]] = {}
        states = self._states
        for tp in partitions:
            fetch_partition = FetchPartition(
                tp.partition,
                FETCH_OFFSET_CONTINUE,
                states[tp].fetch_bytes_max or self.partition_fetch_bytes_max,
            )
            group = by_topic.get(tp.topic)
            if group is None:
                by_topic[tp.topic] = [fetch_partition]
            else:
                group.append(fetch_partition)
        return FetchRequest(
            max_wait_ms=self.fetch_max_wait_ms,
            min_bytes=self.fetch_min_bytes,
            max_bytes=self.fetch_max_bytes,
            topics=[FetchTopic(name, parts) for name, parts in by_topic.items()],
            responses_max=FETCH_STREAM_RESPONSES,
        )

    def _apply_fetch(self, response: IncomingResponse, epochs: dict[TopicPartition, int]) -> bool:
        """Decode a fetch response into the partitions' buffers and wake readers.
        True when a partition's leader moved (metadata must be refreshed)."""
        body = response.body
        assert isinstance(body, FetchResponse)
        # The connection checked the payload rule: records_bytes add up, no
        # partition twice, none negative.  Cut it per partition without copying.
        payload = response.payload
        position = 0
        got_data = False
        stale = False
        states = self._states
        for topic in body.topics:
            name = topic.name
            for result in topic.partitions:
                size = result.records_bytes
                start = position
                position += size
                # A plain tuple hashes and compares as the TopicPartition it equals,
                # without the NamedTuple's Python-level constructor (per partition).
                key: TopicPartition = (name, result.partition)  # type: ignore[assignment]
                state = states.get(key)
                if state is None or epochs.get(key) != state.epoch or state.fetch_offset is None:
                    continue  # unassigned or seeked while the fetch was in flight
                if result.error_code:
                    stale |= self._partition_error(
                        TopicPartition(name, result.partition),
                        state,
                        result.error_code,
                        result.error_message,
                    )
                    got_data |= state.error is not None
                    continue
                state.high_watermark = result.high_watermark
                if size:
                    got_data |= self._decode_into(state, payload[start:position])
                elif state.fetch_bytes_max:
                    self._set_fetch_bytes_max(state, 0)  # what decoding nothing would leave
        assert position == len(payload), (position, len(payload))
        if got_data:
            self._signal(data=True)
        return stale

    def _decode_into(self, state: _PartitionState, view: memoryview) -> bool:
        assert state.fetch_offset is not None
        try:
            fetched = self._decoder.decode_fetch(view, state.fetch_offset)
        except DistributaryError as error:
            state.error = error
            return True
        if fetched.records:
            state.chunks.append(fetched.records)
        if fetched.bytes_consumed == 0 and fetched.partial_batch_bytes:
            # One batch bigger than the per-partition limit: ask for all of it next time.
            self._set_fetch_bytes_max(
                state,
                min(BATCH_BYTES_MAX_DEFAULT, max(fetched.partial_batch_bytes * 2, 1 << 16)),
            )
        elif state.fetch_bytes_max:
            self._set_fetch_bytes_max(state, 0)
        state.fetch_offset = fetched.next_offset
        return bool(fetched.records)

    def _set_fetch_bytes_max(self, state: _PartitionState, fetch_bytes_max: int) -> None:
        if state.fetch_bytes_max != fetch_bytes_max:
            state.fetch_bytes_max = fetch_bytes_max
            self._fetch_sizes_version += 1

    def _partition_error(
        self, tp: TopicPartition, state: _PartitionState, code: int, message: str
    ) -> bool:
        """Apply a partition's fetch error; True when metadata must be refreshed."""
        if code == ErrorCode.OFFSET_OUT_OF_RANGE:
            if self.auto_offset_reset is OffsetReset.ERROR:
                state.error = OffsetOutOfRangeError(
                    f"{tp}: offset {state.fetch_offset} is out of range ({message})"
                )
                state.fetch_offset = None
                state.reset = None
            else:
                log.info(
                    "offset out of range, resetting", partition=str(tp), offset=state.fetch_offset
                )
                state.fetch_offset = None
                state.reset = self.auto_offset_reset
            return False
        error = error_for_code(code, message)
        if isinstance(error, NotLeaderError | UnknownTopicOrPartitionError):
            return True
        if not error.retriable:
            state.error = error
        return False

    async def _resolve_offsets(self, partitions: list[TopicPartition]) -> None:
        """Turn each partition's ``reset`` (policy or timestamp) into a fetch offset."""
        targets: dict[TopicPartition, int] = {}
        epochs: dict[TopicPartition, int] = {}
        for tp in partitions:
            state = self._states.get(tp)
            if state is None or state.fetch_offset is not None or state.reset is None:
                continue
            epochs[tp] = state.epoch
            reset = state.reset
            if reset is OffsetReset.ERROR:
                state.error = OffsetOutOfRangeError(
                    f"{tp} has no position and auto_offset_reset is 'error'"
                )
                state.reset = None
                continue
            if reset is OffsetReset.EARLIEST:
                targets[tp] = EARLIEST_TIMESTAMP
            elif reset is OffsetReset.LATEST:
                targets[tp] = LATEST_TIMESTAMP
            else:
                assert isinstance(reset, int)
                targets[tp] = reset
        if not targets:
            return
        offsets = await self.list_offsets(targets)
        for tp, offset in offsets.items():
            state = self._states.get(tp)
            if state is None or state.fetch_offset is not None or state.epoch != epochs.get(tp):
                continue  # resolved meanwhile, or seeked elsewhere while we asked
            if offset < 0:  # no record at or after the timestamp: the log end
                offset = (await self.list_offsets({tp: LATEST_TIMESTAMP}))[tp]
                if state.fetch_offset is not None or state.epoch != epochs.get(tp):
                    continue
            state.fetch_offset = offset
            state.reset = None

    async def list_offsets(self, targets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """ListOffsets: for each partition, the offset for a timestamp (or
        ``EARLIEST_TIMESTAMP`` -2 / ``LATEST_TIMESTAMP`` -1).  -1 means no record
        at or after the timestamp.  Raises the partition's typed error."""
        found = await self._list_offsets(targets)
        return {tp: offset for tp, (offset, _timestamp_ms) in found.items()}

    async def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """For each partition, where ``timestamps[tp]`` (ms since the epoch) falls:
        the offset to seek to and the timestamp of the record there, or None when
        every record is older (aiokafka's ``offsets_for_times``).  Batch
        granularity: the offset starts the first batch holding a record at or after
        the time, so that record may be a little older.  Raises the partition's
        typed error."""
        assert all(timestamp >= 0 for timestamp in timestamps.values()), timestamps
        found = await self._list_offsets(dict(timestamps))
        return {
            tp: None if offset < 0 else OffsetAndTimestamp(offset, timestamp_ms)
            for tp, (offset, timestamp_ms) in found.items()
        }

    async def _list_offsets(
        self, targets: dict[TopicPartition, int]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """``(offset, timestamp_ms)`` per partition (see :meth:`list_offsets`)."""
        cluster = self._require_cluster()

        async def attempt() -> dict[TopicPartition, tuple[int, int]]:
            by_leader: dict[int, dict[str, list[ListOffsetsPartition]]] = {}
            for tp, timestamp in targets.items():
                if cluster.leader_for(tp.topic, tp.partition) is None:
                    await cluster.topic_metadata(tp.topic)
                leader = cluster.leader_for(tp.topic, tp.partition)
                topics = by_leader.setdefault(leader if leader is not None else -1, {})
                topics.setdefault(tp.topic, []).append(
                    ListOffsetsPartition(tp.partition, timestamp)
                )
            offsets: dict[TopicPartition, tuple[int, int]] = {}
            for leader, topics in by_leader.items():
                connection = await cluster.connection_for_node(leader)
                response = await connection.request(
                    ListOffsetsRequest(
                        [ListOffsetsTopic(name, parts) for name, parts in topics.items()]
                    )
                )
                body = response.body
                assert isinstance(body, ListOffsetsResponse)
                for topic in body.topics:
                    for part in topic.partitions:
                        if part.error_code:
                            error = error_for_code(part.error_code, part.error_message)
                            if isinstance(error, NotLeaderError | UnknownTopicOrPartitionError):
                                cluster.invalidate(topic.name)
                            raise error
                        offsets[TopicPartition(topic.name, part.partition)] = (
                            part.offset,
                            part.timestamp_ms,
                        )
            return offsets

        return await cluster.call_with_retries(attempt, attempts_max=self.reconnect_attempts_max)
