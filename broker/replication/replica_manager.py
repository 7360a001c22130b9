"""The replica manager: turns each applied version of the cluster metadata into the
role every local partition plays, and runs the tasks that replicate.

On every metadata apply (broker/cluster/member.py calls :meth:`ReplicaManager.apply`
once the logs of new topics are open), the manager compares the roles it applied
with the metadata's (broker/replication/roles.py) and, per change of an open
local partition:

- **leader, new epoch**: ``become_leader`` with a LeaderState (replicas, ISR, log
  end, high watermark, the epoch's start offset = the log end now, the lag time,
  the topic's min ISR) -- no LeaderState for a single replica, which commits on
  append -- stop fetching it, and hand it to the ISR writer;
- **leader, same epoch** (the ISR or version changed): tell the ISR writer;
- **follower, new leader or epoch**: ``become_follower`` and follow it on the
  fetcher of its leader broker (one per leader: broker/replication/fetcher.py),
  which truncates first;
- **no leader, or not assigned here any more**: stop fetching and writing; a
  partition led until now becomes a follower of nobody (its leader state and
  acks=all waiters are dropped).

A leader whose partition failed to store an append or a flush (its disk is full or
failing) gives the partition up (``Partition.on_storage_failure``): the manager
stops leading and replicating it for the rest of this process's life and puts
``offline/<node>/<topic>/<partition>`` with the broker's lease (again after a new
registration), so the controller fences the replica out of the ISR and elects
another member; after a restart the key is gone (it went with the old lease) and
the replica truncates and catches up as a follower.

A leadership is played only from a partition state written after this broker's
current registration (its version above the broker epoch): an older one may name
this broker from before a restart in which its log lost what that leadership
acknowledged; the controller re-elects such a partition in a new epoch
(broker/cluster/controller.py).

A partition whose log is not open yet (a topic the member has not created
locally) is left for a later apply; one whose role change failed (its epoch
checkpoint could not be written) is tried again after ROLE_RETRY_S.  The member publishes a partition as
led here only once :meth:`ReplicaManager.leads_in` says its leadership of that
epoch is in place, so a handler never appends to a leader without its leader
state.

:meth:`ReplicaManager.run` is the task tree: the ISR writer and one task per
leader broker this node fetches from (each idles while it follows nothing there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from broker.cluster.schema import OfflineReplica, encode, offline_key
from broker.cluster.snapshot import ClusterMetadata
from broker.cluster.store import MetadataStoreError
from broker.logging import get_logger
from broker.partition import Partition
from broker.replication.fetcher import LeaderFetcher
from broker.replication.isr_writer import IsrWriter, Led
from broker.replication.leader_state import LeaderState
from broker.replication.roles import (
    Assignment,
    PartitionKey,
    Role,
    RoleChange,
    local_roles,
    role_changes,
)
from client.errors import DistributaryError, StorageError

if TYPE_CHECKING:
    from broker.cluster.member import ClusterMember

# A failed role change is tried again after this long.
ROLE_RETRY_S: Final = 1.0
# Listen addresses that name no single interface: outgoing sockets are not bound.
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})

_logger = get_logger()


class ReplicaManager:
    """One broker's replicas (module docstring)."""

    def __init__(self, member: ClusterMember, clock_ms: Callable[[], int]) -> None:
        self.member = member
        self.node_id = member.node_id
        config = member.broker.config
        self.lag_time_max_ms = config.replica_lag_time_max_ms
        self._clock_ms = clock_ms
        self._local_host = None if config.host in _WILDCARD_HOSTS else config.host
        self.roles: dict[PartitionKey, Assignment] = {}
        self.fetchers: dict[int, LeaderFetcher] = {}
        self.isr_writer = IsrWriter(
            member.store,
            self.node_id,
            self.lag_time_max_ms,
            clock_ms,
            member.view.is_fenced,
            lambda: self.member.metadata.broker_epochs,
            member.broker.metrics.replication,
        )
        self._nursery: trio.Nursery | None = None
        self._retry = trio.Event()  # set when a role change failed
        # Partitions given up after a storage failure (module docstring).
        self.failed: set[PartitionKey] = set()
        self._failure = trio.Event()  # set when one more was given up

    # -- applying the metadata ----------------------------------------------------------

    def leads_in(self, key: PartitionKey, leader_epoch: int) -> bool:
        """Whether this node's leadership of ``key`` in ``leader_epoch`` is in place."""
        found = self.roles.get(key)
        return (
            found is not None and found.role is Role.LEADER and found.leader_epoch == leader_epoch
        )

    async def apply(self, metadata: ClusterMetadata) -> None:
        """Play the roles ``metadata`` gives the local partitions (module docstring)."""
        wanted = local_roles(self.node_id, metadata)
        roles = dict(self.roles)
        for key in self.failed:
            wanted.pop(key, None)
        own_epoch = metadata.broker_epochs.get(self.node_id, -1)
        for key, assignment in list(wanted.items()):
            if assignment.role is Role.LEADER and assignment.version <= own_epoch:
                # Written before this registration: not ours to lead (the controller
                # re-elects it in a new epoch).
                del wanted[key]
        for change in role_changes(self.roles, wanted):
            key = change.key
            partition = self._open_partition(key)
            if partition is None and change.after.role is not Role.NONE:
                continue  # its log opens later: applied then
            try:
                await self._apply_change(change, partition, metadata)
            except DistributaryError as error:
                # Left as it was applied: tried again after ROLE_RETRY_S (or with the
                # next metadata).
                self._retry.set()
                _logger.error(
                    "replica role not applied",
                    topic=key[0],
                    partition=key[1],
                    role=change.after.role.value,
                    leader_epoch=change.after.leader_epoch,
                    error=error.message,
                )
                continue
            if key in wanted:
                roles[key] = change.after
            else:
                roles.pop(key, None)
        self.roles = roles

    def _open_partition(self, key: PartitionKey) -> Partition | None:
        topic = self.member.broker.topics.get(key[0])
        if topic is None or key[1] >= len(topic.partitions):
            return None
        partition = topic.partitions[key[1]]
        return None if partition.closed else partition

    async def _apply_change(
        self, change: RoleChange, partition: Partition | None, metadata: ClusterMetadata
    ) -> None:
        key, after = change.key, change.after
        if after.role is Role.LEADER and partition is not None:
            if change.new_leadership:
                self._unfollow(key)
                await self._lead(key, partition, after, metadata)
            else:
                state = metadata.states.get(key)
                if state is not None:
                    self.isr_writer.seen(key, state, after.version)
            return
        if after.role is Role.FOLLOWER and partition is not None:
            if change.new_leadership:
                self.isr_writer.stop(key)
                self._unfollow(key)
                await partition.become_follower(after.leader_epoch)
                self._fetcher(after.leader).follow(key, partition, after.leader_epoch)
                self._log_role(key, after)
            return
        self.isr_writer.stop(key)
        self._unfollow(key)
        if change.before.role is Role.LEADER and partition is not None:
            await partition.become_follower(max(after.leader_epoch, change.before.leader_epoch))
        if change.new_leadership:
            self._log_role(key, after)

    async def _lead(
        self, key: PartitionKey, partition: Partition, after: Assignment, metadata: ClusterMetadata
    ) -> None:
        if len(after.replicas) == 1:
            self.isr_writer.stop(key)
            await partition.become_leader(after.leader_epoch, None)
            return
        isr = after.isr if self.node_id in after.isr else (self.node_id,)
        min_insync_replicas = partition.config.min_insync_replicas

        def build(log_end_offset: int, high_watermark: int) -> LeaderState:
            # Called by the partition with appends held off: a replicated append
            # of the fetcher this partition just left may have ended meanwhile.
            return LeaderState(
                node_id=self.node_id,
                leader_epoch=after.leader_epoch,
                replicas=after.replicas,
                isr=isr,
                log_end_offset=log_end_offset,
                high_watermark=high_watermark,
                epoch_start_offset=log_end_offset,
                now_ms=self._clock_ms(),
                lag_time_max_ms=self.lag_time_max_ms,
                min_insync_replicas=min_insync_replicas,
            )

        partition.on_storage_failure = lambda error: self._storage_failed(key, error)
        await partition.become_leader(after.leader_epoch, None, build_leader_state=build)
        leader_state = partition.leader_state
        assert leader_state is not None, key
        state = metadata.states[key]
        self.isr_writer.lead(
            key, Led(partition, leader_state, state, after.version, min_insync_replicas)
        )
        self._log_role(key, after)

    def _log_role(self, key: PartitionKey, after: Assignment) -> None:
        _logger.info(
            "replica role",
            topic=key[0],
            partition=key[1],
            role=after.role.value,
            leader=after.leader,
            leader_epoch=after.leader_epoch,
            isr=list(after.isr),
        )

    def _storage_failed(self, key: PartitionKey, error: StorageError) -> None:
        """The partition gave up its leadership after a storage failure (it already
        stopped acknowledging): stop leading and replicating it, and have the
        offline key written."""
        if key in self.failed:
            return
        self.failed.add(key)
        self.roles.pop(key, None)
        self.isr_writer.stop(key)
        self._unfollow(key)
        self._failure.set()
        _logger.error(
            "replica offline after a storage failure",
            topic=key[0],
            partition=key[1],
            error=error.message,
        )

    async def _mark_offline(self) -> None:
        """Keep an ``offline/`` key (with the current lease) for every partition given
        up, until cancelled: written after each failure and after each change that
        does not show them (a new registration dropped them with the old lease)."""
        while True:  # until cancelled
            member = self.member
            changed = member.change_event()
            failure = self._failure
            shown = {
                key for key, nodes in member.metadata.offline_replicas.items()
                if self.node_id in nodes
            }  # fmt: skip
            lease = member.lease_id
            # Without a lease (not registered) the key would outlive this process.
            missing = sorted(self.failed - shown) if lease else []
            try:
                for topic, index in missing:
                    value = encode(OfflineReplica(self.node_id, topic, index))
                    await member.store.put(
                        offline_key(self.node_id, topic, index), value, lease=lease
                    )
            except MetadataStoreError as error:
                _logger.warning("offline replica not recorded", error=error.message)
                await trio.sleep(ROLE_RETRY_S)
                continue
            if missing:
                # Republish: the view stops naming these partitions led here.
                await member.reapply_roles()
            async with trio.open_nursery() as nursery:
                for event in (changed, failure):
                    nursery.start_soon(_wait_then_cancel, event, nursery.cancel_scope)
            if failure.is_set():
                self._failure = trio.Event()

    # -- fetchers -----------------------------------------------------------------------

    def _fetcher(self, leader: int) -> LeaderFetcher:
        fetcher = self.fetchers.get(leader)
        if fetcher is None:
            fetcher = LeaderFetcher(
                self.node_id, leader, self._address_of, self._local_host, self._own_broker_epoch
            )
            self.fetchers[leader] = fetcher
            if self._nursery is not None:
                self._nursery.start_soon(fetcher.run)
        return fetcher

    def _unfollow(self, key: PartitionKey) -> None:
        for fetcher in self.fetchers.values():
            fetcher.unfollow(key)

    def _own_broker_epoch(self) -> int:
        """This broker's registration revision as the metadata shows it (-1 before)."""
        return self.member.metadata.broker_epochs.get(self.node_id, -1)

    def _address_of(self, node_id: int) -> tuple[str, int] | None:
        registration = self.member.metadata.brokers.get(node_id)
        if registration is None:
            return None
        return registration.host, registration.port

    # -- running ------------------------------------------------------------------------

    async def run(self) -> None:
        """The ISR writer and the fetchers, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                nursery.start_soon(self.isr_writer.run)
                nursery.start_soon(self._retry_failed)
                nursery.start_soon(self._mark_offline)
                for fetcher in self.fetchers.values():
                    nursery.start_soon(fetcher.run)
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _retry_failed(self) -> None:
        """Apply the metadata again ROLE_RETRY_S after a role change failed (a disk
        error writing the epoch checkpoint, say), until cancelled."""
        while True:  # until cancelled
            await self._retry.wait()
            await trio.sleep(ROLE_RETRY_S)
            self._retry = trio.Event()
            await self.member.reapply_roles()


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
