"""What the controller remembers between rounds: which brokers came back."""

from __future__ import annotations

from broker.cluster.controller import ControllerMemory
from broker.cluster.schema import BrokerRegistration
from broker.cluster.snapshot import ClusterMetadata


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
