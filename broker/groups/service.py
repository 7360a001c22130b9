"""The trio shell around the group coordinator: the offsets topic, appends, session expiry.

:class:`GroupService` owns one :class:`GroupCoordinator` (sans-I/O) and does its
I/O:

* **Start-up** (:meth:`load`, before the broker serves): read every partition of
  ``__consumer_offsets`` from its start and replay each record into the
  coordinator.  Reading decodes records: the offsets topic is the broker's own
  data, and this is the one read of it per start (see also compaction.py).
* **Records**: a commit, a deletion or an epoch change returns records; they are
  appended as one batch to the group's partition of ``__consumer_offsets``
  (created with its compacted config on first use) with acks=all's rule: refused
  (NOT_ENOUGH_REPLICAS) while the partition has fewer in-sync replicas than its
  min ISR, and the request is answered only once the high watermark covers them
  (at once with one replica).  So an acknowledged commit is in the log of every
  in-sync replica and outlives the coordinator.
* **Pending records**: a commit or a tombstone is applied to the coordinator only
  once the high watermark passes it.  Until then it waits as a pending record
  (pending.py), so OffsetFetch and DescribeGroups never show an
  offset a leader change could still lose; an append that fails drops its
  pending records, leaving the previous commit in place.  Epoch records are
  applied at once: a lost one only makes a later epoch skip numbers.  OffsetFetch
  first waits (at most OFFSET_FETCH_WAIT_S) for the group's pending records to
  settle, so it answers the newest acknowledged commit.
* **Leading a partition** (:meth:`lead_offsets_partitions`): its log is replayed
  to its end, records below the high watermark at once and the rest as pending
  records, applied when the followers' fetches move the high watermark past
  them (a new leader's high watermark lags its log).
* **Expiry** (:meth:`run`, in the server's root nursery): sleep until the
  earliest member deadline (or until a heartbeat may have moved it), then let
  the coordinator expel whoever missed it.

Concurrency: everything runs on the event loop.  The coordinator's methods are
synchronous, so a request's validation and its state change never interleave
with another request's; only the append awaits (and replay tolerates appends
finishing out of order: see GroupCoordinator.replay).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Final

import trio

from broker.groups.config import OFFSETS_TOPIC, GroupConfig
from broker.groups.coordinator import GroupCoordinator
from broker.groups.pending import PendingRecord, PendingRecords, pending_group
from broker.groups.records import BadOffsetsRecord, Record, partition_for_group
from broker.logging import get_logger
from broker.partition import Partition
from broker.replication.leader_state import WAIT
from broker.topics import Topic, TopicManager
from broker.waiting import wait_for_partitions
from client.errors import (
    CoordinatorNotAvailableError,
    DistributaryError,
    NotEnoughReplicasError,
    RequestTimedOutError,
    error_for_code,
)
from client.records.builder import BatchBuilder
from client.records.decoder import RecordDecoder

# Start-up reads the offsets topic 1 MiB at a time.
LOAD_READ_BYTES: Final = 1024 * 1024
# The expiry task wakes at least this often (a heartbeat also wakes it when a
# deadline may have moved), so a missed wake-up costs at most one second.
EXPIRY_SLEEP_MS_MAX: Final = 1_000
# A commit waits at most this long for the offsets partition's in-sync replicas.
REPLICATION_WAIT_S: Final = 10.0
# OffsetFetch waits at most this long for the group's pending commits to be
# replicated (or to fail) before answering the last replicated ones.
OFFSET_FETCH_WAIT_S: Final = 5.0


def offsets_topic_configs(config: GroupConfig) -> dict[str, str]:
    """The topic configs of __consumer_offsets: compacted, small segments, no retention."""
    return {
        "cleanup_policy": "compact",
        "retention_ms": "none",
        "retention_bytes": "none",
        "segment_bytes": str(config.offsets_segment_bytes),
        "segment_ms": str(config.offsets_segment_ms),
        "retention_check_interval_ms": str(config.offsets_compaction_check_interval_ms),
        "delete_retention_ms": str(config.offsets_delete_retention_ms),
    }


class GroupService:
    """Every group of the broker, with their storage (see the module docstring)."""

    def __init__(
        self,
        topics: TopicManager,
        config: GroupConfig,
        clock_ms: Callable[[], int],
        rng: random.Random | None = None,
    ) -> None:
        self.topics = topics
        self.config = config
        self._clock_ms = clock_ms
        self.coordinator = GroupCoordinator(
            config,
            clock_ms=clock_ms,
            rng=rng if rng is not None else random.Random(),
            topic_partitions=self._partition_counts,
        )
        self._create_lock = trio.Lock()
        self._deadline_moved = trio.Event()
        self.logger: Any = get_logger(component="groups")
        # On a cluster member: the offsets partitions whose groups this broker serves
        # (led and loaded).  None on a single node: every group is served.
        self.coordinated: set[int] | None = None
        self._leads: Callable[[str, int], bool] = lambda topic, partition: True
        # Commits and tombstones not yet below their partition's high watermark.
        self._pending = PendingRecords()

    def _partition_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name in self.topics.names():
            topic = self.topics.get(name)
            if topic is not None:
                counts[name] = len(topic.partitions)
        return counts

    # -- start-up -----------------------------------------------------------------------

    async def load(self) -> int:
        """Rebuild the coordinator from __consumer_offsets (if it exists); returns the
        number of records replayed.  Raises StorageError."""
        topic = self.topics.get(OFFSETS_TOPIC)
        if topic is None:
            return 0
        replayed = skipped = 0
        for partition in topic.partitions:
            done, bad = await self._replay_partition(partition)
            replayed += done
            skipped += bad
        self.logger.info(
            "groups loaded",
            groups=len(self.coordinator.list_groups()),
            records=replayed,
            skipped=skipped,
        )
        return replayed

    async def _replay_partition(
        self, partition: Partition, *, hold_unreplicated: bool = False
    ) -> tuple[int, int]:
        """Replay one offsets partition from its start; returns (replayed, skipped).
        With ``hold_unreplicated`` the commits and tombstones at or above its high
        watermark become pending records instead.  Raises StorageError."""
        decoder: RecordDecoder[bytes] = RecordDecoder()
        replayed = skipped = 0
        offset = partition.log_start_offset
        end = partition.log_end_offset
        replicated_end = partition.high_watermark if hold_unreplicated else end
        for _ in range(end - offset + 1):  # each read moves past at least one batch
            if offset >= end:
                break
            # To the log end, not the high watermark: a new leader's log is the
            # partition's from now on, and its high watermark may lag behind it
            # (what lies above it is held until the followers have it).
            with partition.read(
                offset, LOAD_READ_BYTES, whole_batch=True, end_offset_max=end
            ) as region:
                data = await trio.to_thread.run_sync(region.read_bytes)
            fetched = decoder.decode_fetch(data, offset)
            for record in fetched.records:
                try:
                    group_id = None
                    if record.offset >= replicated_end:
                        group_id = pending_group(record.key, record.value)
                    if group_id is None:
                        self.coordinator.replay(record.key, record.value, record.offset)
                    else:
                        self._pending.add(
                            partition.index,
                            PendingRecord(record.offset, group_id, record.key, record.value),
                        )
                    replayed += 1
                except BadOffsetsRecord as error:
                    skipped += 1
                    self.logger.warning(
                        "offsets record skipped",
                        partition=partition.index,
                        offset=record.offset,
                        error=str(error),
                    )
            assert fetched.next_offset > offset, (fetched.next_offset, offset)
            offset = fetched.next_offset
        return replayed, skipped

    # -- coordinating in a cluster ----------------------------------------------------------

    def coordinate_led_partitions(self, leads: Callable[[str, int], bool]) -> None:
        """Serve only the groups whose offsets partition this broker leads (a cluster
        member calls this before it serves; ``leads`` is its metadata view's)."""
        self._leads = leads
        self.coordinated = set()

    def offsets_partition(self, group_id: str) -> int:
        """The index of the group's partition of __consumer_offsets (as many
        partitions as the topic has, the configured count before it exists)."""
        topic = self.topics.get(OFFSETS_TOPIC)
        count = self.config.offsets_topic_partitions if topic is None else len(topic.partitions)
        return partition_for_group(group_id, count)

    def check_coordinator(self, group_id: str) -> None:
        """On a cluster member: raises CoordinatorNotAvailableError unless this broker
        leads the group's offsets partition and has loaded it.  On a single node
        every group is served.  Then applies the partition's pending records that
        the high watermark has passed."""
        index = self.offsets_partition(group_id)
        if self.coordinated is not None and (
            index not in self.coordinated or not self._leads(OFFSETS_TOPIC, index)
        ):
            raise CoordinatorNotAvailableError(
                f"this broker does not coordinate group {group_id!r} (offsets partition "
                f"{index}); find its coordinator again"
            )
        self._apply_replicated(index)

    async def lead_offsets_partitions(self, led: set[int]) -> None:
        """Make the coordinated offsets partitions ``led``: load the committed offsets
        of each newly led one before its groups are served, drop the groups of each
        one no longer led.  Raises StorageError (that partition stays unserved)."""
        assert self.coordinated is not None, "coordinate_led_partitions first"
        for index in sorted(self.coordinated - led):
            self.coordinated.discard(index)
            self._pending.drop(index)
            dropped = self._drop_groups_of(index)
            self.logger.info(
                "offsets partition no longer led", partition=index, groups=len(dropped)
            )
        topic = self.topics.get(OFFSETS_TOPIC)
        for index in sorted(led - self.coordinated):
            if topic is None or index >= len(topic.partitions):
                continue
            # Whatever is in memory for these groups is stale: start from the log.
            self._drop_groups_of(index)
            self._pending.drop(index)
            replayed, skipped = await self._replay_partition(
                topic.partitions[index], hold_unreplicated=True
            )
            self.coordinated.add(index)
            self.logger.info(
                "offsets partition loaded", partition=index, records=replayed, skipped=skipped
            )

    def _drop_groups_of(self, index: int) -> list[str]:
        """Forget the groups of offsets partition ``index``; returns their ids."""

        def belongs(group_id: str) -> bool:
            return self.offsets_partition(group_id) == index

        return self.coordinator.drop_groups(belongs)

    # -- appending ----------------------------------------------------------------------

    async def offsets_topic(self) -> Topic:
        """__consumer_offsets, created on first use.  Raises StorageError."""
        topic = self.topics.get(OFFSETS_TOPIC)
        if topic is not None:
            return topic
        async with self._create_lock:
            topic = self.topics.get(OFFSETS_TOPIC)
            if topic is None:
                topic = await self.topics.create(
                    OFFSETS_TOPIC,
                    self.config.offsets_topic_partitions,
                    offsets_topic_configs(self.config),
                )
        return topic

    async def append(self, group_id: str, records: list[Record]) -> None:
        """Append a group's records as one batch to its offsets partition; return once
        the partition's in-sync replicas hold them, its commits and tombstones then
        applied (epoch records are applied at once).  Raises StorageError,
        NotEnoughReplicasError (nothing appended), and as :meth:`_wait_replicated`
        (the records not below the high watermark stay unapplied: the previous
        commits remain)."""
        if not records:
            return
        topic = await self.offsets_topic()
        index = partition_for_group(group_id, len(topic.partitions))
        partition = topic.partitions[index]
        leader_state = partition.leader_state
        if leader_state is not None and leader_state.acks_all_refusal() is not None:
            raise NotEnoughReplicasError(
                f"{OFFSETS_TOPIC}-{index}: {len(leader_state.isr)} in-sync replicas, "
                f"min.insync.replicas is {leader_state.min_insync_replicas}"
            )
        builder = BatchBuilder()
        now_ms = self._clock_ms()
        for key, value in records:
            builder.append(value, key, (), now_ms)
        epoch = partition.leader_epoch
        appended = await partition.append(memoryview(builder.build()))
        assert appended.last_offset - appended.base_offset + 1 == len(records), appended
        held: list[PendingRecord] = []
        for number, (key, value) in enumerate(records):
            offset = appended.base_offset + number
            if pending_group(key, value) is None:
                self.coordinator.replay(key, value, offset)
            else:
                record = PendingRecord(offset, group_id, key, value)
                self._pending.add(index, record)
                held.append(record)
        try:
            await self._wait_replicated(partition, epoch, appended.last_offset + 1)
        except DistributaryError:
            # Those the high watermark passed anyway are in every in-sync replica.
            self._apply_replicated(index)
            self._pending.forget(index, held)
            raise
        self._apply_replicated(index)

    async def _wait_replicated(self, partition: Partition, epoch: int, end_offset: int) -> None:
        """Return once the offsets partition's in-sync replicas hold everything below
        ``end_offset`` (at once with one replica), as an acks=all produce waits: a
        commit answered then survives the coordinator's loss.  Raises
        CoordinatorNotAvailableError (leadership lost meanwhile: the member asks
        again, and the next coordinator replays the records if they survived),
        NotEnoughReplicasAfterAppendError (the high watermark passed them with
        fewer in-sync replicas than the min ISR), RequestTimedOutError (not
        replicated within REPLICATION_WAIT_S: the member retries the same commit)."""
        deadline = trio.current_time() + REPLICATION_WAIT_S
        while True:  # until replicated, refused or timed out; each pass waits for a change
            if (
                partition.closed
                or partition.leader_epoch != epoch
                or partition.is_follower
                or partition.log_end_offset < end_offset
            ):
                raise CoordinatorNotAvailableError(
                    f"{OFFSETS_TOPIC}-{partition.index} changed leader before its replicas "
                    "confirmed the records"
                )
            leader_state = partition.leader_state
            if leader_state is None:
                if partition.high_watermark >= end_offset:
                    return
            else:
                outcome = leader_state.acks_all_outcome(end_offset)
                if outcome is None:
                    return
                if outcome != WAIT:
                    raise error_for_code(outcome, f"{OFFSETS_TOPIC}-{partition.index}")
            if trio.current_time() >= deadline:
                raise RequestTimedOutError(
                    f"{OFFSETS_TOPIC}-{partition.index}: the in-sync replicas did not "
                    f"confirm offsets below {end_offset} within {REPLICATION_WAIT_S} s"
                )
            await wait_for_partitions([partition], deadline)

    # -- pending records ----------------------------------------------------------------

    def _offsets_partition_at(self, index: int) -> Partition | None:
        """Partition ``index`` of __consumer_offsets (None: it does not exist here)."""
        topic = self.topics.get(OFFSETS_TOPIC)
        if topic is None or index >= len(topic.partitions):
            return None
        return topic.partitions[index]

    def _apply_replicated(self, index: int) -> None:
        """Apply, in log order, offsets partition ``index``'s pending records that its
        high watermark has passed."""
        if not self._pending.has_partition(index):
            return
        partition = self._offsets_partition_at(index)
        if partition is None or partition.closed or partition.is_follower:
            return
        for record in self._pending.take_replicated(index, partition.high_watermark):
            self.coordinator.replay(record.key, record.value, record.offset)

    def has_pending(self, group_id: str) -> bool:
        """Whether a commit or tombstone of the group awaits replication."""
        return self._pending.has_group(self.offsets_partition(group_id), group_id)

    async def wait_pending(self, group_id: str) -> None:
        """Return once no commit or tombstone of the group awaits replication (each
        then applied or dropped), or after OFFSET_FETCH_WAIT_S, or when this broker
        stops leading the group's offsets partition."""
        index = self.offsets_partition(group_id)
        deadline = trio.current_time() + OFFSET_FETCH_WAIT_S
        while True:  # until settled or the deadline; each pass waits for a change
            self._apply_replicated(index)
            if not self.has_pending(group_id):
                return
            partition = self._offsets_partition_at(index)
            if partition is None or partition.closed or partition.is_follower:
                return
            if trio.current_time() >= deadline:
                return
            await wait_for_partitions([partition], deadline)

    def check_invariants(self) -> None:
        """The pending records' invariants (pending.py), then the coordinator's."""
        self._pending.check_invariants(self.offsets_partition, self.coordinated)
        self.coordinator.check_invariants()

    async def append_quietly(self, group_id: str, records: list[Record]) -> None:
        """Append epoch records: on failure log and go on (the group's state is in
        memory; the record only keeps epochs monotonic across a restart)."""
        try:
            await self.append(group_id, records)
        except DistributaryError as error:
            self.logger.error("group epoch not persisted", group=group_id, error=error.message)

    def deadlines_changed(self) -> None:
        """Wake the expiry task (a heartbeat moved or added a deadline)."""
        self._deadline_moved.set()

    # -- expiry -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expel members whose session or revocation deadline passed, until cancelled."""
        task_status.started()
        while True:  # until the root nursery is cancelled
            deadline_ms = self.coordinator.next_deadline_ms()
            wait_ms = EXPIRY_SLEEP_MS_MAX
            if deadline_ms is not None:
                wait_ms = min(wait_ms, max(0, deadline_ms - self._clock_ms()))
            with trio.move_on_after(wait_ms / 1000):
                await self._deadline_moved.wait()
            self._deadline_moved = trio.Event()
            await self.expire_now()

    async def expire_now(self) -> None:
        result = self.coordinator.expire()
        for expired in result.expired:
            self.logger.info(
                "member expelled",
                group=expired.group_id,
                member=expired.member_id,
                instance=expired.instance_id,
                reason=expired.reason,
            )
        for group_id, records in result.records.items():
            await self.append_quietly(group_id, records)
