"""Dead-process detection: refused probes counted per registration, who probes
whom (the controller every broker, the others the controller), and the probe's
reading of a real socket."""

from __future__ import annotations

import socket

from broker.cluster.liveness import (
    ProbeOutcome,
    RefusalTally,
    controller_target,
    liveness_targets,
    probe,
    probe_targets,
)
from broker.cluster.schema import BrokerRegistration, controller_key
from broker.cluster.snapshot import ClusterMetadata, Controller

REFUSED = ProbeOutcome.REFUSED
ACCEPTED = ProbeOutcome.ACCEPTED
NO_ANSWER = ProbeOutcome.NO_ANSWER


def test_two_refusals_in_a_row_revoke() -> None:
    """Proves the second refused probe in a row of one registration says revoke,
    the first does not, and the count starts again after it."""
    tally = RefusalTally(own_node_id=1, refusals_to_revoke=2)
    assert not tally.record(2, 0x20, REFUSED)
    tally.check_invariants()
    assert tally.refusals(2) == 1
    assert tally.record(2, 0x20, REFUSED)
    tally.check_invariants()
    assert tally.refusals(2) == 0
    assert not tally.record(2, 0x20, REFUSED)


def test_an_accepted_or_unanswered_probe_resets_the_count() -> None:
    """Proves a success or a timeout between refusals is not evidence: the refusals
    must be in a row (a paused or partitioned broker is left to its lease)."""
    for interruption in (ACCEPTED, NO_ANSWER):
        tally = RefusalTally(own_node_id=1, refusals_to_revoke=2)
        assert not tally.record(2, 0x20, REFUSED)
        assert not tally.record(2, 0x20, interruption)
        assert tally.refusals(2) == 0
        assert not tally.record(2, 0x20, REFUSED)
        tally.check_invariants()
    tally = RefusalTally(own_node_id=1, refusals_to_revoke=2)
    for _ in range(10):
        assert not tally.record(2, 0x20, NO_ANSWER)
    assert tally.refusals(2) == 0


def test_own_node_and_unknown_leases_are_ignored() -> None:
    """Proves the controller never revokes its own lease, nor acts for a node
    without a known lease."""
    tally = RefusalTally(own_node_id=1, refusals_to_revoke=2)
    for _ in range(3):
        assert not tally.record(1, 0x10, REFUSED)
        assert not tally.record(3, 0, REFUSED)
    assert tally.refusals(1) == 0
    assert tally.refusals(3) == 0
    tally.check_invariants()


def test_a_new_registration_or_a_gone_one_starts_from_zero() -> None:
    """Proves a refusal counted for a previous lease of a node does not add to its
    new registration's, and a node no longer registered is forgotten."""
    tally = RefusalTally(own_node_id=1, refusals_to_revoke=2)
    assert not tally.record(2, 0x20, REFUSED)
    assert not tally.record(2, 0x21, REFUSED)  # registered again meanwhile
    assert tally.refusals(2) == 1
    assert not tally.record(3, 0x30, REFUSED)
    tally.forget_gone({2: 0x21})
    assert tally.refusals(3) == 0
    assert tally.refusals(2) == 1
    tally.forget_gone({})
    assert tally.refusals(2) == 0
    tally.check_invariants()


def test_probe_targets_are_the_other_registered_brokers() -> None:
    """Proves the controller probes every other broker at its advertised address,
    with the lease of its registration, and not itself."""
    metadata = ClusterMetadata()
    for node in (1, 2, 3):
        metadata.brokers[node] = BrokerRegistration(node, f"127.0.0.{node + 1}", 9000 + node, None)
        metadata.broker_leases[node] = 0x10 * node
    assert probe_targets(metadata, 1) == {
        2: ("127.0.0.3", 9002, 0x20),
        3: ("127.0.0.4", 9003, 0x30),
    }


def test_other_brokers_probe_the_controller_alone() -> None:
    """Proves a member that is not the controller probes the controller only (at
    its advertised address, with the lease its election key names), the controller
    itself probes every other broker, and nobody probes a controller whose
    registration is not held by its election key's lease, or itself."""
    metadata = ClusterMetadata()
    for node in (1, 2, 3):
        metadata.brokers[node] = BrokerRegistration(node, f"127.0.0.{node + 1}", 9000 + node, None)
        metadata.broker_leases[node] = 0x10 * node
    metadata.controller = Controller(2, controller_key(0x20), 7)
    assert controller_target(metadata, 1) == {2: ("127.0.0.3", 9002, 0x20)}
    assert liveness_targets(metadata, 3, is_controller=False) == {2: ("127.0.0.3", 9002, 0x20)}
    assert liveness_targets(metadata, 2, is_controller=True) == probe_targets(metadata, 2)
    assert controller_target(metadata, 2) == {}
    metadata.broker_leases[2] = 0x21  # registered again: the key is the old lease's
    assert controller_target(metadata, 1) == {}
    del metadata.brokers[2]
    assert controller_target(metadata, 1) == {}
    metadata.controller = None
    assert controller_target(metadata, 1) == {}


async def test_probe_reads_a_listener_and_a_closed_port() -> None:
    """Proves the probe says accepted for a listening port (bound to the given
    local host) and refused once nothing listens there."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        assert await probe("127.0.0.1", port, "127.0.0.2") is ACCEPTED
        accepted, peer = listener.accept()
        accepted.close()
        assert peer[0] == "127.0.0.2"
    finally:
        listener.close()
    assert await probe("127.0.0.1", port, None) is REFUSED
