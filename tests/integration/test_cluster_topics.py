"""A cluster of three brokers over etcd: topics created through one broker are
served by all, partitions spread over every broker, produce and fetch only on
the leader."""

from __future__ import annotations

import time
from pathlib import Path

from broker_cluster import (
    BrokerCluster,
    broker_cluster_fixture,
    leaders,
    leads,
    metadata,
    wait_until,
)
from conftest import RawClient
from etcd_process import etcd_server_fixture

from client.errors import ErrorCode
from client.protocol.messages import (
    CreatableTopic,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
)
from client.records.builder import build_batch
from client.sync import Consumer, Producer

__all__ = ["broker_cluster_fixture", "etcd_server_fixture"]

TOPIC = "orders"


def test_topic_is_described_identically_by_every_broker(broker_cluster: BrokerCluster) -> None:
    """Proves a topic created through one broker is served by all three, with the
    same leaders, epochs and brokers list, its leaders spread over every broker."""
    client = RawClient(broker_cluster.broker(1).address)
    try:
        created = client.create_topic(TOPIC, 6)
    finally:
        client.close()
    assert created.topics[0].error_code == 0, created

    def described() -> list[dict[int, tuple[int, int]]] | None:
        found = [leaders(metadata(broker), TOPIC) for broker in broker_cluster.brokers]
        if any(f is None or len(f) < 6 for f in found):
            return None
        return found  # type: ignore[return-value]

    views = wait_until(described, 1.0, "topic visible on every broker")
    assert views[0] == views[1] == views[2]
    assert len(views[0]) == 6
    assert {leader for leader, _ in views[0].values()} == {1, 2, 3}
    answers = [metadata(broker) for broker in broker_cluster.brokers]
    assert {a.controller_id for a in answers} in ({1}, {2}, {3})
    for answer in answers:
        assert sorted(b.node_id for b in answer.brokers) == [1, 2, 3]
        assert {b.host for b in answer.brokers} == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}


def create(cluster: BrokerCluster, topic: str, partitions: int, node_id: int = 1) -> None:
    """Create ``topic`` through broker ``node_id`` and wait until every broker serves
    all its partitions."""
    client = RawClient(cluster.broker(node_id).address)
    try:
        created = client.create_topic(topic, partitions)
    finally:
        client.close()
    assert created.topics[0].error_code == 0, created

    def served() -> bool:
        for broker in cluster.brokers:
            found = leaders(metadata(broker), topic)
            if found is None or len(found) < partitions:
                return False
        return all(
            leads(cluster.broker(leader), topic, partition)
            for partition, (leader, _) in found.items()
        )

    wait_until(served, 5.0, "topic served by every broker")


def test_sdk_produces_to_and_consumes_from_every_partition(broker_cluster: BrokerCluster) -> None:
    """Proves the SDK, bootstrapped from one broker, produces to and consumes from the
    six partitions led by three brokers."""
    create(broker_cluster, TOPIC, 6)
    bootstrap = broker_cluster.broker(2).address
    with Producer(bootstrap) as producer:
        for partition in range(6):
            for index in range(3):
                producer.send(TOPIC, f"p{partition}-{index}".encode(), partition=partition)
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TOPIC])
        got: dict[int, list[bytes]] = {}
        deadline = time.monotonic() + 20
        while sum(len(v) for v in got.values()) < 18 and time.monotonic() < deadline:
            for tp, records in consumer.getmany(timeout_ms=500).items():
                got.setdefault(tp.partition, []).extend(bytes(r.value) for r in records)
    assert got == {p: [f"p{p}-{i}".encode() for i in range(3)] for p in range(6)}


def test_produce_to_a_non_leader_is_refused(broker_cluster: BrokerCluster) -> None:
    """Proves a broker answers NOT_LEADER for a partition another broker leads, and
    appends for one it leads."""
    create(broker_cluster, TOPIC, 6)
    found = leaders(metadata(broker_cluster.broker(1)), TOPIC)
    assert found is not None
    led_by_1 = next(p for p, (leader, _) in found.items() if leader == 1)
    led_by_other = next(p for p, (leader, _) in found.items() if leader != 1)
    client = RawClient(broker_cluster.broker(1).address)
    try:
        response = client.produce(TOPIC, {led_by_other: [batch()], led_by_1: [batch()]})
    finally:
        client.close()
    assert response is not None
    codes = {p.partition: p.error_code for p in response.topics[0].partitions}
    assert codes == {led_by_other: int(ErrorCode.NOT_LEADER), led_by_1: 0}


def test_replication_factor_above_live_brokers_is_refused(broker_cluster: BrokerCluster) -> None:
    """Proves a topic with more replicas than live brokers is refused with
    INVALID_REPLICATION_FACTOR and is not created."""
    client = RawClient(broker_cluster.broker(3).address)
    try:
        body = client.call(CreateTopicsRequest([CreatableTopic("wide", 2, 4)])).body
    finally:
        client.close()
    assert isinstance(body, CreateTopicsResponse)
    assert body.topics[0].error_code == int(ErrorCode.INVALID_REPLICATION_FACTOR)
    assert "4" in body.topics[0].error_message and "3 are live" in body.topics[0].error_message
    assert leaders(metadata(broker_cluster.broker(1)), "wide") is None


def test_deleted_topic_disappears_from_every_broker(broker_cluster: BrokerCluster) -> None:
    """Proves a topic deleted through one broker is gone from every broker."""
    create(broker_cluster, TOPIC, 3)
    client = RawClient(broker_cluster.broker(2).address)
    try:
        body = client.call(DeleteTopicsRequest([TOPIC])).body
    finally:
        client.close()
    assert isinstance(body, DeleteTopicsResponse) and body.topics[0].error_code == 0, body

    def gone() -> bool:
        return all(leaders(metadata(b), TOPIC) is None for b in broker_cluster.brokers)

    wait_until(gone, 5.0, "topic gone from every broker")


def batch() -> bytearray:
    return build_batch([b"record"])


def test_topic_recreated_while_a_broker_was_down_starts_empty_there(
    broker_cluster: BrokerCluster,
) -> None:
    """Proves a broker that was down while a topic was deleted and created again
    under the same name drops its logs of the old topic instead of serving them."""
    create(broker_cluster, TOPIC, 3)
    member = broker_cluster.broker(3)
    found = leaders(metadata(member), TOPIC)
    assert found is not None
    led = next(p for p, (leader, _) in found.items() if leader == 3)
    client = RawClient(member.address)
    try:
        response = client.produce(TOPIC, {led: [batch()]})
        assert response is not None and response.topics[0].partitions[0].error_code == 0
        assert client.describe(TOPIC).topics[0].partitions[led].log_end_offset == 1
    finally:
        client.close()
    member.stop()
    client = RawClient(broker_cluster.broker(1).address)
    try:
        body = client.call(DeleteTopicsRequest([TOPIC])).body
        assert isinstance(body, DeleteTopicsResponse) and body.topics[0].error_code == 0
        assert client.create_topic(TOPIC, 3).topics[0].error_code == 0
    finally:
        client.close()
    member.start()

    def log_ends() -> list[int] | None:
        client = RawClient(member.address)
        try:
            described = client.describe(TOPIC).topics[0]
        finally:
            client.close()
        if described.error_code != 0 or len(described.partitions) < 3:
            return None
        return [p.log_end_offset for p in described.partitions]

    assert wait_until(log_ends, 5.0, "the recreated topic on the restarted broker") == [0, 0, 0]


def test_a_broker_registers_its_advertised_address(
    broker_cluster: BrokerCluster, tmp_path: Path
) -> None:
    """Proves a member started with --advertise is listed in Metadata, on every
    broker, under that address rather than its listen address."""
    fourth = broker_cluster.new_broker(4, "127.0.0.5", tmp_path / "fourth")
    fourth.extra_args += ["--advertise", "broker4.example:19392", "--rack", "r2"]
    fourth.start()
    try:

        def listed() -> bool:
            for broker in broker_cluster.brokers:
                found = {b.node_id: (b.host, b.port) for b in metadata(broker).brokers}
                if found.get(4) != ("broker4.example", 19392):
                    return False
            return True

        wait_until(listed, 5.0, "the fourth broker listed under its advertised address")
    finally:
        fourth.stop()
