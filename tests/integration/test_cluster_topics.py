"""A cluster of three brokers over etcd: topics created through one broker are
served by all, partitions spread over every broker, produce and fetch only on
the leader."""

from __future__ import annotations

from broker_cluster import BrokerCluster, broker_cluster_fixture, leaders, metadata, wait_until
from conftest import RawClient
from etcd_process import etcd_server_fixture

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
