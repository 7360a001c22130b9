"""Preferred-leader election on three brokers over etcd: leadership goes back to a
partition's first replica, at once through ``distributary cluster elect-leaders``
(ElectLeaders, answered by the controller) and by itself a few seconds after the
preferred replica is back in sync.

The tests put the partition in the state a failover leaves once the preferred
replica has rejoined the ISR (a higher epoch, the second replica leading, every
replica in sync) by a CAS on its state key in etcd, as the controller would.
"""

from __future__ import annotations

import json
import subprocess

import trio
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

from broker.cluster.controller import PREFERRED_LEADER_DELAY_S
from broker.cluster.etcd_store import open_etcd_store
from broker.cluster.etcd_url import parse_etcd_url
from broker.cluster.schema import (
    PartitionState,
    TopicAssignment,
    decode,
    encode,
    state_key,
    topic_key,
)
from client.errors import ErrorCode
from client.protocol.messages import (
    CreatableTopic,
    CreateTopicsRequest,
    CreateTopicsResponse,
    ElectLeadersRequest,
    ElectLeadersResponse,
    ElectLeadersTopic,
)

__all__ = ["broker_cluster_fixture", "etcd_server_fixture"]
TOPIC = "balanced"


def create_replicated(cluster: BrokerCluster) -> None:
    client = RawClient(cluster.broker(1).address)
    try:
        body = client.call(CreateTopicsRequest([CreatableTopic(TOPIC, 3, 3, {})])).body
    finally:
        client.close()
    assert isinstance(body, CreateTopicsResponse) and body.topics[0].error_code == 0, body
    wait_until(
        lambda: all(
            (found := leaders(metadata(b), TOPIC)) and len(found) == 3 for b in cluster.brokers
        ),
        15.0,
        "topic served by every broker",
    )


def move_leader_off_preferred(cluster: BrokerCluster, partition: int) -> tuple[int, int]:
    """Make the second replica lead ``partition`` (epoch + 1, full ISR); returns
    (preferred replica, new leader)."""

    async def write() -> tuple[int, int]:
        async with open_etcd_store(parse_etcd_url(cluster.url)) as store:
            topic = await store.get(topic_key(TOPIC))
            state = await store.get(state_key(TOPIC, partition))
            assert topic is not None and state is not None
            replicas = decode(topic.key, topic.value, TopicAssignment).replicas[partition]
            current = decode(state.key, state.value, PartitionState)
            moved = PartitionState(replicas[1], current.leader_epoch + 1, list(replicas))
            await store.put(
                state_key(TOPIC, partition), encode(moved), expected_version=state.mod_revision
            )
            return replicas[0], replicas[1]

    return trio.run(write)


def leader_of(cluster: BrokerCluster, partition: int) -> int:
    found = leaders(metadata(cluster.broker(1)), TOPIC)
    assert found is not None
    return found[partition][0]


def test_elect_leaders_moves_leadership_back_at_once(broker_cluster: BrokerCluster) -> None:
    """Proves `cluster elect-leaders` moves a partition's leadership back to its
    preferred replica and says so, and that a broker other than the controller
    refuses ElectLeaders with NOT_CONTROLLER."""
    create_replicated(broker_cluster)
    preferred, other = move_leader_off_preferred(broker_cluster, 0)
    wait_until(lambda: leader_of(broker_cluster, 0) == other, 10.0, "leader moved away")
    argv = [*cli_prefix(), "cluster", "elect-leaders", "--bootstrap", broker_cluster.bootstrap]
    run = subprocess.run(
        [*argv, "--topic", TOPIC, "--partition", "0", "--json"],
        capture_output=True,
        env=clean_env(),
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    (result,) = json.loads(run.stdout)["partitions"]
    assert result["topic"] == TOPIC and result["partition"] == 0
    assert result["leader"] == preferred
    # The controller moves it by itself PREFERRED_LEADER_DELAY_S after it saw the
    # chance; on a slow machine it may have been first.
    assert result["moved"] or "already led" in result["error"], result
    wait_until(lambda: leader_of(broker_cluster, 0) == preferred, 10.0, "leader back")
    controller = metadata(broker_cluster.broker(1)).controller_id
    elsewhere = broker_cluster.broker(1 if controller != 1 else 2)
    body = call(elsewhere, ElectLeadersRequest([ElectLeadersTopic(TOPIC, [0])]))
    assert isinstance(body, ElectLeadersResponse)
    assert body.error_code == ErrorCode.NOT_CONTROLLER
    plain = subprocess.run(
        [*argv, "--topic", "no-such-topic"], capture_output=True, env=clean_env(), timeout=60
    )
    assert plain.returncode == 0, plain.stderr
    assert b"no-such-topic/0: unknown" in plain.stderr


def test_controller_moves_leadership_back_by_itself(broker_cluster: BrokerCluster) -> None:
    """Proves the controller gives leadership back to the preferred replica once it
    has been in sync for PREFERRED_LEADER_DELAY_S, with no command."""
    create_replicated(broker_cluster)
    preferred, other = move_leader_off_preferred(broker_cluster, 1)
    assert preferred != other
    wait_until(
        lambda: leader_of(broker_cluster, 1) == preferred,
        PREFERRED_LEADER_DELAY_S + 15.0,
        "leadership back on the preferred replica",
    )
