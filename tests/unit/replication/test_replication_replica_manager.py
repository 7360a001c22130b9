"""broker/replication/replica_manager.py: metadata versions turned into leader and
follower roles on local partitions (fake partitions record what they were told)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from broker.cluster.schema import NO_LEADER, BrokerRegistration, PartitionState, TopicAssignment
from broker.cluster.snapshot import ClusterMetadata
from broker.config import BrokerConfig
from broker.metrics.counters import BrokerMetrics
from broker.replication.epochs import LeaderEpochCache
from broker.replication.leader_state import LeaderState
from broker.replication.replica_manager import ReplicaManager
from broker.storage.config import LogConfig
from client.errors import StorageError

KEY = ("t", 0)


class FakePartition:
    def __init__(self, min_insync_replicas: int = 2) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.closed = False
        self.log_start_offset = 0
        self.log_end_offset = 7
        self.high_watermark = 5
        self.epochs = LeaderEpochCache()
        self.config = LogConfig(min_insync_replicas=min_insync_replicas)
        self.failing = False
        self.appended_before_leading = 0
        self.leader_state: LeaderState | None = None

    async def become_leader(
        self,
        leader_epoch: int,
        leader_state: LeaderState | None,
        *,
        build_leader_state: Callable[[int, int], LeaderState] | None = None,
    ) -> None:
        if self.failing:
            raise StorageError("disk full")
        # A replicated append that held the append lock finished first.
        self.log_end_offset += self.appended_before_leading
        if build_leader_state is not None:
            leader_state = build_leader_state(self.log_end_offset, self.high_watermark)
        # As the real partition asserts: the leader state starts at the log end.
        assert leader_state is None or leader_state.log_end_offset == self.log_end_offset
        self.leader_state = leader_state
        self.calls.append(("leader", leader_epoch, leader_state))

    async def become_follower(self, leader_epoch: int) -> None:
        self.calls.append(("follower", leader_epoch))


def member(partition: FakePartition) -> Any:
    topics = SimpleNamespace(get=lambda name: SimpleNamespace(partitions=[partition]))
    config = BrokerConfig(node_id=1, listen="127.0.0.2:0", replica_lag_time_max_ms=3000)
    found = SimpleNamespace(
        node_id=1,
        broker=SimpleNamespace(config=config, topics=topics, metrics=BrokerMetrics()),
        store=None,
        view=SimpleNamespace(is_fenced=lambda: False),
        metadata=ClusterMetadata(),
    )
    found.metadata.brokers = {
        n: BrokerRegistration(n, f"127.0.0.{n + 1}", 9000 + n) for n in (1, 2, 3)
    }
    return found


def metadata(state: PartitionState, replicas: list[int], version: int) -> ClusterMetadata:
    found = ClusterMetadata()
    found.topics["t"] = TopicAssignment(replicas=[replicas])
    found.topic_incarnations["t"] = 2
    found.states[KEY] = state
    found.state_versions[KEY] = version
    return found


async def test_roles_follow_the_metadata() -> None:
    """Proves leadership becomes become_leader with a LeaderState of the metadata's
    replicas, ISR and min ISR; a new leader elsewhere becomes become_follower and a
    fetcher of that leader; no leader stops the fetching."""
    partition = FakePartition()
    manager = ReplicaManager(member(partition), lambda: 1000)
    await manager.apply(metadata(PartitionState(1, 3, [1, 2, 3]), [1, 2, 3], 10))
    ((kind, epoch, state),) = partition.calls
    assert (kind, epoch) == ("leader", 3) and isinstance(state, LeaderState)
    assert (state.replicas, state.isr, state.min_insync_replicas) == ((1, 2, 3), (1, 2, 3), 2)
    assert (state.log_end_offset, state.high_watermark, state.epoch_start_offset) == (7, 5, 7)
    assert manager.leads_in(KEY, 3) and not manager.leads_in(KEY, 2)
    assert KEY in manager.isr_writer.led

    await manager.apply(metadata(PartitionState(2, 4, [2, 3]), [1, 2, 3], 11))
    assert partition.calls[-1] == ("follower", 4)
    assert not manager.leads_in(KEY, 4) and KEY not in manager.isr_writer.led
    assert KEY in manager.fetchers[2].followed

    await manager.apply(metadata(PartitionState(NO_LEADER, 5, []), [1, 2, 3], 12))
    assert KEY not in manager.fetchers[2].followed
    assert partition.calls[-1] == ("follower", 4)  # a follower has nothing to drop


async def test_single_replica_leads_without_leader_state() -> None:
    """Proves a partition of one replica leads with no LeaderState (HW = log end)."""
    partition = FakePartition(min_insync_replicas=1)
    manager = ReplicaManager(member(partition), lambda: 0)
    await manager.apply(metadata(PartitionState(1, 0, [1]), [1], 10))
    assert partition.calls == [("leader", 0, None)]
    assert manager.leads_in(KEY, 0) and KEY not in manager.isr_writer.led


async def test_failed_leadership_is_not_published_and_is_tried_again() -> None:
    """Proves a become_leader that fails leaves the partition not led (the member
    holds it out of the view) and is applied again with the same metadata."""
    partition = FakePartition()
    partition.failing = True
    manager = ReplicaManager(member(partition), lambda: 0)
    applied = metadata(PartitionState(1, 3, [1, 2, 3]), [1, 2, 3], 10)
    await manager.apply(applied)
    assert not manager.leads_in(KEY, 3) and partition.calls == []
    partition.failing = False
    await manager.apply(applied)
    assert manager.leads_in(KEY, 3) and partition.calls[0][:2] == ("leader", 3)


async def test_the_leader_state_starts_where_the_log_ends_when_it_leads() -> None:
    """Proves the leader state is built at the log end the partition has when it
    becomes leader, not when the manager read it: a follower's replicated append
    still in flight (its fetcher was just told to stop) may finish in between (the
    broker crashed on the partition's assertion when its preferred leadership came
    back while it was fetching)."""
    partition = FakePartition()
    partition.appended_before_leading = 3
    manager = ReplicaManager(member(partition), lambda: 1000)
    await manager.apply(metadata(PartitionState(2, 3, [2, 1, 3]), [1, 2, 3], 10))
    assert partition.calls == [("follower", 3)]
    await manager.apply(metadata(PartitionState(1, 4, [2, 1, 3]), [1, 2, 3], 11))
    ((kind, epoch, state),) = partition.calls[1:]
    assert (kind, epoch) == ("leader", 4) and isinstance(state, LeaderState)
    assert (state.log_end_offset, state.high_watermark, state.epoch_start_offset) == (10, 5, 10)
    assert manager.isr_writer.led[KEY].leader_state is state
