"""What the controller remembers between rounds (which brokers came back), the
partitions whose leader registered after their state was written, and how it
labels the elections it counts."""

from __future__ import annotations

from broker.cluster.controller import ControllerMemory, election_label, registered_after_state
from broker.cluster.placement import elect_leaders
from broker.cluster.schema import NO_LEADER, BrokerRegistration, PartitionState, TopicAssignment
from broker.cluster.snapshot import ClusterMetadata
from broker.replication.election import ElectionKind


def metadata(epochs: dict[int, tuple[int, bool]]) -> ClusterMetadata:
    found = ClusterMetadata()
    for node, (epoch, clean) in epochs.items():
        found.brokers[node] = BrokerRegistration(node, "127.0.0.1", 9000 + node, None, clean)
        found.broker_epochs[node] = epoch
    return found


def test_a_new_registration_is_a_restart_with_its_shutdown_kind() -> None:
    """Proves a broker with a new broker epoch, or back after being gone, counts as
    restarted (with whether it shut down cleanly), and one seen before does not."""
    memory = ControllerMemory({1: 10, 2: 11})
    now = metadata({1: (10, True), 2: (15, False), 3: (16, True)})
    assert memory.restarted(now) == {2: False, 3: True}
    memory.broker_epochs = dict(now.broker_epochs)
    assert memory.restarted(now) == {}


def test_election_labels_tell_isr_from_elr_leaders() -> None:
    """Proves each kind of written election gets its metrics label (a clean election
    of a replica outside the old ISR is one from the ELR), and a decision electing
    nobody gets none."""
    before = PartitionState(1, 4, [1], elr=[2])
    assert election_label(ElectionKind.CLEAN, before, PartitionState(1, 5, [1])) == "clean"
    assert election_label(ElectionKind.CLEAN, before, PartitionState(2, 5, [2])) == "elr"
    assert election_label(ElectionKind.UNCLEAN, before, PartitionState(3, 5, [3])) == "unclean"
    recovered = election_label(ElectionKind.RECOVERY, before, PartitionState(2, 5, [2]))
    assert recovered == "unclean_recovery"
    offline = PartitionState(NO_LEADER, 5, [1], elr=[2])
    assert election_label(ElectionKind.NONE, before, offline) is None


def test_replicas_registered_after_their_partition_state_are_found() -> None:
    """Proves the replicas whose registration is newer than their partition's state
    are found with the registration's clean flag, older ones and unregistered ones
    are not."""
    found = metadata({1: (50, False), 2: (10, True), 3: (60, True)})
    found.topics = {"t": TopicAssignment(replicas=[[1, 2, 3], [2, 3, 4]])}
    found.states = {("t", 0): PartitionState(1, 3, [1, 2, 3]), ("t", 1): PartitionState(2, 3, [2])}
    found.state_versions = {("t", 0): 40, ("t", 1): 55}
    assert registered_after_state(found) == {("t", 0): {1: False, 3: True}, ("t", 1): {3: True}}


def test_stale_leaders_are_re_elected_after_a_whole_cluster_restart() -> None:
    """Proves the controller decision after brokers restarted unseen (a new
    controller remembers no restart): a leader back from an unclean shutdown hands
    the partition to an ISR member that is not stale, a clean one leads again,
    each in a new epoch, an unclean follower leaves the ISR, and once written the
    states are stable."""
    found = metadata({1: (50, False), 2: (51, True), 3: (30, True), 4: (52, False)})
    topics = {"t": TopicAssignment(replicas=[[1, 2, 3], [2, 4, 3]])}
    found.topics = topics
    found.states = {
        ("t", 0): PartitionState(1, 4, [1, 2, 3]),
        ("t", 1): PartitionState(2, 7, [2, 4, 3]),
    }
    found.state_versions = {("t", 0): 40, ("t", 1): 41}
    memory = ControllerMemory(found.broker_epochs)
    changes = elect_leaders(
        topics, found.states, found.live(), memory.restarted(found), None,
        registered_after_state(found),
    )  # fmt: skip
    assert changes[("t", 0)].state == PartitionState(3, 5, [3])
    assert changes[("t", 1)].state == PartitionState(2, 8, [2, 3])
    found.states = {key: decision.state for key, decision in changes.items()}
    found.state_versions = {("t", 0): 60, ("t", 1): 61}
    assert registered_after_state(found) == {}
    assert elect_leaders(topics, found.states, found.live(), {}, None, {}) == {}
