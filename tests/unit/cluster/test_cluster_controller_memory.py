"""What the controller remembers between rounds (which brokers came back), and how
it labels the elections it counts."""

from __future__ import annotations

from broker.cluster.controller import ControllerMemory, election_label
from broker.cluster.schema import NO_LEADER, BrokerRegistration, PartitionState
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
