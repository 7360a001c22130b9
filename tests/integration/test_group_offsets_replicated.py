"""A commit that its coordinator cannot replicate, with three brokers and etcd: the
coordinator (leader of the group's ``__consumer_offsets`` partition) is cut off from
the partition's followers with nftables, so the commit's record reaches its log
only.  The commit is not acknowledged, OffsetFetch never answers it, and after the
coordinator's SIGKILL the next coordinator serves the last acknowledged commit.
Skipped without nft or root (tests/chaos/faults.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from broker_cluster import BrokerCluster, call, leaders, metadata, wait_until
from conftest import RawClient
from etcd_process import EtcdProcess, etcd_server_fixture

from broker.cluster.member import LEASE_TTL_S
from broker.groups.config import OFFSETS_TOPIC
from broker.groups.records import partition_for_group
from broker.groups.service import REPLICATION_WAIT_S
from broker.testing import BrokerProcess
from client.errors import ErrorCode
from client.protocol.messages import (
    ADMIN_COMMIT_EPOCH,
    CreatableTopic,
    CreateTopicsRequest,
    CreateTopicsResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    MetadataRequest,
    MetadataResponse,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetCommitTopic,
    OffsetFetchRequest,
    OffsetFetchResponse,
)
from tests.chaos.faults import Partitioner, partition_unavailable

__all__ = ["etcd_server_fixture"]

pytestmark = pytest.mark.timeout(150)

TOPIC: Final = "orders"
GROUP: Final = "billing"
ACKNOWLEDGED: Final = 5
UNREPLICATED: Final = 9
# Long enough that the cut-off followers stay in the ISR (they are eligible
# leaders once the coordinator dies).
LAG_TIME_MAX_MS: Final = 120_000
# A coordinator's death moves its partitions within the lease time; then a load.
FAILOVER_S: Final = LEASE_TTL_S + 12.0
# The unreplicated commit's answer comes after the coordinator's replication wait.
COMMIT_ANSWER_S: Final = REPLICATION_WAIT_S + 20.0


@pytest.fixture(name="cluster")
def cluster_fixture(etcd_server: EtcdProcess, tmp_path: Path) -> Iterator[BrokerCluster]:
    reason = partition_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = BrokerCluster(
        etcd_server, tmp_path, args=["--replica-lag-time-max-ms", str(LAG_TIME_MAX_MS)]
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def commit_request(offset: int) -> OffsetCommitRequest:
    """An admin commit of ``offset`` for TOPIC-0 (the group has no members)."""
    return OffsetCommitRequest(
        GROUP,
        "",
        ADMIN_COMMIT_EPOCH,
        [OffsetCommitTopic(TOPIC, [OffsetCommitPartition(0, offset)])],
    )


def commit_error(body: object) -> int:
    """The commit's error code (0: acknowledged)."""
    assert isinstance(body, OffsetCommitResponse), body
    if body.error_code:
        return body.error_code
    return body.topics[0].partitions[0].error_code


def fetched(broker: BrokerProcess) -> int | None:
    """TOPIC-0's committed offset as ``broker`` answers it (None: an error or none)."""
    body = call(broker, OffsetFetchRequest(GROUP))
    assert isinstance(body, OffsetFetchResponse), body
    if body.error_code:
        return None
    for topic in body.topics:
        for part in topic.partitions:
            if topic.name == TOPIC and part.partition == 0 and part.offset >= 0:
                return part.offset
    return None


def coordinator(cluster: BrokerCluster, through: BrokerProcess) -> BrokerProcess | None:
    body = call(through, FindCoordinatorRequest(GROUP))
    assert isinstance(body, FindCoordinatorResponse), body
    return None if body.error_code else cluster.broker(body.node_id)


def offsets_replicas(broker: BrokerProcess) -> tuple[list[int], list[int]] | None:
    """(replicas, isr) of the group's offsets partition, as ``broker`` knows them."""
    body = call(broker, MetadataRequest([OFFSETS_TOPIC]))
    assert isinstance(body, MetadataResponse), body
    for topic in body.topics:
        if topic.name == OFFSETS_TOPIC and topic.error_code == 0 and topic.partitions:
            index = partition_for_group(GROUP, len(topic.partitions))
            found = next(p for p in topic.partitions if p.partition == index)
            return found.replicas, found.isr
    return None


def test_unreplicated_commit_is_never_seen_and_lost_on_failover(cluster: BrokerCluster) -> None:
    """Proves a commit whose record only the coordinator holds is not acknowledged
    and never answered by OffsetFetch (polled meanwhile), and that after the
    coordinator's SIGKILL the next coordinator serves the last acknowledged one."""
    body = call(cluster.broker(1), CreateTopicsRequest([CreatableTopic(TOPIC, 1, 3)]))
    assert isinstance(body, CreateTopicsResponse) and body.topics[0].error_code == 0, body
    wait_until(
        lambda: all(leaders(metadata(b), TOPIC) for b in cluster.brokers), 10.0, "topic served"
    )
    first = wait_until(lambda: coordinator(cluster, cluster.broker(1)), 20.0, "a coordinator")
    wait_until(lambda: _serves(first), 20.0, "the coordinator serving the group")

    def fully_replicated() -> bool:
        found = offsets_replicas(first)
        return found is not None and len(found[0]) == 3 and sorted(found[1]) == sorted(found[0])

    wait_until(fully_replicated, 20.0, "the offsets partition on three in-sync replicas")
    assert commit_error(call(first, commit_request(ACKNOWLEDGED))) == 0
    assert fetched(first) == ACKNOWLEDGED

    followers = [broker for broker in cluster.brokers if broker is not first]
    seen: list[int | None] = []
    answers: list[int] = []

    def send_commit() -> None:
        client = RawClient(first.address, timeout_s=COMMIT_ANSWER_S)
        try:
            answers.append(commit_error(client.call(commit_request(UNREPLICATED)).body))
        finally:
            client.close()

    with Partitioner("127.0.0.1", cluster.etcd.client_port) as partitioner:
        for follower in followers:
            partitioner.cut(first.host, follower.host)
        committer = threading.Thread(target=send_commit)
        committer.start()
        while committer.is_alive():  # each fetch waits for the pending commit to settle
            seen.append(fetched(first))
            committer.join(0.2)
        # Refused with a retriable error: the replicas never confirmed it.
        assert answers in ([ErrorCode.REQUEST_TIMED_OUT], [ErrorCode.COORDINATOR_NOT_AVAILABLE])
        assert UNREPLICATED not in seen, seen
        assert seen and set(seen) == {ACKNOWLEDGED}, seen
        first.kill()
        partitioner.heal()

    observer = followers[0]

    def moved() -> BrokerProcess | None:
        found = coordinator(cluster, observer)
        return found if found is not None and found is not first else None

    successor = wait_until(moved, FAILOVER_S, "a new coordinator")
    offset = wait_until(lambda: fetched(successor), FAILOVER_S, "the new coordinator's offsets")
    assert offset == ACKNOWLEDGED


def _serves(broker: BrokerProcess) -> bool:
    """Whether ``broker`` answers OffsetFetch for the group without an error."""
    body = call(broker, OffsetFetchRequest(GROUP))
    return isinstance(body, OffsetFetchResponse) and body.error_code == 0
