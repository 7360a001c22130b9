"""Dead-process detection on three real brokers: a SIGKILLed broker's lease is
revoked by the controller (its port refuses connections), a SIGKILLed
controller's by another broker, while
a SIGSTOPped one (its port still accepts) is left to its lease, registers again
after resuming, and acknowledges nothing it no longer leads."""

from __future__ import annotations

import base64
import signal
from typing import Any, Final

from broker_cluster import (
    PREFIX,
    BrokerCluster,
    broker_cluster_fixture,
    call,
    leaders,
    metadata,
    wait_until,
)
from conftest import RawClient
from etcd_process import etcd_server_fixture

from broker.cluster.member import LEASE_TTL_S
from broker.cluster.schema import broker_key
from broker.testing import BrokerProcess
from client.protocol.messages import Acks, CreatableTopic, CreateTopicsRequest, CreateTopicsResponse
from client.records.builder import build_batch

__all__ = ["broker_cluster_fixture", "etcd_server_fixture"]

TOPIC: Final = "probed"
PARTITIONS: Final = 3
REVOKED: Final = "broker process gone: lease revoked"
# Generous bounds for a busy machine: these wait for states, they do not time them.
SERVED_S: Final = 20.0
FAILOVER_S: Final = LEASE_TTL_S + 10.0


def create(cluster: BrokerCluster) -> dict[int, tuple[int, int]]:
    """TOPIC with PARTITIONS partitions of three replicas, once every broker serves
    it with a leader for each; ``{partition: (leader, epoch)}``."""
    request = CreateTopicsRequest([CreatableTopic(TOPIC, PARTITIONS, 3, {})])
    body = call(cluster.broker(1), request)
    assert isinstance(body, CreateTopicsResponse) and body.topics[0].error_code == 0, body

    def served() -> dict[int, tuple[int, int]] | None:
        found = [leaders(metadata(broker), TOPIC) for broker in cluster.brokers]
        first = found[0]
        if first is None or len(first) < PARTITIONS or any(f != first for f in found):
            return None
        return first if all(leader != -1 for leader, _ in first.values()) else None

    return wait_until(served, SERVED_S, "topic served by every broker")


def controller_and_victim(
    cluster: BrokerCluster, led: dict[int, tuple[int, int]]
) -> tuple[int, int]:
    """The controller's node id and a broker other than it that leads a partition."""

    def agreed() -> int | None:
        ids = {metadata(broker).controller_id for broker in cluster.brokers}
        return ids.pop() if len(ids) == 1 and -1 not in ids else None

    controller = wait_until(agreed, SERVED_S, "one controller")
    victims = sorted({leader for leader, _ in led.values()} - {controller})
    assert victims, (controller, led)
    return controller, victims[0]


def revocations(broker: BrokerProcess, node: int) -> list[dict[str, Any]]:
    return [e for e in broker.log_events() if e.get("event") == REVOKED and e.get("node") == node]


def registered(observer: BrokerProcess) -> list[int]:
    return sorted(b.node_id for b in metadata(observer).brokers)


def test_a_killed_broker_is_revoked_by_the_controller(broker_cluster: BrokerCluster) -> None:
    """Proves the controller revokes the lease of a SIGKILLed broker that led a
    partition (it logs so for that node), the registration disappears, and its
    partitions get new leaders."""
    before = create(broker_cluster)
    controller_id, victim_id = controller_and_victim(broker_cluster, before)
    controller = broker_cluster.broker(controller_id)
    assert not revocations(controller, victim_id)
    broker_cluster.broker(victim_id).kill()
    wait_until(lambda: victim_id not in registered(controller), FAILOVER_S, "victim gone")
    wait_until(lambda: revocations(controller, victim_id), FAILOVER_S, "revocation logged")
    own = [p for p, (leader, _) in before.items() if leader == victim_id]

    def moved() -> bool:
        found = leaders(metadata(controller), TOPIC)
        return found is not None and all(found[p][0] not in (-1, victim_id) for p in own)

    wait_until(moved, FAILOVER_S, "the killed broker's partitions led elsewhere")


def test_a_killed_controller_is_revoked_by_another_broker(broker_cluster: BrokerCluster) -> None:
    """Proves a SIGKILLed controller's lease is revoked by a broker probing it (it
    logs so for that node, as the controller's prober), so another broker becomes
    controller and the dead one's partitions get new leaders without waiting for
    its lease to expire."""
    before = create(broker_cluster)
    controller_id, _ = controller_and_victim(broker_cluster, before)
    survivors = [broker_cluster.broker(n) for n in (1, 2, 3) if n != controller_id]
    broker_cluster.broker(controller_id).kill()

    def revoked_by_a_survivor() -> bool:
        return any(
            e.get("controller") is True for b in survivors for e in revocations(b, controller_id)
        )

    wait_until(revoked_by_a_survivor, FAILOVER_S, "the controller's lease revoked")
    observer = survivors[0]

    def new_controller() -> bool:
        found = metadata(observer).controller_id
        return found not in (-1, controller_id)

    wait_until(new_controller, FAILOVER_S, "another controller")
    own = [p for p, (leader, _) in before.items() if leader == controller_id]

    def moved() -> bool:
        found = leaders(metadata(observer), TOPIC)
        return found is not None and all(found[p][0] not in (-1, controller_id) for p in own)

    wait_until(moved, FAILOVER_S, "the dead controller's partitions led elsewhere")


def test_a_paused_broker_is_left_to_its_lease(broker_cluster: BrokerCluster) -> None:
    """Proves a SIGSTOPped broker is not revoked by the probe (it leaves when its
    lease expires), refuses a write to its old partition once resumed, and
    registers again through the lease-lost path."""
    before = create(broker_cluster)
    controller_id, victim_id = controller_and_victim(broker_cluster, before)
    controller = broker_cluster.broker(controller_id)
    paused = broker_cluster.broker(victim_id)
    assert paused.process is not None
    own = [p for p, (leader, _) in before.items() if leader == victim_id]

    def moved() -> bool:
        found = leaders(metadata(controller), TOPIC)
        return found is not None and all(found[p][0] not in (-1, victim_id) for p in own)

    paused.process.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: victim_id not in registered(controller), FAILOVER_S, "lease expired")
        wait_until(moved, FAILOVER_S, "the paused broker's partitions led elsewhere")
    finally:
        paused.process.send_signal(signal.SIGCONT)
    assert not revocations(controller, victim_id), controller.logs()
    client = RawClient(paused.address)
    try:
        response = client.produce(TOPIC, {own[0]: [_batch()]}, acks=Acks.ALL)
    finally:
        client.close()
    assert response is not None and response.topics[0].partitions[0].error_code != 0, response
    paused.wait_for_log("registered again", timeout_s=FAILOVER_S)
    wait_until(lambda: victim_id in registered(controller), FAILOVER_S, "registered again")
    assert not revocations(controller, victim_id), controller.logs()


def registration_lease(cluster: BrokerCluster, node_id: int) -> int:
    """The lease of broker ``node_id``'s registration as etcd holds it (0: none)."""
    key = f"{PREFIX}/{broker_key(node_id)}".encode()
    found = cluster.etcd.post("/v3/kv/range", {"key": base64.b64encode(key).decode()})
    assert isinstance(found, dict), found
    kvs = found.get("kvs") or []
    return int(kvs[0].get("lease", 0)) if kvs else 0


def test_a_live_broker_whose_lease_is_revoked_registers_again(
    broker_cluster: BrokerCluster,
) -> None:
    """Proves a running broker whose lease is revoked under it (what the probe does
    to a dead one) learns it from its keepalive and registers again with a new
    lease, as after an expiry."""
    broker = broker_cluster.broker(2)
    lease = wait_until(lambda: registration_lease(broker_cluster, 2), SERVED_S, "registered")
    broker_cluster.etcd.post("/v3/lease/revoke", {"ID": lease})
    broker.wait_for_log("registered again", timeout_s=FAILOVER_S)

    def new_lease() -> int:
        found = registration_lease(broker_cluster, 2)
        return found if found not in (0, lease) else 0

    wait_until(new_lease, FAILOVER_S, "registered with a new lease")
    wait_until(lambda: 2 in registered(broker_cluster.broker(1)), FAILOVER_S, "listed again")


def _batch() -> bytearray:
    return build_batch([b"written to a paused ex-leader"])
