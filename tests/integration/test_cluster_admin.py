"""Administering a cluster of three brokers: racks in the metadata and in
``cluster describe``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker_cluster import BrokerCluster, metadata
from etcd_process import EtcdProcess, etcd_server_fixture
from test_cli_commands import clean_env, cli_prefix

from broker.testing import BrokerProcess

__all__ = ["etcd_server_fixture"]

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
