"""Consumer groups in a cluster of three brokers: one coordinator per group (the
leader of its ``__consumer_offsets`` partition), whichever broker a member
bootstrapped from, committed offsets that outlive the coordinator's SIGKILL
(``__consumer_offsets`` has three replicas here: another broker takes over), and
the admin's listing (every broker asked) and lag (every partition's leader asked)."""

from __future__ import annotations

import json
import subprocess
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
from test_cli_commands import clean_env, cli_prefix
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
from client.sync import Admin, Producer
from client.types import TopicPartition

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


def find_coordinator(broker: BrokerProcess, group: str = GROUP) -> FindCoordinatorResponse:
    body = call(broker, FindCoordinatorRequest(group))
    assert isinstance(body, FindCoordinatorResponse), body
    return body


def fetch_offsets(broker: BrokerProcess, group: str = GROUP) -> OffsetFetchResponse:
    body = call(broker, OffsetFetchRequest(group))
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


def wait_serving(coordinator: BrokerProcess, group: str) -> None:
    """Wait until ``coordinator`` has loaded the offsets partition of ``group`` (it
    answers COORDINATOR_NOT_AVAILABLE before)."""
    wait_until(
        lambda: fetch_offsets(coordinator, group).error_code == 0,
        RESTART_S,
        f"the coordinator of {group} serving it",
    )


def groups_on_every_broker(cluster: BrokerCluster) -> dict[int, str]:
    """One group name per broker that coordinates it: {node id: group}."""
    through = cluster.broker(1)
    found: dict[int, str] = {}
    for number in range(64):
        name = f"group-{number}"
        answer = wait_until(
            lambda name=name: (a := find_coordinator(through, name)).error_code == 0 and a,
            RESTART_S,
            "a coordinator",
        )
        found.setdefault(answer.node_id, name)
        if len(found) == len(cluster.brokers):
            for node_id, group in found.items():
                wait_serving(cluster.broker(node_id), group)
            return found
    pytest.fail(f"64 group names found coordinators on {sorted(found)} only")


def test_list_groups_asks_every_broker(broker_cluster: BrokerCluster) -> None:
    """Proves the admin's list_groups and `groups list`, bootstrapped from one broker,
    list the groups of all three coordinators, each once."""
    create(broker_cluster)
    groups = groups_on_every_broker(broker_cluster)
    bootstrap = broker_cluster.broker(1).address
    with Admin(bootstrap) as admin:
        for group in groups.values():
            admin.set_offsets(group, {TopicPartition(TOPIC, 0): 1})
        listed = [listing.group_id for listing in admin.list_groups()]
    assert listed == sorted(groups.values())
    run = subprocess.run(
        [*cli_prefix(), "groups", "list", "--bootstrap", bootstrap, "--json"],
        capture_output=True,
        env=clean_env(),
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert [g["group_id"] for g in json.loads(run.stdout)] == sorted(groups.values())


def test_group_lag_comes_from_each_partitions_leader(broker_cluster: BrokerCluster) -> None:
    """Proves `describe_group` (and `groups describe --json`) report, for partitions
    led by three different brokers, the log end their leader holds and lag =
    produced - committed, whichever broker coordinates the group."""
    create(broker_cluster)
    produce(broker_cluster, "first")
    found = leaders(metadata(broker_cluster.broker(1)), TOPIC)
    assert found is not None and {leader for leader, _ in found.values()} == {1, 2, 3}
    commits = {TopicPartition(TOPIC, p): p % RECORDS_PER_PARTITION for p in range(PARTITIONS)}
    bootstrap = broker_cluster.broker(2).address
    wait_serving(coordinator_of(broker_cluster, broker_cluster.broker(2)), GROUP)
    with Admin(bootstrap) as admin:
        admin.set_offsets(GROUP, commits)
        description = admin.describe_group(GROUP)
    rows = {TopicPartition(p.topic, p.partition): p for p in description.partitions}
    assert set(rows) == set(commits)
    for tp, committed_offset in commits.items():
        assert rows[tp].log_end_offset == RECORDS_PER_PARTITION, tp
        assert rows[tp].lag == RECORDS_PER_PARTITION - committed_offset, tp
    run = subprocess.run(
        [*cli_prefix(), "groups", "describe", GROUP, "--bootstrap", bootstrap, "--json"],
        capture_output=True,
        env=clean_env(),
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    lags = {p["partition"]: p["lag"] for p in json.loads(run.stdout)["partitions"]}
    assert lags == {p: RECORDS_PER_PARTITION - p % RECORDS_PER_PARTITION for p in range(PARTITIONS)}


def test_a_group_member_is_assigned_added_partitions(broker_cluster: BrokerCluster) -> None:
    """Proves a group member consuming a topic is assigned the partitions added to it
    through another broker, and consumes the records produced to them."""
    create(broker_cluster)
    member = ConsumerProcess(broker_cluster.broker(1), GROUP, TOPIC, "--offset-reset", "earliest")
    try:
        every = {f"{TOPIC}-{p}" for p in range(PARTITIONS)}
        member.wait_for(lambda m: m.owned == every, 30)
        with Admin(broker_cluster.broker(3).address) as admin:
            admin.create_partitions(TOPIC, PARTITIONS + 2)
        grown = {f"{TOPIC}-{p}" for p in range(PARTITIONS + 2)}
        member.wait_for(lambda m: m.owned == grown, 30)
        with Producer(broker_cluster.broker(2).address) as producer:
            for partition in (PARTITIONS, PARTITIONS + 1):
                producer.send(TOPIC, b"new", partition=partition)
        added = {f"{TOPIC}-{PARTITIONS}", f"{TOPIC}-{PARTITIONS + 1}"}
        member.wait_for(lambda m: added <= {tp for tp, _ in m.consumed()}, 30)
    finally:
        member.process.terminate()
        member.process.wait(10)
