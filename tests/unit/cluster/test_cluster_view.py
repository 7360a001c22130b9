"""The cluster member's metadata view, its decoding of the store's keys, and the
controller's fenced writes (against the local store, which keeps etcd's model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.cluster.cluster_view import ClusterMetadataView
from broker.cluster.controller import ControllerFencedError, write_state
from broker.cluster.local_store import open_local_store
from broker.cluster.schema import (
    BrokerRegistration,
    ControllerCandidate,
    PartitionState,
    TopicAssignment,
    broker_key,
    controller_key,
    encode,
    state_key,
    topic_key,
)
from broker.cluster.snapshot import decode_metadata
from broker.cluster.store import KeyValue, VersionConflictError
from broker.metadata_view import PartitionLeadership
from broker.storage.config import LogConfig
from broker.topics import TopicManager


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_view(tmp_path: Path, clock: Clock) -> ClusterMetadataView:
    topics = TopicManager(tmp_path, LogConfig(), lambda: 0, 16)
    return ClusterMetadataView(2, topics, clock)


def test_leads_only_what_the_metadata_says_and_only_while_the_lease_holds(
    tmp_path: Path,
) -> None:
    """Proves the view leads the partitions whose leader is this node, none of the
    others, and none at all once the lease validity has passed (self-fencing)."""
    clock = Clock()
    view = make_view(tmp_path, clock)
    brokers = {
        1: BrokerRegistration(1, "127.0.0.1", 9001, "rack-a"),
        2: BrokerRegistration(2, "127.0.0.1", 9002),
    }
    leaderships = {
        ("t", 0): PartitionLeadership(2, 3, (2,), (2,)),
        ("t", 1): PartitionLeadership(1, 0, (1,), (1,)),
    }
    view.update(brokers, 1, frozenset({"t"}), leaderships)
    view.lease_valid_until = clock.now + 2.5
    view.check_invariants()
    assert view.leads("t", 0) and not view.leads("t", 1) and not view.leads("t", 2)
    assert view.leadership("t", 1) == leaderships[("t", 1)]
    assert view.leadership("t", 5) is None
    assert [(b.node_id, b.rack) for b in view.brokers()] == [(1, "rack-a"), (2, None)]
    assert view.controller_id() == 1
    clock.now += 2.5
    assert view.is_fenced() and not view.leads("t", 0)


def test_a_fenced_view_still_serves_reads_of_what_it_led(tmp_path: Path) -> None:
    """Proves that once the lease has passed the view leads nothing but still serves
    reads of the partitions it led, and never of those another broker leads."""
    clock = Clock()
    view = make_view(tmp_path, clock)
    brokers = {n: BrokerRegistration(n, "127.0.0.1", 9000 + n) for n in (1, 2)}
    leaderships = {
        ("t", 0): PartitionLeadership(2, 3, (2,), (2,)),
        ("t", 1): PartitionLeadership(1, 0, (1,), (1,)),
    }
    view.update(brokers, 1, frozenset({"t"}), leaderships)
    view.lease_valid_until = clock.now + 1.0
    assert view.serves_reads("t", 0) and not view.serves_reads("t", 1)
    clock.now += 5.0
    assert view.is_fenced() and not view.leads("t", 0)
    assert view.serves_reads("t", 0)
    assert not view.serves_reads("t", 1) and not view.serves_reads("t", 2)


def test_decode_metadata_picks_the_oldest_candidate_and_skips_bad_values() -> None:
    """Proves the controller is the candidate with the lowest create_revision (its
    epoch), and a value that does not decode is reported, not fatal."""
    items = {
        broker_key(1): KeyValue(broker_key(1), encode(BrokerRegistration(1, "h", 1)), 3, 3),
        controller_key(0xB): KeyValue(controller_key(0xB), encode(ControllerCandidate(2)), 7, 7),
        controller_key(0xA): KeyValue(controller_key(0xA), encode(ControllerCandidate(1)), 4, 4),
        topic_key("t"): KeyValue(topic_key("t"), encode(TopicAssignment([[1]])), 5, 5),
        state_key("t", 0): KeyValue(state_key("t", 0), encode(PartitionState(1, 0, [1])), 5, 9),
        state_key("t", 1): KeyValue(state_key("t", 1), b"\xc1", 5, 5),
    }
    found = decode_metadata(items)
    assert found.controller is not None
    assert (found.controller.node_id, found.controller.epoch) == (1, 4)
    assert found.state_versions == {("t", 0): 9}
    assert found.live() == frozenset({1})
    assert len(found.problems) == 1 and "topics/t/partitions/1/state" in found.problems[0]


async def test_a_controller_whose_lease_expired_cannot_write(tmp_path: Path) -> None:
    """Proves a controller write succeeds while its election key lives, and is refused
    (ControllerFencedError) once its lease is gone, even with the right state version."""
    async with open_local_store(tmp_path / "metadata.json") as store:
        lease = await store.grant_lease(3)
        key = controller_key(lease.lease_id)
        epoch = await store.put(key, encode(ControllerCandidate(1)), lease=lease.lease_id)
        version = await store.put(state_key("t", 0), encode(PartitionState(1, 0, [1])))
        controller = decode_metadata(
            {key: KeyValue(key, encode(ControllerCandidate(1)), epoch, epoch)}
        ).controller
        assert controller is not None
        version = await write_state(store, controller, "t", 0, PartitionState(-1, 1, [1]), version)
        with pytest.raises(VersionConflictError):
            await write_state(store, controller, "t", 0, PartitionState(1, 2, [1]), version - 1)
        await store.revoke_lease(lease.lease_id)
        with pytest.raises(ControllerFencedError):
            await write_state(store, controller, "t", 0, PartitionState(1, 2, [1]), version)
        item = await store.get(state_key("t", 0))
        assert item is not None and item.mod_revision == version
