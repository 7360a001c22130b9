"""The async consumer: assigned partitions or a consumer group, positions, prefetching.

Runs on trio or asyncio (anyio).  The Consumer is a shell around three parts:
a :class:`~client.fetcher.Fetcher` (client/fetcher.py) keeps each assigned
partition's position and buffered records and turns Fetch answers into lists
of records (decoded per batch in C); a :class:`~client.fetch_loop.FetchLoop`
(client/fetch_loop.py) keeps a long-polling Fetch in flight per leader broker,
so the next records are on the wire while the caller works on the current
ones; and :class:`~client.handout.RecordHandout` (client/handout.py), which
this class extends, hands the buffered lists out through :meth:`getmany` and
``async for``.

Positions: ``position(tp)`` is the offset of the next record the caller will
get.  A position is set by ``seek`` or resolved from the broker (ListOffsets,
client/offsets.py) by ``seek_to_beginning`` / ``seek_to_end`` /
``seek_to_timestamp`` or, when none was chosen, by ``auto_offset_reset``.
A position the broker answers OFFSET_OUT_OF_RANGE for (a seek past the end,
records deleted by retention) is reset by the same policy: "earliest" to the
log start, "latest" to the log end (a warning says how many offsets that
skipped), or with "none" ``getmany`` raises OffsetOutOfRangeError and the
partition waits for a seek.

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

import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc

from client._io.cluster import METADATA_MAX_AGE_MS_DEFAULT, Cluster, ClusterClient
from client._io.connection import EventLoopTools
from client._logging import get_logger
from client.errors import (
    ConnectionClosedError,
    DistributaryError,
    OffsetOutOfRangeError,
    UnknownTopicOrPartitionError,
)
from client.fetch_loop import FetchLoop
from client.fetcher import Fetcher, PartitionFetchState
from client.group import GroupMembership, GroupOptions, PartitionsCallback, fetch_committed
from client.handout import RecordHandout
from client.metrics import ConsumerMetrics, consumer_metrics
from client.offsets import list_offsets
from client.protocol.messages import LATEST_TIMESTAMP
from client.records.decoder import Record, RecordDecoder, ValueFormat
from client.records.header import BATCH_BYTES_LIMIT
from client.types import MiB, OffsetAndTimestamp, OffsetReset, PartitionLag, TopicPartition

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

log = get_logger("client.consumer")

ConsumerRecord = Record


class Consumer(RecordHandout, ClusterClient):
    """Reads assigned partitions.  Use as ``async with Consumer(...) as consumer:``.

    ``value_type``: decode every value into this msgspec-compatible type (with
    ``value_format`` "json" or "msgpack"); None keeps bytes.  ``fetch_*`` bound a
    fetch request: the broker waits up to ``fetch_max_wait_ms`` for
    ``fetch_min_bytes``, returns at most ``fetch_max_bytes`` in all and
    ``partition_fetch_bytes_max`` per partition.  ``auto_offset_reset`` picks the
    start when no position was chosen (in a group: when nothing is committed) and
    where a position is out of range: "earliest", "latest", or "none" (raise
    OffsetOutOfRangeError; "error" is another spelling of it).
    ``metadata_max_age_ms``: the cached metadata (leaders, partition counts) is
    refreshed at least this often (Kafka's metadata.max.age.ms, same default);
    a group subscription learns of added partitions through its coordinator.

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
        auto_offset_reset: Literal["earliest", "latest", "none", "error"] = "latest",
        verify_crc: bool = True,
        request_timeout_ms: int = 30_000,
        connect_timeout_ms: int = 5_000,
        reconnect_attempts_max: int = 5,
        metadata_max_age_ms: int = METADATA_MAX_AGE_MS_DEFAULT,
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
        assert auto_commit_interval_ms > 0, auto_commit_interval_ms
        assert assignor in (None, "range", "sticky"), assignor
        if metadata_max_age_ms <= 0:
            raise ValueError("metadata_max_age_ms must be positive")
        self.metadata_max_age_ms = metadata_max_age_ms
        super().__init__()
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
        self._fetcher = Fetcher(
            # Batches are bounded by the frame that brings them (the connection's
            # frame limit, raised to the broker's), not by a fixed batch size.
            RecordDecoder(
                value_type,
                value_format=value_format,
                verify_crc=verify_crc,
                batch_bytes_max=BATCH_BYTES_LIMIT,
            ),
            max_wait_ms=fetch_max_wait_ms,
            min_bytes=fetch_min_bytes,
            max_bytes=fetch_max_bytes,
            partition_bytes_max=partition_fetch_bytes_max,
            auto_offset_reset=self.auto_offset_reset,
        )
        self._fetch_loop: FetchLoop | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._cluster: Cluster | None = None
        self._tools: EventLoopTools | None = None
        self._closed = False
        # In a group: each partition's position as of the application's last
        # getmany / iteration step (every record before it is processed: what
        # auto-commit commits); None: not known yet.
        self._processed: dict[TopicPartition, int | None] = {}
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

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the consumer; ``close()`` must be called from the same task."""
        cluster = await self._open_cluster()
        self._tools = tools = EventLoopTools()
        self._fetch_loop = FetchLoop(
            self._fetcher,
            cluster,
            tools,
            request_timeout_ms=self.request_timeout_ms,
            reconnect_attempts_max=self.reconnect_attempts_max,
            rng=self._random,
            on_data=self._signal_data,
            on_error=self.report_error,
        )
        if self._group_options is not None:
            self._group = GroupMembership(self, cluster, self._group_options, self._random)
        cluster.task_group.start_soon(
            cluster.refresh_metadata_periodically, self.metadata_max_age_ms
        )

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
        if self._fetch_loop is not None:
            self._fetch_loop.closed = True
        self._cancel_data_timer()
        self._signal_data()
        self._signal_room()
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
        self._fetcher.assign(wanted)
        if self._iter_tp is not None and self._iter_tp not in self._fetcher.states:
            self._drop_iterator_chunk()
        self._start_fetching()

    def assignment(self) -> set[TopicPartition]:
        return set(self._fetcher.states)

    @property
    def fetch_error(self) -> DistributaryError | None:
        """Why fetching is failing right now (the broker is unreachable, say), or
        None while it works.  Fetching retries with backoff for as long as the
        consumer is open; this clears once it has connected again."""
        loop = self._fetch_loop
        if loop is None or not loop.failing:
            return None
        return next(iter(loop.failing.values()))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Continue ``tp`` from ``offset`` (the next fetch starts there)."""
        assert offset >= 0, offset
        self._state(tp)
        self._forget_handed_out(tp)
        self._fetcher.seek(tp, offset, offset=True)
        self._signal_room()

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
        tps = list(partitions) or list(self._fetcher.states)
        for tp in tps:
            self._state(tp)
            self._forget_handed_out(tp)
            self._fetcher.seek(tp, target, offset=False)
        await self._loop().resolve(tps)
        self._signal_room()

    async def position(self, tp: TopicPartition) -> int:
        """The offset of the next record this consumer returns for ``tp``
        (resolving it from the broker if no position is set yet).  Raises
        OffsetOutOfRangeError when it has none and ``auto_offset_reset`` is "none"."""
        state = self._state(tp)
        iterating = self._iterator_position(tp)
        if iterating is not None:
            return iterating
        position = state.position()
        if position is None:
            await self._loop().resolve([tp])
            position = state.position()
            if position is None:
                raise OffsetOutOfRangeError(f"{tp} has no position: seek first")
        return position

    def high_watermark(self, tp: TopicPartition) -> int:
        """The partition's high watermark as of the last fetch (-1 before one)."""
        return self._state(tp).high_watermark

    def _state(self, tp: TopicPartition) -> PartitionFetchState:
        state = self._fetcher.states.get(tp)
        assert state is not None, f"{tp} is not assigned to this consumer"
        return state

    def _forget_handed_out(self, tp: TopicPartition) -> None:
        """``tp`` moves: what was handed out of it is no longer the position."""
        if self._group is not None:
            self._processed[tp] = None  # known again at the next getmany / iteration step
        if self._iter_tp == tp:
            self._drop_iterator_chunk()

    def _require_cluster(self) -> Cluster:
        if self._closed:
            raise ConnectionClosedError("the consumer is closed")
        assert self._cluster is not None, "the consumer is not started (use `async with`)"
        return self._cluster

    def _require_open(self) -> None:
        self._require_cluster()

    def _loop(self) -> FetchLoop:
        self._require_cluster()
        assert self._fetch_loop is not None
        return self._fetch_loop

    def _start_fetching(self) -> None:
        """Fetch tasks for new leaders, and a wake-up for the running ones."""
        assert self._task_group is not None
        self._loop().start(self._task_group)
        self._signal_room()

    # -- offsets by time ------------------------------------------------------------------

    async def list_offsets(self, targets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """ListOffsets: for each partition, the offset for a timestamp (or
        ``EARLIEST_TIMESTAMP`` -2 / ``LATEST_TIMESTAMP`` -1).  -1 means no record
        at or after the timestamp.  Raises the partition's typed error."""
        found = await list_offsets(
            self._require_cluster(), targets, attempts_max=self.reconnect_attempts_max
        )
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
        found = await list_offsets(
            self._require_cluster(), dict(timestamps), attempts_max=self.reconnect_attempts_max
        )
        return {
            tp: None if offset < 0 else OffsetAndTimestamp(offset, timestamp_ms)
            for tp, (offset, timestamp_ms) in found.items()
        }

    async def lag(self) -> dict[TopicPartition, PartitionLag]:
        """Per assigned partition: position, committed offset (groups only; None if
        nothing is committed), log end offset and lag (log end - position)."""
        tps = sorted(self._fetcher.states)
        if not tps:
            return {}
        ends = await self.list_offsets({tp: LATEST_TIMESTAMP for tp in tps})
        committed: dict[TopicPartition, int] = {}
        if self._group is not None:
            committed = await self.committed(tps)
        result: dict[TopicPartition, PartitionLag] = {}
        for tp in tps:
            if tp not in self._fetcher.states:
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

    # -- pausing --------------------------------------------------------------------------

    def metrics(self) -> ConsumerMetrics:
        """Counters and per-partition lag (from the last fetch answers' high
        watermarks) now: a frozen snapshot, client/metrics.py."""
        return consumer_metrics(self._fetcher)

    def register_metrics(
        self, registry: CollectorRegistry, labels: dict[str, str] | None = None
    ) -> None:
        """As ``Producer.register_metrics``, for :meth:`metrics`."""
        from client.metrics_prometheus import ConsumerCollector

        registry.register(ConsumerCollector(self.metrics, labels or {}))

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
        self._signal_room()

    def paused(self) -> set[TopicPartition]:
        return {tp for tp, state in self._fetcher.states.items() if state.paused}

    def _freeze(self, tp: TopicPartition, state: PartitionFetchState) -> int | None:
        """Pause ``tp`` at the first record not handed out; returns that position."""
        position = state.position()
        if self._iter_tp == tp:
            iterating = self._iterator_position(tp)
            if iterating is not None:
                position = iterating
        self._forget_handed_out(tp)
        if position is not None:
            self._fetcher.seek(tp, position, offset=True, keep_epoch=True)
        else:
            state.clear()
        state.paused = True
        return position

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
        if not membership.running:
            self._task_group.start_soon(membership.run)
            if membership.options.enable_auto_commit:
                self._task_group.start_soon(membership.auto_commit_loop)

    async def wait_for_assignment(self, timeout_ms: int = 30_000) -> set[TopicPartition]:
        """Wait until the group has given this member at least one partition (or the
        timeout passes); returns the assignment."""
        membership = self._require_group()
        with anyio.move_on_after(timeout_ms / 1000):
            while not self._fetcher.states:
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

    async def _before_poll(self) -> None:
        """The application asks for more: what it had is processed.  Note the
        positions, and finish a revocation that waited for this moment."""
        self._busy = False
        if self._group is None:
            return
        processed = self._processed
        for tp, state in self._fetcher.states.items():
            processed[tp] = state.position()
        if self._group.revoking:
            await self._group.complete_revocation()

    def _current_positions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        positions: dict[TopicPartition, int] = {}
        states = self._fetcher.states
        for tp in partitions:
            state = states.get(tp)
            if state is None:
                continue
            position = self._iterator_position(tp)
            if position is None:
                position = state.position()
            if position is not None:
                positions[tp] = position
        return positions

    # The membership's view of this consumer (client.group.GroupMember).

    @property
    def busy(self) -> bool:
        return self._busy

    async def add_partitions(self, partitions: Mapping[TopicPartition, int | None]) -> None:
        """Start fetching newly assigned partitions from their committed offsets (or
        by auto_offset_reset)."""
        cluster = self._require_cluster()
        for topic in sorted({tp.topic for tp in partitions}):
            try:
                await cluster.topic_metadata(topic)
            except DistributaryError as error:  # fetch tasks retry; leaders resolve later
                log.info("no metadata for an assigned topic", topic=topic, error=str(error))
        for tp, committed in partitions.items():
            self._fetcher.add(tp, committed)
            self._processed[tp] = committed
        self._start_fetching()

    def freeze_partitions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Stop handing out partitions being released; returns the processed positions
        to commit (see client/group.py for why they are processed)."""
        positions: dict[TopicPartition, int] = {}
        for tp in partitions:
            state = self._fetcher.states.get(tp)
            if state is None:
                continue
            processed = self._processed.get(tp)
            current = self._freeze(tp, state)
            position = processed if processed is not None else current
            if position is not None:
                positions[tp] = position
        return positions

    def remove_partitions(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            self._fetcher.remove(tp)
            self._processed.pop(tp, None)
        self._signal_room()

    def processed_positions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        positions: dict[TopicPartition, int] = {}
        for tp in partitions:
            processed = self._processed.get(tp)
            if processed is not None and tp in self._fetcher.states:
                positions[tp] = processed
        return positions

    def current_positions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return self._current_positions(partitions)

    def check_invariants(self) -> None:
        self._fetcher.check_invariants()
        assert self._iter_index <= len(self._iter_records)
        assert self._iter_tp is not None or not self._iter_records
