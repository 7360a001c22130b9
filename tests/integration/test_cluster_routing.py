"""Clients routed across a cluster of three brokers: a producer bootstrapped from one
broker writes each record on its partition's leader, a consumer reads every
partition from its leader, a dead first bootstrap address is skipped, and an
idempotent producer rides out a leader's SIGKILL and restart (replication factor 1:
its partitions are offline meanwhile) with every record delivered once, in order."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

import pytest
from broker_cluster import BrokerCluster, broker_cluster_fixture, leaders, metadata, wait_until
from conftest import RawClient
from etcd_process import etcd_server_fixture, free_port

from broker.cluster.member import LEASE_TTL_S
from client.partitioner import partition_for_key
from client.sync import Consumer, Producer, SyncRecordHandle
from client.types import TopicPartition

__all__ = ["broker_cluster_fixture", "etcd_server_fixture"]

pytestmark = pytest.mark.timeout(180)

TOPIC: Final = "orders"
PARTITIONS: Final = 6
# A dead broker's partitions lose their leader within the lease time; one second more.
FAILOVER_S: Final = LEASE_TTL_S + 1.0
# A restarted broker waits for its old registration to expire, then leads again.
RESTART_S: Final = 15.0
CONSUME_S: Final = 30.0


def create(cluster: BrokerCluster) -> dict[int, int]:
    """The 6-partition topic, created through broker 1 and served by all three;
    returns {partition: leader}, leaders spread over the three brokers."""
    client = RawClient(cluster.broker(1).address)
    try:
        assert client.create_topic(TOPIC, PARTITIONS).topics[0].error_code == 0
    finally:
        client.close()

    def served() -> dict[int, tuple[int, int]] | None:
        found = [leaders(metadata(broker), TOPIC) for broker in cluster.brokers]
        if any(f is None or len(f) < PARTITIONS for f in found):
            return None
        return found[0]

    found = wait_until(served, 5.0, "topic served by every broker")
    placement = {partition: leader for partition, (leader, _) in found.items()}
    assert set(placement.values()) == {1, 2, 3}
    return placement


def consume_all(
    bootstrap: str, expected: int, partitions: Iterable[int] = range(PARTITIONS)
) -> dict[int, list[bytes]]:
    """Read ``expected`` records from the start of ``partitions``: {partition: values}."""
    got: dict[int, list[bytes]] = {}
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(TOPIC, p) for p in partitions])
        deadline = time.monotonic() + CONSUME_S
        while sum(map(len, got.values())) < expected and time.monotonic() < deadline:
            for tp, records in consumer.getmany(timeout_ms=500).items():
                got.setdefault(tp.partition, []).extend(bytes(r.value) for r in records)
    return got


def log_ends(cluster: BrokerCluster) -> dict[int, dict[int, int]]:
    """{node id: {partition: log end offset}} from each broker's own DescribeTopics."""
    ends: dict[int, dict[int, int]] = {}
    for node_id, broker in enumerate(cluster.brokers, start=1):
        client = RawClient(broker.address)
        try:
            described = client.describe(TOPIC).topics[0]
        finally:
            client.close()
        ends[node_id] = {p.partition: p.log_end_offset for p in described.partitions}
    return ends


def test_records_land_on_their_partitions_leaders_and_keys_keep_order(
    broker_cluster: BrokerCluster,
) -> None:
    """Proves a producer bootstrapped from one broker of three writes every record on
    its partition's leader (the other brokers' copies stay empty), records of one key
    arrive on crc32c(key) % 6 in the order sent, and a consumer bootstrapped from
    another single broker reads all six partitions from their three leaders."""
    placement = create(broker_cluster)
    keys = [f"customer-{number}".encode() for number in range(12)]
    sent: dict[int, list[bytes]] = {}
    with Producer(broker_cluster.broker(1).address, linger_ms=1) as producer:
        handles = []
        for sequence in range(20):
            for key in keys:
                value = key + b":" + str(sequence).encode()
                handles.append((key, value, producer.enqueue(TOPIC, value, key=key)))
        producer.flush()
        for key, value, handle in handles:
            assert handle.result(30).partition == partition_for_key(key, PARTITIONS)
            sent.setdefault(partition_for_key(key, PARTITIONS), []).append(value)
    ends = log_ends(broker_cluster)
    for partition, leader in placement.items():
        for node_id in (1, 2, 3):
            written = len(sent.get(partition, [])) if node_id == leader else 0
            assert ends[node_id][partition] == written, (partition, node_id)
    got = consume_all(broker_cluster.broker(3).address, 20 * len(keys))
    assert {p: v for p, v in got.items() if v} == sent
    for key in keys:
        mine = [v for v in got[partition_for_key(key, PARTITIONS)] if v.startswith(key + b":")]
        assert mine == [key + b":" + str(sequence).encode() for sequence in range(20)]


def test_a_dead_first_bootstrap_address_is_skipped(broker_cluster: BrokerCluster) -> None:
    """Proves producer and consumer bootstrapped from a list whose first address has
    no broker connect through the next one and reach every partition."""
    create(broker_cluster)
    bootstrap = f"127.0.0.1:{free_port()},{broker_cluster.broker(2).address}"
    with Producer(bootstrap) as producer:
        for partition in range(PARTITIONS):
            producer.send(TOPIC, f"p{partition}".encode(), partition=partition)
    got = consume_all(bootstrap, PARTITIONS)
    assert got == {p: [f"p{p}".encode()] for p in range(PARTITIONS)}


def test_idempotent_producer_delivers_once_in_order_across_a_leader_restart(
    broker_cluster: BrokerCluster,
) -> None:
    """Proves an idempotent producer that keeps sending while the leader of two
    partitions is SIGKILLed (they go offline) and restarted delivers every record:
    each partition holds exactly the records sent to it, once each, in order."""
    placement = create(broker_cluster)
    victim_id = 2
    victim = broker_cluster.broker(victim_id)
    observer = broker_cluster.broker(1)
    own = {p for p, leader in placement.items() if leader == victim_id}
    sent: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    handles: list[SyncRecordHandle] = []
    sequence = 0

    def send_round(producer: Producer, rounds: int) -> None:
        nonlocal sequence
        for _ in range(rounds):
            for partition in range(PARTITIONS):
                value = f"{partition}-{sequence}".encode()
                sent[partition].append(value)
                handles.append(producer.enqueue(TOPIC, value, partition=partition))
            sequence += 1

    with Producer(
        broker_cluster.broker(1).address,
        idempotent=True,
        linger_ms=2,
        delivery_timeout_ms=90_000,
        retry_backoff_max_ms=200,
    ) as producer:
        send_round(producer, 50)
        handles[-1].result(30)
        victim.kill()

        def offline() -> bool:
            found = leaders(metadata(observer), TOPIC)
            return found is not None and all(found[p][0] == -1 for p in own)

        while not offline():  # keep sending while the leader dies
            send_round(producer, 5)
            time.sleep(0.05)
            assert sequence < 10_000, "the killed broker's partitions never went offline"
        send_round(producer, 50)  # to offline partitions too: they wait
        victim.start()

        def back() -> bool:
            found = leaders(metadata(observer), TOPIC)
            return found is not None and all(found[p][0] == victim_id for p in own)

        wait_until(back, RESTART_S, "the restarted broker leading its partitions again")
        send_round(producer, 50)
        producer.flush(120)
        for handle in handles:
            handle.result(30)
    got = consume_all(observer.address, sum(map(len, sent.values())))
    assert got == sent
