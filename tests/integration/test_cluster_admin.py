"""Administering a cluster of three brokers: racks in the metadata and in
``cluster describe``; partitions added to a topic, which running producers use
once their metadata is older than ``metadata_max_age_ms``."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker_cluster import BrokerCluster, broker_cluster_fixture, leaders, metadata, wait_until
from etcd_process import EtcdProcess, etcd_server_fixture
from test_cli_commands import clean_env, cli_prefix

from broker.testing import BrokerProcess
from client.partitioner import partition_for_key
from client.sync import Admin, Consumer, Producer
from client.types import TopicPartition

__all__ = ["broker_cluster_fixture", "etcd_server_fixture"]

TOPIC = "orders"

RACKS = {1: "rack-a", 2: "rack-b"}  # broker 3 has no rack


@pytest.fixture(name="racked_cluster")
def racked_cluster_fixture(etcd_server: EtcdProcess, tmp_path: Path) -> Iterator[BrokerCluster]:
    """Three brokers, 1 and 2 started with --rack, 3 without."""
    cluster = BrokerCluster(etcd_server, tmp_path)
    cluster.extra_args = {node: ["--rack", rack] for node, rack in RACKS.items()}
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_metadata_and_cluster_describe_show_each_brokers_rack(
    racked_cluster: BrokerCluster,
) -> None:
    """Proves every broker's Metadata answer carries each live broker's rack (None
    for one started without), and `cluster describe` shows it in its table and JSON."""
    for broker in racked_cluster.brokers:
        racks = {b.node_id: b.rack for b in metadata(broker).brokers}
        assert racks == {1: "rack-a", 2: "rack-b", 3: None}
    argv = [*cli_prefix(), "cluster", "describe", "--bootstrap", racked_cluster.broker(3).address]
    run = subprocess.run([*argv, "--json"], capture_output=True, env=clean_env(), timeout=60)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert {b["node_id"]: b["rack"] for b in summary["brokers"]} == {
        1: "rack-a",
        2: "rack-b",
        3: None,
    }
    plain = subprocess.run(argv, capture_output=True, env=clean_env(), timeout=60)
    assert plain.returncode == 0, plain.stderr
    header, *rows = plain.stdout.decode().splitlines()[1:]
    assert header.split()[2] == "rack"
    assert {row.split()[0]: row.split()[2] for row in rows} == {
        "1": "rack-a",
        "2": "rack-b",
        "3": "-",
    }


def test_a_single_node_reports_its_configured_rack(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    """Proves a broker without --cluster lists itself with the rack it was started with."""
    broker = broker_factory(args=["--rack", "zone-1"])
    assert [(b.node_id, b.rack) for b in metadata(broker).brokers] == [(0, "zone-1")]


def wait_served(cluster: BrokerCluster, topic: str, partitions: int, timeout_s: float) -> None:
    """Wait until every broker's Metadata lists ``partitions`` partitions of ``topic``,
    each with a leader."""

    def served() -> bool:
        for broker in cluster.brokers:
            found = leaders(metadata(broker), topic)
            if found is None or len(found) != partitions:
                return False
            if any(leader < 0 for leader, _ in found.values()):
                return False
        return True

    wait_until(served, timeout_s, f"{partitions} partitions of {topic} on every broker")


def test_added_partitions_are_served_by_every_broker(broker_cluster: BrokerCluster) -> None:
    """Proves `topics add-partitions` through one broker of a cluster grows the topic
    on every broker within a second, the new partitions' leaders spread over the
    brokers, and the SDK produces to and consumes from them; shrinking is refused."""
    bootstrap = broker_cluster.broker(1).address
    with Admin(bootstrap) as admin:
        admin.create_topic(TOPIC, 3)
    wait_served(broker_cluster, TOPIC, 3, 5.0)
    argv = [*cli_prefix(), "topics", "add-partitions", TOPIC, "--partitions", "9"]
    run = subprocess.run(
        [*argv, "--bootstrap", broker_cluster.broker(3).address],
        capture_output=True,
        env=clean_env(),
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    wait_served(broker_cluster, TOPIC, 9, 1.0)
    found = leaders(metadata(broker_cluster.broker(2)), TOPIC)
    assert found is not None
    assert {found[p][0] for p in range(3, 9)} == {1, 2, 3}
    with Producer(bootstrap) as producer:
        for partition in range(3, 9):
            producer.send(TOPIC, f"new-{partition}".encode(), partition=partition)
    with Consumer(broker_cluster.broker(2).address, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(TOPIC, p) for p in range(3, 9)])
        got: dict[int, list[bytes]] = {}
        deadline = time.monotonic() + 20
        while sum(map(len, got.values())) < 6 and time.monotonic() < deadline:
            for tp, records in consumer.getmany(timeout_ms=500).items():
                got.setdefault(tp.partition, []).extend(bytes(r.value) for r in records)
    assert got == {p: [f"new-{p}".encode()] for p in range(3, 9)}
    refused = subprocess.run(
        [*argv[:-1], "4", "--bootstrap", bootstrap],
        capture_output=True,
        env=clean_env(),
        timeout=60,
    )
    assert refused.returncode == 1 and b"cannot be removed" in refused.stderr
    assert len(leaders(metadata(broker_cluster.broker(1)), TOPIC) or {}) == 9


def test_a_running_producer_spreads_over_added_partitions_without_an_error(
    broker_cluster: BrokerCluster,
) -> None:
    """Proves a producer with a small metadata_max_age_ms, running before partitions
    are added, sends keyless records to the new partitions too and keyed records to
    crc32c(key) % the new count, every send acknowledged (no error made it refresh)."""
    bootstrap = broker_cluster.broker(1).address
    with Admin(bootstrap) as admin:
        admin.create_topic(TOPIC, 2)
    wait_served(broker_cluster, TOPIC, 2, 5.0)
    with Producer(bootstrap, metadata_max_age_ms=200, linger_ms=0) as producer:
        assert producer.send(TOPIC, b"before").partition in (0, 1)
        with Admin(broker_cluster.broker(2).address) as admin:
            admin.create_partitions(TOPIC, 4)
        wait_served(broker_cluster, TOPIC, 4, 5.0)
        seen: set[int] = set()
        deadline = time.monotonic() + 20
        while seen != {0, 1, 2, 3} and time.monotonic() < deadline:
            seen.add(producer.send(TOPIC, b"keyless").partition)
        assert seen == {0, 1, 2, 3}
        for number in range(20):
            key = f"key-{number}".encode()
            assert producer.send(TOPIC, b"keyed", key=key).partition == partition_for_key(key, 4)
