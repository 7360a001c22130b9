"""Consumer groups in a cluster of three brokers: one coordinator per group (the
leader of its ``__consumer_offsets`` partition), whichever broker a member
bootstrapped from, and committed offsets that outlive the coordinator's SIGKILL
(``__consumer_offsets`` has three replicas here: another broker takes over)."""

from __future__ import annotations

from typing import Final

import pytest
from broker_cluster import (
    BrokerCluster,
    broker_cluster_fixture,
    call,
    leaders,
    metadata,
    wait_until,
)
from etcd_process import etcd_server_fixture
from test_groups import ConsumerProcess

from broker.cluster.member import LEASE_TTL_S
from broker.testing import BrokerProcess
from client.errors import ErrorCode
from client.protocol.messages import (
    CreatableTopic,
    CreateTopicsRequest,
    CreateTopicsResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
)
from client.sync import Producer

__all__ = ["broker_cluster_fixture", "etcd_server_fixture"]

pytestmark = pytest.mark.timeout(120)

TOPIC: Final = "orders"
GROUP: Final = "billing"
PARTITIONS: Final = 6
RECORDS_PER_PARTITION: Final = 5
# A dead broker's partitions lose their leader within the lease time; one second more.
FAILOVER_S: Final = LEASE_TTL_S + 1.0
# A restarted broker waits for its old registration to expire, then leads again.
RESTART_S: Final = 15.0


def create(cluster: BrokerCluster) -> None:
    """TOPIC with three replicas per partition (a broker's death moves its
    partitions, as it moves the groups it coordinates)."""
    body = call(cluster.broker(1), CreateTopicsRequest([CreatableTopic(TOPIC, PARTITIONS, 3)]))
    assert isinstance(body, CreateTopicsResponse) and body.topics[0].error_code == 0, body

    def served() -> bool:
        for broker in cluster.brokers:
            found = leaders(metadata(broker), TOPIC)
            if found is None or len(found) < PARTITIONS:
                return False
        return True

    wait_until(served, 5.0, "topic served by every broker")


def produce(cluster: BrokerCluster, tag: str) -> None:
    """RECORDS_PER_PARTITION records into every partition."""
    with Producer(cluster.bootstrap) as producer:
        for partition in range(PARTITIONS):
            for number in range(RECORDS_PER_PARTITION):
                producer.send(TOPIC, f"{tag}-{number}".encode(), partition=partition)
        producer.flush()


def find_coordinator(broker: BrokerProcess) -> FindCoordinatorResponse:
    body = call(broker, FindCoordinatorRequest(GROUP))
    assert isinstance(body, FindCoordinatorResponse), body
    return body


def fetch_offsets(broker: BrokerProcess) -> OffsetFetchResponse:
    body = call(broker, OffsetFetchRequest(GROUP))
    assert isinstance(body, OffsetFetchResponse), body
    return body


def committed(response: OffsetFetchResponse) -> dict[str, int]:
    assert response.error_code == 0, response
    return {
        f"{topic.name}-{part.partition}": part.offset
        for topic in response.topics
        for part in topic.partitions
    }


def coordinator_of(cluster: BrokerCluster, through: BrokerProcess) -> BrokerProcess:
    """The coordinator ``through`` names (waiting while it answers NOT_AVAILABLE)."""

    def found() -> FindCoordinatorResponse | None:
        answer = find_coordinator(through)
        return answer if answer.error_code == 0 else None

    answer = wait_until(found, RESTART_S, "a coordinator for the group")
    coordinator = cluster.broker(answer.node_id)
    assert coordinator.address == f"{answer.host}:{answer.port}"
    return coordinator


def test_members_of_different_brokers_share_one_group(broker_cluster: BrokerCluster) -> None:
    """Proves two members bootstrapped from two different brokers join one group and
    split the topic, their commits are read back through the coordinator a third
    broker names, and the other brokers refuse to serve the group."""
    create(broker_cluster)
    produce(broker_cluster, "first")
    one = ConsumerProcess(broker_cluster.broker(1), GROUP, TOPIC, "--offset-reset", "earliest")
    two = ConsumerProcess(broker_cluster.broker(2), GROUP, TOPIC, "--offset-reset", "earliest")
    every = {f"{TOPIC}-{p}" for p in range(PARTITIONS)}
    try:

        def split(_: ConsumerProcess) -> bool:
            return bool(one.owned) and bool(two.owned) and one.owned | two.owned == every

        one.wait_for(split, 30)
        assert not one.owned & two.owned

        def all_committed(_: ConsumerProcess) -> bool:
            commits = {**one.last_commits(), **two.last_commits()}
            return all(commits.get(tp) == RECORDS_PER_PARTITION for tp in every)

        one.wait_for(all_committed, 30)
    finally:
        for member in (one, two):
            member.process.terminate()
            member.process.wait(10)
    coordinator = coordinator_of(broker_cluster, broker_cluster.broker(3))
    assert committed(fetch_offsets(coordinator)) == dict.fromkeys(every, RECORDS_PER_PARTITION)
    for broker in broker_cluster.brokers:
        if broker is not coordinator:
            assert find_coordinator(broker).node_id == find_coordinator(coordinator).node_id
            refused = fetch_offsets(broker)
            assert refused.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE, refused


def test_commits_outlive_the_coordinator_sigkill(broker_cluster: BrokerCluster) -> None:
    """Proves the committed offsets survive a SIGKILL of the coordinator: the offsets
    partition is replicated, so the broker that leads it next becomes the
    coordinator and serves the same offsets, and a new member resumes from them."""
    create(broker_cluster)
    produce(broker_cluster, "first")
    every = {f"{TOPIC}-{p}" for p in range(PARTITIONS)}
    first = ConsumerProcess(broker_cluster.broker(1), GROUP, TOPIC, "--offset-reset", "earliest")
    try:
        first.wait_for(
            lambda member: all(
                member.last_commits().get(tp) == RECORDS_PER_PARTITION for tp in every
            ),
            30,
        )
    finally:
        first.process.terminate()
        first.process.wait(10)
    coordinator = coordinator_of(broker_cluster, broker_cluster.broker(1))
    observer = next(b for b in broker_cluster.brokers if b is not coordinator)
    coordinator.kill()

    def moved() -> FindCoordinatorResponse | None:
        answer = find_coordinator(observer)
        if answer.error_code or broker_cluster.broker(answer.node_id) is coordinator:
            return None
        return answer

    successor = broker_cluster.broker(wait_until(moved, RESTART_S, "a new coordinator").node_id)
    # It answers COORDINATOR_NOT_AVAILABLE (members retry) until it has loaded the
    # partition it now leads.
    wait_until(
        lambda: fetch_offsets(successor).error_code == 0,
        RESTART_S,
        "the new coordinator serving offsets",
    )
    assert committed(fetch_offsets(successor)) == dict.fromkeys(every, RECORDS_PER_PARTITION)
    produce(broker_cluster, "second")
    second = ConsumerProcess(observer, GROUP, TOPIC, "--offset-reset", "earliest")
    try:
        second.wait_for(
            lambda member: all(
                member.last_commits().get(tp) == 2 * RECORDS_PER_PARTITION for tp in every
            ),
            30,
        )
    finally:
        second.process.terminate()
        second.process.wait(10)
    offsets = [offset for _, offset in second.consumed()]
    assert offsets and min(offsets) == RECORDS_PER_PARTITION, "resumed from the commits"


def test_member_rides_out_the_coordinator_restart(broker_cluster: BrokerCluster) -> None:
    """Proves a member that stays up while its coordinator is SIGKILLed keeps
    retrying, rejoins at the broker that takes the offsets partition over, and goes
    on consuming and committing from where it was."""
    create(broker_cluster)
    produce(broker_cluster, "first")
    every = {f"{TOPIC}-{p}" for p in range(PARTITIONS)}
    coordinator = coordinator_of(broker_cluster, broker_cluster.broker(1))
    bootstrap = next(b for b in broker_cluster.brokers if b is not coordinator)
    member = ConsumerProcess(bootstrap, GROUP, TOPIC, "--offset-reset", "earliest")
    try:
        member.wait_for(
            lambda m: all(m.last_commits().get(tp) == RECORDS_PER_PARTITION for tp in every), 30
        )
        coordinator.kill()

        def moved() -> bool:
            answer = find_coordinator(bootstrap)
            return answer.error_code == 0 and broker_cluster.broker(answer.node_id) is not (
                coordinator
            )

        wait_until(moved, RESTART_S, "the coordinator moved to a replica")
        produce(broker_cluster, "second")
        member.wait_for(
            lambda m: all(m.last_commits().get(tp) == 2 * RECORDS_PER_PARTITION for tp in every),
            30,
        )
    finally:
        member.process.terminate()
        member.process.wait(10)
    current = coordinator_of(broker_cluster, bootstrap)
    assert committed(fetch_offsets(current)) == dict.fromkeys(every, 2 * RECORDS_PER_PARTITION)
