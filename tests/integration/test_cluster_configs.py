"""Topic configs in a cluster of three brokers: an AlterConfigs through one broker
goes through the metadata store, so every broker describes the new configs and
applies them to its own logs; a bad alter is refused with INVALID_CONFIG and
changes nothing anywhere."""

from __future__ import annotations

import subprocess

from broker_cluster import (
    BrokerCluster,
    broker_cluster_fixture,
    call,
    leaders,
    metadata,
    wait_until,
)
from conftest import RawClient
from etcd_process import etcd_server_fixture
from test_cli_commands import clean_env, cli_prefix

from broker.testing import BrokerProcess
from client.errors import ErrorCode
from client.protocol.messages import (
    AlterableTopic,
    AlterConfigsRequest,
    AlterConfigsResponse,
    DescribeTopicsRequest,
    DescribeTopicsResponse,
    TopicDescription,
)
from client.sync import Producer

__all__ = ["broker_cluster_fixture", "etcd_server_fixture"]

TOPIC = "orders"
# Generous: a busy machine; each broker normally applies a change within ms.
APPLIED_WAIT_S = 10.0


def create(cluster: BrokerCluster, configs: dict[str, str] | None = None) -> int:
    """Create TOPIC (one partition) through broker 1, wait until every broker serves
    it; returns its leader's node id."""
    client = RawClient(cluster.broker(1).address)
    try:
        created = client.create_topic(TOPIC, 1, configs)
    finally:
        client.close()
    assert created.topics[0].error_code == 0, created

    def leader() -> int | None:
        found = [leaders(metadata(broker), TOPIC) for broker in cluster.brokers]
        # A broker may list the topic before its partition (not applied yet).
        if any(f is None or 0 not in f or f[0][0] < 0 for f in found):
            return None
        assert found[0] is not None
        return found[0][0][0]

    return wait_until(leader, APPLIED_WAIT_S, f"{TOPIC} served by every broker")


def alter(broker: BrokerProcess, configs: dict[str, str], validate_only: bool = False) -> int:
    """AlterConfigs of TOPIC sent to ``broker``; its error code."""
    body = call(broker, AlterConfigsRequest([AlterableTopic(TOPIC, configs)], validate_only))
    assert isinstance(body, AlterConfigsResponse), body
    return body.topics[0].error_code


def describe(broker: BrokerProcess) -> TopicDescription:
    body = call(broker, DescribeTopicsRequest([TOPIC]))
    assert isinstance(body, DescribeTopicsResponse), body
    assert body.topics[0].error_code == 0, body
    return body.topics[0]


def wait_described(broker: BrokerProcess, key: str, value: str) -> None:
    """Wait until ``broker`` describes TOPIC's ``key`` as ``value``."""
    wait_until(
        lambda: describe(broker).configs[key] == value,
        APPLIED_WAIT_S,
        f"broker {broker.address} describes {key}={value}",
    )


def test_an_alter_through_one_broker_is_described_by_every_broker(
    broker_cluster: BrokerCluster,
) -> None:
    """Proves AlterConfigs sent to one broker answers once that broker describes the
    new overrides, every other broker then describes them too, and a later
    ``default`` through `topics alter-config` removes one everywhere."""
    create(broker_cluster, {"segment.bytes": "65536"})
    asked = broker_cluster.broker(2)
    assert alter(asked, {"retention.ms": "86400000", "segment.bytes": "131072"}) == 0
    assert describe(asked).configs["retention_ms"] == "86400000"
    for broker in broker_cluster.brokers:
        wait_described(broker, "segment_bytes", "131072")
        assert describe(broker).configs["retention_ms"] == "86400000"
    argv = ["topics", "alter-config", TOPIC, "-c", "segment_bytes=default"]
    run = subprocess.run(
        [*cli_prefix(), *argv, "--bootstrap", broker_cluster.broker(3).address],
        capture_output=True,
        env=clean_env(),
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    default_segment_bytes = str(1024 * 1024 * 1024)
    for broker in broker_cluster.brokers:
        wait_described(broker, "segment_bytes", default_segment_bytes)
        assert describe(broker).configs["retention_ms"] == "86400000"


def test_a_retention_change_deletes_old_segments_on_the_leader_not_asked(
    broker_cluster: BrokerCluster,
) -> None:
    """Proves a retention.ms alter sent to a broker that does not lead the partition
    makes its leader delete the old segments (its log start offset moves up)."""
    leader_id = create(
        broker_cluster, {"segment.bytes": "1024", "retention.check.interval.ms": "100"}
    )
    leader = broker_cluster.broker(leader_id)
    with Producer(leader.address, linger_ms=0) as producer:
        for number in range(40):
            producer.send(TOPIC, b"x" * 200 + str(number).encode(), partition=0)
    before = describe(leader).partitions[0]
    assert before.segment_count > 2 and before.log_start_offset == 0, before
    asked = broker_cluster.broker(leader_id % 3 + 1)
    assert alter(asked, {"retention.ms": "0"}) == 0

    def trimmed() -> bool:
        now = describe(leader).partitions[0]
        return now.log_start_offset > 0 and now.segment_count < before.segment_count

    wait_until(trimmed, APPLIED_WAIT_S, "the leader deleted old segments")
    assert describe(leader).partitions[0].log_end_offset == before.log_end_offset


def test_an_invalid_alter_is_refused_and_changes_nothing(broker_cluster: BrokerCluster) -> None:
    """Proves an unknown key or a bad value sent to any broker is refused with
    INVALID_CONFIG, a validate_only alter is accepted without effect, and every
    broker still describes the configs as created."""
    create(broker_cluster, {"retention.ms": "5000"})
    created = [describe(broker).configs for broker in broker_cluster.brokers]
    assert created[0]["retention_ms"] == "5000"
    for broker in broker_cluster.brokers:
        assert alter(broker, {"retention.ms": "soon"}) == ErrorCode.INVALID_CONFIG
        assert alter(broker, {"colour": "blue"}) == ErrorCode.INVALID_CONFIG
        assert alter(broker, {"retention.ms": "1", "segment.bytes": "12"}) == (
            ErrorCode.INVALID_CONFIG
        )
        assert alter(broker, {"retention.ms": "7000"}, validate_only=True) == 0
    # A valid alter after the refused ones is applied everywhere: had a refused one
    # been written, it would show beside it.
    assert alter(broker_cluster.broker(1), {"segment.ms": "600000"}) == 0
    for index, broker in enumerate(broker_cluster.brokers):
        wait_described(broker, "segment_ms", "600000")
        assert describe(broker).configs == {**created[index], "segment_ms": "600000"}


def test_a_broker_down_during_an_alter_takes_it_when_it_returns(
    broker_cluster: BrokerCluster,
) -> None:
    """Proves a broker stopped while a topic's configs are altered describes (and so
    uses) the stored configs after its restart, not those its data dir kept."""
    create(broker_cluster, {"retention.ms": "5000"})
    absent = broker_cluster.broker(3)
    absent.stop()
    assert alter(broker_cluster.broker(1), {"retention.ms": "9000"}) == 0
    absent.start()
    wait_described(absent, "retention_ms", "9000")
