"""A group's lag in a cluster of three brokers: the coordinator's DescribeGroups
answer gives a partition's log end and lag only where it serves the partition's
reads (its copy of any other partition may be stale: -1, unknown), and the SDK
fills them in from each partition's leader."""

from __future__ import annotations

from typing import Final

import pytest
from broker_cluster import BrokerCluster, broker_cluster_fixture, call, leaders, metadata
from etcd_process import etcd_server_fixture
from test_cluster_groups import (
    GROUP,
    PARTITIONS,
    RECORDS_PER_PARTITION,
    TOPIC,
    coordinator_of,
    create,
    produce,
    wait_serving,
)

from client.protocol.messages import DescribeGroupsRequest, DescribeGroupsResponse
from client.sync import Admin
from client.types import TopicPartition

__all__ = ["broker_cluster_fixture", "etcd_server_fixture"]

pytestmark = pytest.mark.timeout(120)

UNKNOWN: Final = -1


def test_the_coordinator_reports_lag_only_of_partitions_it_leads(
    broker_cluster: BrokerCluster,
) -> None:
    """Proves a raw DescribeGroups to the coordinator answers log end and lag -1 for
    every partition another broker leads (its own copy holds none of their
    records) and the true values for those it leads, while the SDK's
    describe_group answers the true log end and lag of every partition."""
    create(broker_cluster)
    produce(broker_cluster, "first")
    found = leaders(metadata(broker_cluster.broker(1)), TOPIC)
    assert found is not None and {leader for leader, _ in found.values()} == {1, 2, 3}
    coordinator = coordinator_of(broker_cluster, broker_cluster.broker(1))
    coordinator_id = broker_cluster.brokers.index(coordinator) + 1
    wait_serving(coordinator, GROUP)
    commits = {TopicPartition(TOPIC, p): p % RECORDS_PER_PARTITION for p in range(PARTITIONS)}
    with Admin(broker_cluster.broker(2).address) as admin:
        admin.set_offsets(GROUP, commits)
        described = admin.describe_group(GROUP)

    body = call(coordinator, DescribeGroupsRequest([GROUP]))
    assert isinstance(body, DescribeGroupsResponse) and body.groups[0].error_code == 0, body
    raw = {p.partition: p for p in body.groups[0].partitions if p.topic == TOPIC}
    assert sorted(raw) == list(range(PARTITIONS))
    for partition, row in raw.items():
        assert row.committed_offset == partition % RECORDS_PER_PARTITION
        if found[partition][0] == coordinator_id:
            assert (row.log_end_offset, row.lag) == (
                RECORDS_PER_PARTITION,
                RECORDS_PER_PARTITION - row.committed_offset,
            ), partition
        else:
            assert (row.log_end_offset, row.lag) == (UNKNOWN, UNKNOWN), partition

    rows = {p.partition: p for p in described.partitions if p.topic == TOPIC}
    assert sorted(rows) == list(range(PARTITIONS))
    for partition, row in rows.items():
        assert row.log_end_offset == RECORDS_PER_PARTITION, partition
        assert row.lag == RECORDS_PER_PARTITION - partition % RECORDS_PER_PARTITION, partition
