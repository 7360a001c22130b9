"""The controller's rounds (broker/cluster/controller.py ``run_controller``) against
an in-memory store and a member whose view of it the test moves forward by hand,
so each round sees exactly the metadata the test chose (a view lagging behind the
controller's own writes, a leader's write racing the controller's)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from broker.cluster.controller import (
    PREFERRED_LEADER_DELAY_S,
    RETRY_S,
    ControllerMemory,
    run_controller,
)
from broker.cluster.schema import (
    BrokerRegistration,
    ControllerCandidate,
    PartitionState,
    TopicAssignment,
    broker_key,
    controller_key,
    decode,
    encode,
    state_key,
    topic_key,
)
from broker.cluster.snapshot import ClusterMetadata, decode_metadata
from broker.cluster.store import (
    Compare,
    Delete,
    KeyValue,
    Operation,
    Put,
    StoreUnavailableError,
    VersionConflictError,
)
from broker.metrics.counters import ReplicationCounters

CONTROLLER_LEASE = 0x51
TOPIC = "t"
P0 = state_key(TOPIC, 0)
P1 = state_key(TOPIC, 1)


class FakeStore:
    """The part of the MetadataStore the controller writes with: versioned CAS
    transactions, one revision each, every revision's keys kept for the view."""

    def __init__(self) -> None:
        self.items: dict[str, KeyValue] = {}
        self.revision = 0
        self.history: dict[int, dict[str, KeyValue]] = {0: {}}
        self.conflicts = 0
        # Runs before each txn of the controller (a racing writer).
        self.before_txn: Callable[[Sequence[Compare]], None] = lambda compares: None

    def write(self, operations: Sequence[Operation], lease: int = 0) -> int:
        """Apply ``operations`` in one new revision (no compare)."""
        self.revision += 1
        for operation in operations:
            if isinstance(operation, Delete):
                self.items.pop(operation.key, None)
                continue
            found = self.items.get(operation.key)
            created = self.revision if found is None else found.create_revision
            self.items[operation.key] = KeyValue(
                operation.key, operation.value, created, self.revision, operation.lease or lease
            )
        self.history[self.revision] = dict(self.items)
        return self.revision

    def put(self, key: str, value: Any, lease: int = 0) -> int:
        return self.write([Put(key, encode(value), lease)])

    def state(self, key: str) -> PartitionState:
        return decode(key, self.items[key].value, PartitionState)

    async def txn(self, compares: Sequence[Compare], operations: Sequence[Operation]) -> int:
        self.before_txn(compares)
        await trio.lowlevel.checkpoint()
        actual: dict[str, int] = {}
        for compare in compares:
            found = self.items.get(compare.key)
            if found is None:
                actual[compare.key] = 0
            elif compare.target == "create":
                actual[compare.key] = found.create_revision
            else:
                actual[compare.key] = found.mod_revision
        if any(actual[c.key] != c.version for c in compares):
            self.conflicts += 1
            raise VersionConflictError("compare failed", actual)
        return self.write(operations)


class FakeMember:
    """A ClusterMember as the controller uses it; :meth:`catch_up` applies the store
    up to a revision (the watch delivering it)."""

    def __init__(self, store: FakeStore) -> None:
        self.node_id = 1
        self.store = store
        self.lease_id = CONTROLLER_LEASE
        self.view = SimpleNamespace(is_fenced=lambda: False)
        self.broker = SimpleNamespace(metrics=SimpleNamespace(replication=ReplicationCounters()))
        self.metadata = ClusterMetadata()
        self.applied_revision = 0
        self._changed = trio.Event()

    def catch_up(self, revision: int | None = None) -> None:
        revision = self.store.revision if revision is None else revision
        self.metadata = decode_metadata(self.store.history[revision])
        self.applied_revision = revision
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def change_event(self) -> trio.Event:
        return self._changed

    async def wait_applied(self, revision: int, timeout_s: float = 5.0) -> bool:
        with trio.move_on_after(timeout_s):
            while self.applied_revision < revision:
                await self._changed.wait()
            return True
        return False


def register(store: FakeStore, node: int, clean: bool = True) -> int:
    """(Re-)register ``node``: a new broker epoch."""
    registration = BrokerRegistration(node, "127.0.0.1", 9000 + node, None, clean)
    store.write([Delete(broker_key(node))])
    return store.put(broker_key(node), registration, lease=0x100 + node)


def cluster(store: FakeStore, replicas: list[list[int]], states: list[PartitionState]) -> None:
    for node in (1, 2, 3):
        register(store, node)
    store.put(controller_key(CONTROLLER_LEASE), ControllerCandidate(1), lease=CONTROLLER_LEASE)
    configs = {"min.insync.replicas": "2"}
    store.put(topic_key(TOPIC), TopicAssignment(replicas=replicas, configs=configs))
    for index, state in enumerate(states):
        store.put(state_key(TOPIC, index), state)


async def test_a_restart_is_not_applied_again_to_a_partition_it_rejoined() -> None:
    """Proves a broker's restart is applied once per partition: when the
    controller's fence of one partition conflicts with a leader's write, the next
    round fences that partition (whose state still lists the broker from before its
    restart) but not the partition whose fence was written and which the broker has
    rejoined since (before the fix it was fenced out again, round after round while
    writes kept failing: a restarted broker kept out of the ISR)."""
    store = FakeStore()
    cluster(store, [[1, 2, 3], [3, 2, 1]], [PartitionState(1, 5, [1, 2, 3]),
                                            PartitionState(3, 5, [3, 2, 1])])  # fmt: skip
    member = FakeMember(store)
    member.catch_up()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_controller, member)
        await trio.testing.wait_all_tasks_blocked()
        assert store.conflicts == 0 and store.state(P0).isr == [1, 2, 3]

        # Broker 2 restarts after an unclean shutdown, unseen in between; leader 3
        # writes partition 1 (an unrelated ISR change, still listing 2) just before
        # the controller's fence of it.
        register(store, 2, clean=False)
        raced: list[int] = []

        def leader_3_writes(compares: Sequence[Compare]) -> None:
            if not raced and any(compare.key == P1 for compare in compares):
                raced.append(store.put(P1, PartitionState(3, 5, [3, 2])))

        store.before_txn = leader_3_writes
        member.catch_up()
        await trio.testing.wait_all_tasks_blocked()
        assert store.state(P0).isr == [1, 3]  # fenced
        assert store.conflicts == 1 and raced
        # Broker 2 catches up and leader 1 takes it back into partition 0's ISR.
        store.put(P0, PartitionState(1, 5, [1, 2, 3]))
        member.catch_up()
        await trio.testing.wait_all_tasks_blocked()
        assert store.state(P0).isr == [1, 2, 3]  # the rejoin stands
        assert store.state(P1).isr == [3]  # the listing from before the restart goes
        assert store.state(P1).leader == 3
        nursery.cancel_scope.cancel()


async def test_the_next_round_waits_for_the_controllers_own_writes() -> None:
    """Proves the controller starts its next round only once its view holds every
    state it wrote: a view that has applied the first of two writes does not make
    it rewrite the second from its stale version (a certain conflict, which failed
    the round and kept the restart pending)."""
    store = FakeStore()
    cluster(store, [[1, 2, 3], [3, 2, 1]], [PartitionState(1, 5, [1, 2, 3]),
                                            PartitionState(3, 5, [3, 2, 1])])  # fmt: skip
    member = FakeMember(store)
    member.catch_up()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_controller, member)
        await trio.testing.wait_all_tasks_blocked()
        # Broker 2 dies: the controller fences it out of both partitions.
        dead = store.write([Delete(broker_key(2))])
        member.catch_up()
        await trio.testing.wait_all_tasks_blocked()
        assert store.revision == dead + 2
        assert store.state(P0).isr == [1, 3] and store.state(P1).isr == [3, 1]
        member.catch_up(dead + 1)  # the watch delivered the first write only
        await trio.testing.wait_all_tasks_blocked()
        assert store.conflicts == 0
        member.catch_up()
        await trio.testing.wait_all_tasks_blocked()
        assert store.conflicts == 0 and store.revision == dead + 2
        nursery.cancel_scope.cancel()


def test_controller_memory_applies_a_restart_once_per_partition() -> None:
    """Proves the memory's bookkeeping: a restart applied to one partition is not
    pending there any more but still is elsewhere, a newer restart of the same
    broker is pending again, and a completed round forgets what was applied."""
    found = ClusterMetadata()
    for node, epoch in ((1, 10), (2, 20)):
        found.brokers[node] = BrokerRegistration(node, "127.0.0.1", 9000 + node, None, False)
        found.broker_epochs[node] = epoch
    memory = ControllerMemory({1: 10, 2: 11})
    restarted = memory.restarted(found)
    assert restarted == {2: False}
    memory.applied_to(("t", 0), [2], found)
    memory.check_invariants()
    assert memory.restarted_for(("t", 0), restarted, found) == {}
    assert memory.restarted_for(("t", 1), restarted, found) == {2: False}
    found.broker_epochs[2] = 30
    assert memory.restarted_for(("t", 0), memory.restarted(found), found) == {2: False}
    memory.round_completed(found)
    memory.check_invariants()
    assert memory.applied == {} and memory.restarted(found) == {}


async def test_a_preferred_election_whose_write_failed_is_tried_again(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Proves a preferred-leader write that failed without changing the store (etcd
    did not answer in time) is tried again after RETRY_S, not only after some other
    metadata change (in a quiet cluster there is none: the partition stayed away
    from its preferred leader for good)."""
    store = FakeStore()
    cluster(store, [[2, 1, 3]], [PartitionState(1, 5, [2, 1, 3])])
    member = FakeMember(store)
    member.catch_up()
    failures: list[int] = []

    def etcd_times_out(compares: Sequence[Compare]) -> None:
        if not failures:
            failures.append(store.revision)
            raise StoreUnavailableError("no etcd endpoint answered")

    store.before_txn = etcd_times_out
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_controller, member)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(PREFERRED_LEADER_DELAY_S)
        await trio.testing.wait_all_tasks_blocked()
        assert failures and store.state(P0).leader == 1  # the write failed
        mock_clock.jump(RETRY_S)
        await trio.testing.wait_all_tasks_blocked()
        assert store.state(P0) == PartitionState(2, 6, [2, 1, 3])
        nursery.cancel_scope.cancel()
