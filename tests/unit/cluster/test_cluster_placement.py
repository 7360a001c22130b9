"""Replica placement and leader election, the controller's sans-I/O decisions."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.cluster.placement import (
    LiveBroker,
    broker_order,
    elect_leaders,
    initial_state,
    place_replicas,
)
from broker.cluster.schema import NO_LEADER, PartitionState, TopicAssignment
from client.errors import InvalidReplicationFactorError

THREE = [LiveBroker(3), LiveBroker(1), LiveBroker(2)]


def test_leaders_go_round_robin_over_every_broker() -> None:
    """Proves six partitions over three brokers get two leaders each, and each
    partition's replicas are distinct brokers."""
    replicas = place_replicas(THREE, 6, 2, start=1)
    assert Counter(r[0] for r in replicas) == {1: 2, 2: 2, 3: 2}
    assert all(len(set(r)) == 2 for r in replicas)
    assert replicas[0] == [2, 3]


def test_replication_factor_above_live_brokers_is_refused() -> None:
    """Proves a factor above the live brokers, or below 1, raises the typed error."""
    with pytest.raises(InvalidReplicationFactorError, match="3 are live"):
        place_replicas(THREE, 1, 4, start=0)
    with pytest.raises(InvalidReplicationFactorError):
        place_replicas(THREE, 1, 0, start=0)


def test_racks_alternate_in_the_broker_order() -> None:
    """Proves neighbours in the order are in different racks, so a partition's
    replicas span two racks when two exist."""
    brokers = [LiveBroker(1, "a"), LiveBroker(2, "a"), LiveBroker(3, "b"), LiveBroker(4, "b")]
    assert broker_order(brokers) == [1, 3, 2, 4]
    racks = {1: "a", 2: "a", 3: "b", 4: "b"}
    for replicas in place_replicas(brokers, 8, 2, start=0):
        assert {racks[r] for r in replicas} == {"a", "b"}


@given(
    nodes=st.sets(st.integers(0, 50), min_size=1, max_size=8),
    partitions=st.integers(1, 40),
    data=st.data(),
)
def test_placement_is_balanced(nodes: set[int], partitions: int, data: st.DataObject) -> None:
    """Proves, for any brokers, count and factor: replicas are distinct live brokers,
    and leader counts differ by at most one."""
    factor = data.draw(st.integers(1, len(nodes)))
    start = data.draw(st.integers(0, 100))
    replicas = place_replicas([LiveBroker(n) for n in nodes], partitions, factor, start)
    assert len(replicas) == partitions
    for found in replicas:
        assert len(found) == factor and len(set(found)) == factor and set(found) <= nodes
    counts = Counter(found[0] for found in replicas)
    assert max(counts.values()) - min(counts.get(n, 0) for n in nodes) <= 1


def test_a_dead_leader_is_replaced_by_a_live_isr_member() -> None:
    """Proves the first live ISR member becomes leader with a bumped epoch, and the dead
    leader leaves the ISR."""
    topics = {"t": TopicAssignment(replicas=[[1, 2, 3]])}
    state = PartitionState(leader=1, leader_epoch=4, isr=[1, 2, 3])
    changes = elect_leaders(topics, {("t", 0): state}, frozenset({2, 3}))
    assert changes[("t", 0)].state == PartitionState(2, 5, [2, 3])
    assert elect_leaders(topics, {("t", 0): state}, frozenset({1, 2, 3})) == {}


def test_single_replica_goes_offline_and_comes_back() -> None:
    """Proves a partition with one replica has no leader while that broker is down (it
    waits in the ELR), and is led by it again (epoch bumped each time) once back."""
    topics = {"t": TopicAssignment(replicas=[[2]])}
    offline = elect_leaders(topics, {("t", 0): initial_state([2])}, frozenset({1, 3}))
    assert offline[("t", 0)].state == PartitionState(NO_LEADER, 1, [], elr=[2])
    states = {("t", 0): offline[("t", 0)].state}
    assert elect_leaders(topics, states, frozenset({1, 3})) == {}
    back = elect_leaders(topics, states, frozenset({1, 2, 3}))
    assert back[("t", 0)].state == PartitionState(2, 2, [2])


def test_elect_leaders_lists_only_the_changes() -> None:
    """Proves only partitions led by a dead broker change, and partitions without a
    state yet are left to their creator."""
    topics = {"t": TopicAssignment(replicas=[[1], [2], [3]])}
    states = {("t", 0): initial_state([1]), ("t", 1): initial_state([2])}
    changes = elect_leaders(topics, states, frozenset({1, 3}))
    assert {key: d.state for key, d in changes.items()} == {
        ("t", 1): PartitionState(NO_LEADER, 1, [], elr=[2])
    }
