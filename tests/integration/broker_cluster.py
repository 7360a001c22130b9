"""Three ``distributary serve --cluster`` processes over one etcd, for the cluster
tests: each broker on its own loopback address (127.0.0.2, .3, .4) with its own
data dir, node ids 1-3.

Fixture ``broker_cluster`` (import ``broker_cluster_fixture`` with
``etcd_server_fixture`` into the test module) yields a :class:`BrokerCluster`:

    .etcd, .brokers (BrokerProcess list), .url (the --cluster URL),
    .bootstrap ("host:port,..."), .broker(node_id), .new_broker(node_id, work_dir)
    .metadata(broker) -> MetadataResponse, .wait_until(predicate, timeout_s)

``BrokerCluster(etcd, directory, args=[...])`` adds ``serve`` flags to every broker
(the replication tests shorten ``--replica-lag-time-max-ms``); ``hosts`` picks
the loopback addresses (one per broker).

Every process is stopped at teardown (SIGCONT first, in case a test paused it).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, TypeVar

import pytest
from conftest import RawClient
from etcd_process import EtcdProcess

from broker.testing import BrokerProcess
from client.protocol.messages import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsetsTopic,
    MetadataRequest,
    MetadataResponse,
    Request,
)

HOSTS: Final = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PREFIX: Final = "distributary-cluster-test"
POLL_S: Final = 0.05

T = TypeVar("T")


class BrokerCluster:
    def __init__(
        self,
        etcd: EtcdProcess,
        directory: Path,
        args: Sequence[str] = (),
        hosts: Sequence[str] = HOSTS,
    ) -> None:
        self.etcd = etcd
        self.directory = directory
        self.url = etcd.cluster_url(PREFIX)
        self.args = list(args)
        self.hosts = tuple(hosts)
        self.brokers: list[BrokerProcess] = []

    def new_broker(
        self, node_id: int, host: str, work_dir: Path | None = None, url: str | None = None
    ) -> BrokerProcess:
        """A broker process of this cluster (not started)."""
        work_dir = work_dir or self.directory / f"broker-{node_id}"
        work_dir.mkdir(parents=True, exist_ok=True)
        return BrokerProcess(
            work_dir,
            host=host,
            args=["--cluster", url or self.url, "--node-id", str(node_id), *self.args],
        )

    def start(self) -> None:
        for node_id, host in enumerate(self.hosts, start=1):
            broker = self.new_broker(node_id, host)
            broker.start()
            self.brokers.append(broker)

    def broker(self, node_id: int) -> BrokerProcess:
        return self.brokers[node_id - 1]

    @property
    def bootstrap(self) -> str:
        return ",".join(broker.address for broker in self.brokers)

    def stop(self) -> None:
        for broker in self.brokers:
            if broker.process is not None and broker.process.poll() is None:
                broker.process.send_signal(signal.SIGCONT)
            try:
                broker.stop()
            except RuntimeError:
                broker.kill()


def wait_until(predicate: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(POLL_S)


@pytest.fixture(name="broker_cluster")
def broker_cluster_fixture(etcd_server: EtcdProcess, tmp_path: Path) -> Iterator[BrokerCluster]:
    """etcd and three brokers (node ids 1-3 on 127.0.0.2-4); all stopped after."""
    cluster = BrokerCluster(etcd_server, tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def call(broker: BrokerProcess, request: Request) -> object:
    """One request to ``broker`` on a fresh raw connection; the response body."""
    client = RawClient(broker.address)
    try:
        return client.call(request).body
    finally:
        client.close()


def metadata(broker: BrokerProcess, topics: list[str] | None = None) -> MetadataResponse:
    """One Metadata request to ``broker`` (no auto-creation)."""
    body = call(broker, MetadataRequest(topics))
    assert isinstance(body, MetadataResponse), body
    return body


def leaders(response: MetadataResponse, topic: str) -> dict[int, tuple[int, int]] | None:
    """``{partition: (leader, leader_epoch)}`` of ``topic``, None when it is unknown."""
    for found in response.topics:
        if found.name == topic and found.error_code == 0:
            return {p.partition: (p.leader, p.leader_epoch) for p in found.partitions}
    return None


def leads(broker: BrokerProcess, topic: str, partition: int) -> bool:
    """Whether ``broker`` answers ListOffsets for the partition: it leads it, with its
    leadership in place (Metadata may name a leader a moment before)."""
    request = ListOffsetsRequest([ListOffsetsTopic(topic, [ListOffsetsPartition(partition)])])
    body = call(broker, request)
    assert isinstance(body, ListOffsetsResponse), body
    return body.topics[0].partitions[0].error_code == 0
