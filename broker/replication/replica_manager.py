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

from broker.cluster.snapshot import ClusterMetadata
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
from client.errors import DistributaryError

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
        )
        self._nursery: trio.Nursery | None = None
        self._retry = trio.Event()  # set when a role change failed

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
        leader_state = LeaderState(
            node_id=self.node_id,
            leader_epoch=after.leader_epoch,
            replicas=after.replicas,
            isr=isr,
            log_end_offset=partition.log_end_offset,
            high_watermark=partition.high_watermark,
            epoch_start_offset=partition.log_end_offset,
            now_ms=self._clock_ms(),
            lag_time_max_ms=self.lag_time_max_ms,
            min_insync_replicas=min_insync_replicas,
        )
        await partition.become_leader(after.leader_epoch, leader_state)
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
