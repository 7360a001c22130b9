"""The replication metrics of three real brokers over etcd: a paused follower makes
its leader report an under-replicated partition and count an ISR shrink, its return
an expansion; a killed leader makes the controller count a clean election and report
the partitions only the killed broker held as offline.  Scrapes are parsed with
prometheus-client's parser."""

from __future__ import annotations

import http.client
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from broker_cluster import BrokerCluster, call, leaders, leads, metadata, wait_until
from conftest import RawClient
from etcd_process import EtcdProcess, etcd_server_fixture
from prometheus_client.parser import text_string_to_metric_families

from broker.cluster.member import LEASE_TTL_S
from broker.testing import BrokerProcess
from client.protocol.messages import CreatableTopic, CreateTopicsRequest, CreateTopicsResponse
from client.records.builder import build_batch

__all__ = ["etcd_server_fixture"]

pytestmark = pytest.mark.timeout(180)

TOPIC: Final = "replicated"
SOLO: Final = "solo"  # one replica per partition: offline when its broker dies
# Short, so the leader shrinks the ISR well before the paused follower's lease
# (LEASE_TTL_S) expires and the controller would remove it instead.
LAG_TIME_MAX_MS: Final = 500
FAILOVER_S: Final = LEASE_TTL_S + 27.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(name="cluster")
def cluster_fixture(etcd_server: EtcdProcess, tmp_path: Path) -> Iterator[BrokerCluster]:
    """etcd and three brokers that shrink the ISR after LAG_TIME_MAX_MS."""
    cluster = BrokerCluster(
        etcd_server, tmp_path, args=["--replica-lag-time-max-ms", str(LAG_TIME_MAX_MS)]
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def scrape_text(broker: BrokerProcess) -> str:
    """The body of one GET /metrics of ``broker``."""
    address = broker.metrics_address
    assert address is not None, "the broker serves no metrics"
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode()
        assert response.status == 200, (response.status, body)
    finally:
        connection.close()
    return body


def scrape(broker: BrokerProcess) -> Samples:
    """Every sample of one GET /metrics of ``broker``."""
    samples: Samples = {}
    for family in text_string_to_metric_families(scrape_text(broker)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def create(cluster: BrokerCluster, name: str, partitions: int, replication_factor: int) -> None:
    body = call(
        cluster.broker(1),
        CreateTopicsRequest([CreatableTopic(name, partitions, replication_factor, {})]),
    )
    assert isinstance(body, CreateTopicsResponse) and body.topics[0].error_code == 0, body


def in_sync(cluster: BrokerCluster, size: int) -> int | None:
    """TOPIC-0's leader once broker 1 sees its ISR at ``size``, None before."""
    for topic in metadata(cluster.broker(1), [TOPIC]).topics:
        if topic.name == TOPIC and topic.error_code == 0 and topic.partitions:
            partition = topic.partitions[0]
            if len(partition.isr) == size and partition.leader > 0:
                return partition.leader
    return None


def controller(cluster: BrokerCluster, brokers: list[BrokerProcess]) -> BrokerProcess | None:
    """The one of ``brokers`` that reports itself the active controller."""
    found = [b for b in brokers if value(scrape(b), "distributary_active_controller") == 1]
    return found[0] if len(found) == 1 else None


def test_isr_shrink_expansion_and_election_are_exported(cluster: BrokerCluster) -> None:
    """Proves a paused follower's leader reports TOPIC-0 under-replicated (ISR 2 of 3)
    and counts the shrink; once the follower is back, 0 under-replicated and an
    expansion counted, the follower's lag 0 (and promtool finds its scrape clean);
    after the leader is killed, the controller counts a clean election and reports
    the one-replica partitions of the dead broker offline."""
    create(cluster, TOPIC, 1, 3)
    create(cluster, SOLO, 3, 1)
    leader_id = wait_until(lambda: in_sync(cluster, 3), FAILOVER_S, "ISR of 3")
    leader = cluster.broker(leader_id)
    wait_until(lambda: leads(leader, TOPIC, 0), FAILOVER_S, "leadership in place")
    labels = {"topic": TOPIC, "partition": "0"}
    before = scrape(leader)
    assert value(before, "distributary_under_replicated_partitions") == 0
    assert value(before, "distributary_partition_replicas", **labels) == 3
    assert value(before, "distributary_partition_isr_size", **labels) == 3
    shrinks = value(before, "distributary_isr_shrinks_total")
    expands = value(before, "distributary_isr_expands_total")
    assert shrinks is not None and expands is not None

    follower_id = next(node for node in (1, 2, 3) if node != leader_id)
    follower = cluster.broker(follower_id)
    assert follower.process is not None
    follower.process.send_signal(signal.SIGSTOP)
    try:
        # A record the paused follower lacks: it stops being caught up.
        client = RawClient(leader.address)
        try:
            response = client.produce(TOPIC, {0: [build_batch([b"x"])]}, acks=1)
        finally:
            client.close()
        assert response is not None and response.topics[0].partitions[0].error_code == 0

        def shrunk() -> Samples | None:
            found = scrape(leader)
            return found if value(found, "distributary_under_replicated_partitions") else None

        during = wait_until(shrunk, FAILOVER_S, "the leader reports under-replication")
        assert value(during, "distributary_under_replicated_partitions") == 1
        assert value(during, "distributary_partition_isr_size", **labels) == 2
        assert (value(during, "distributary_isr_shrinks_total") or 0) > shrinks
    finally:
        follower.process.send_signal(signal.SIGCONT)

    def expanded() -> Samples | None:
        found = scrape(leader)
        return found if value(found, "distributary_under_replicated_partitions") == 0 else None

    after = wait_until(expanded, FAILOVER_S, "the follower back in the ISR")
    assert value(after, "distributary_partition_isr_size", **labels) == 3
    assert (value(after, "distributary_isr_expands_total") or 0) > expands
    wait_until(
        lambda: value(scrape(follower), "distributary_replica_lag", **labels) == 0,
        FAILOVER_S,
        "the follower reports no lag",
    )
    promtool = shutil.which("promtool")
    if promtool is not None:  # the lint of a scrape holding every replication family
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=scrape_text(follower),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    # Kill the leader: the controller (another broker, or the one taking over)
    # elects a new TOPIC-0 leader from the ISR.
    wait_until(lambda: in_sync(cluster, 3), FAILOVER_S, "ISR of 3 in the metadata")
    solo = leaders(metadata(cluster.broker(1), [SOLO]), SOLO)
    assert solo is not None
    lost = sum(1 for leader_of, _ in solo.values() if leader_of == leader_id)
    assert lost, "the killed broker leads one of the one-replica partitions"
    survivors = [b for node, b in enumerate(cluster.brokers, start=1) if node != leader_id]
    clean_before = sum(
        value(scrape(b), "distributary_leader_elections_total", kind="clean") or 0
        for b in survivors
    )
    leader.kill()

    def elected() -> Samples | None:
        found = controller(cluster, survivors)
        if found is None:
            return None
        samples = scrape(found)
        clean = value(samples, "distributary_leader_elections_total", kind="clean") or 0
        others = sum(
            value(scrape(b), "distributary_leader_elections_total", kind="clean") or 0
            for b in survivors
            if b is not found
        )
        offline = value(samples, "distributary_offline_partitions")
        return samples if clean + others > clean_before and offline == lost else None

    samples = wait_until(elected, FAILOVER_S, "the controller counts the election")
    assert value(samples, "distributary_leader_elections_total", kind="unclean") == 0
