"""Partition replication across three real brokers (etcd on 127.0.0.1, brokers on
127.0.0.2-4, each with its own data dir): every replica holds the same batches,
a SIGKILLed leader loses no acknowledged record, a restarted follower catches up
and rejoins the ISR, min ISR refuses acks=all, and an ex-leader's divergent tail
is truncated.

Replica logs are compared byte for byte once the brokers are stopped: a follower
appends its leader's batches as they are, so the segment files of every replica
of a partition hold the same bytes.
"""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest
from broker_cluster import PREFIX, BrokerCluster, call, leads, metadata, wait_until
from conftest import RawClient
from etcd_process import EtcdProcess, etcd_server_fixture

from broker.cluster.member import LEASE_TTL_S
from broker.cluster.schema import BrokerRegistration, broker_key, decode
from broker.partition import partition_directory
from broker.testing import BrokerProcess
from client.errors import DistributaryError, ErrorCode, error_for_code
from client.protocol.messages import (
    EARLIEST_TIMESTAMP,
    Acks,
    CreatableTopic,
    CreateTopicsRequest,
    CreateTopicsResponse,
    PartitionMetadata,
)
from client.records.builder import build_batch
from client.records.header import iter_batches
from client.sync import Consumer, Producer
from client.types import TopicPartition

__all__ = ["etcd_server_fixture"]

TOPIC: Final = "replicated"
# Followers fall out of the ISR after this long without catching up.
LAG_TIME_MAX_MS: Final = 1000
# A failure is detected within the lease time; the election and the ISR change
# that follows take a few seconds more on a busy machine.
FAILOVER_S: Final = LEASE_TTL_S + 7.0
TIMEOUT_S: Final = 30.0
# A consumer that read what it needed stops after this long without a record.
IDLE_MS: Final = 1000


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


# -- helpers --------------------------------------------------------------------------


def create_replicated(cluster: BrokerCluster, configs: dict[str, str] | None = None) -> int:
    """Create TOPIC (one partition, three replicas); wait until every broker serves
    it with all three in sync.  Returns the leader's node id."""
    body = call(
        cluster.broker(1),
        CreateTopicsRequest([CreatableTopic(TOPIC, 1, 3, dict(configs or {}))]),
    )
    assert isinstance(body, CreateTopicsResponse) and body.topics[0].error_code == 0, body
    state = wait_state(cluster, lambda found: len(found.isr) == 3, "topic served, ISR of 3")
    wait_until(lambda: leads(cluster.broker(state.leader), TOPIC, 0), TIMEOUT_S, "leading")
    return state.leader


def partition_state(broker: BrokerProcess) -> PartitionMetadata | None:
    for topic in metadata(broker, [TOPIC]).topics:
        if topic.name == TOPIC and topic.error_code == 0 and topic.partitions:
            return topic.partitions[0]
    return None


def wait_state(
    cluster: BrokerCluster,
    predicate: Callable[[PartitionMetadata], bool],
    what: str,
    observers: list[BrokerProcess] | None = None,
    timeout_s: float = FAILOVER_S,
) -> PartitionMetadata:
    """Wait until every observer (default: all brokers) reports a state of TOPIC's
    partition 0 that ``predicate`` accepts (and the same one)."""
    watching = observers or cluster.brokers

    def agreed() -> PartitionMetadata | None:
        found = [partition_state(broker) for broker in watching]
        first = found[0]
        if first is None or any(f != first for f in found) or not predicate(first):
            return None
        return first

    return wait_until(agreed, timeout_s, what)


def live(cluster: BrokerCluster, *dead: int) -> list[BrokerProcess]:
    return [b for node, b in enumerate(cluster.brokers, start=1) if node not in dead]


def log_bytes(broker: BrokerProcess) -> bytes:
    """The stopped broker's replica of TOPIC-0: its segment files' bytes in order,
    checked to hold whole batches."""
    directory = partition_directory(broker.data_dir, TOPIC, 0)
    data = b"".join(path.read_bytes() for path in sorted(directory.glob("*.log")))
    iter_batches(data)
    return data


def consume_all(bootstrap: str, at_least: int) -> list[tuple[int, bytes]]:
    """Every (offset, value) of TOPIC-0 a consumer reads from the start: at least
    ``at_least`` records (a new leader serves them once its high watermark caught
    up), then whatever comes before IDLE_MS pass without a record."""
    tp = TopicPartition(TOPIC, 0)
    found: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + TIMEOUT_S
    with Consumer(bootstrap) as consumer:
        consumer.assign([tp], timeout=TIMEOUT_S)
        consumer.seek_to_beginning(tp, timeout=TIMEOUT_S)
        while True:  # until idle with enough read, or the deadline
            records = consumer.getmany(timeout_ms=IDLE_MS).get(tp, [])
            for record in records:
                assert record.value is not None
                found.append((record.offset, bytes(record.value)))
            if not records and len(found) >= at_least:
                return found
            if time.monotonic() >= deadline:
                pytest.fail(f"read {len(found)} records, expected at least {at_least}")


def produce_raw(broker: BrokerProcess, values: list[bytes], acks: int) -> int:
    """One batch of ``values`` to ``broker``; the answer's error code."""
    client = RawClient(broker.address)
    try:
        response = client.produce(TOPIC, {0: [build_batch(values)]}, acks=acks)
    finally:
        client.close()
    assert response is not None
    return response.topics[0].partitions[0].error_code


def produce_until_accepted(broker: BrokerProcess, values: list[bytes], acks: int) -> None:
    """Produce one batch to ``broker``, again after each retriable refusal (a new
    leader before its followers joined the ISR) until FAILOVER_S passed."""
    codes: list[int] = []

    def accepted() -> bool:
        codes.append(produce_raw(broker, values, acks))
        if codes[-1] and not error_for_code(codes[-1], "").retriable:
            pytest.fail(f"produce refused with {ErrorCode(codes[-1]).name}")
        return codes[-1] == 0

    wait_until(accepted, FAILOVER_S, f"produce accepted (refused with {codes[-1:]})")


# -- tests ----------------------------------------------------------------------------


def test_every_replica_holds_the_leaders_batches(cluster: BrokerCluster) -> None:
    """Proves acks=all records reach every replica byte for byte, and that the new
    leader after a SIGKILL of the old one serves them all at the same offsets."""
    leader = create_replicated(cluster)
    values = [b"v%d" % n for n in range(300)]
    with Producer(cluster.bootstrap, linger_ms=1) as producer:
        handles = [producer.enqueue(TOPIC, value, partition=0) for value in values]
        offsets = [handle.result(timeout=TIMEOUT_S).offset for handle in handles]
    assert offsets == list(range(len(values)))
    wait_state(cluster, lambda found: len(found.isr) == 3, "all in sync after the writes")
    cluster.broker(leader).kill()
    survivors = live(cluster, leader)
    wait_state(
        cluster,
        lambda found: found.leader not in (leader, -1),
        "a new leader",
        observers=survivors,
    )
    bootstrap = ",".join(broker.address for broker in survivors)
    assert consume_all(bootstrap, len(values)) == list(enumerate(values))
    for broker in survivors:
        broker.stop()
    replicas = [log_bytes(broker) for broker in cluster.brokers]
    assert replicas[0] and replicas.count(replicas[0]) == 3


def test_leader_killed_under_acks_all_load_loses_and_duplicates_nothing(
    cluster: BrokerCluster,
) -> None:
    """Proves that with a SIGKILL of the leader in the middle of an idempotent
    acks=all stream, every acknowledged record is read back exactly once, in the
    order it was sent."""
    leader = create_replicated(cluster)
    values = [b"load-%d" % n for n in range(2000)]
    acknowledged: dict[bytes, int] = {}
    with Producer(cluster.bootstrap, linger_ms=2) as producer:
        handles = []
        for number, value in enumerate(values):
            handles.append(producer.enqueue(TOPIC, value, partition=0))
            if number == len(values) // 2:
                cluster.broker(leader).kill()
        for value, handle in zip(values, handles, strict=True):
            try:
                acknowledged[value] = handle.result(timeout=FAILOVER_S + TIMEOUT_S).offset
            except DistributaryError:
                continue  # not acknowledged: it may be lost
    assert acknowledged, "nothing acknowledged"
    survivors = ",".join(broker.address for broker in live(cluster, leader))
    read = consume_all(survivors, max(acknowledged.values()) + 1)
    values_read = [value for _, value in read]
    assert len(values_read) == len(set(values_read)), "a record was duplicated"
    assert [offset for offset, _ in read] == list(range(len(read))), "offsets not dense"
    lost = [value for value, offset in acknowledged.items() if read[offset][1] != value]
    assert not lost, f"acknowledged records lost or moved: {lost[:5]}"
    assert values_read == sorted(values_read, key=values.index), "records out of order"


def test_restarted_follower_catches_up_and_rejoins_the_isr(cluster: BrokerCluster) -> None:
    """Proves a SIGKILLed follower leaves the ISR, and after its restart copies what
    it missed and is in the ISR again, with the leader's bytes."""
    leader = create_replicated(cluster)
    follower = next(node for node in (1, 2, 3) if node != leader)
    cluster.broker(follower).kill()
    with Producer(cluster.bootstrap, linger_ms=1) as producer:
        for number in range(50):
            producer.send(TOPIC, b"while-down-%d" % number, partition=0, timeout=FAILOVER_S)
    wait_state(
        cluster,
        lambda found: follower not in found.isr,
        "the dead follower left the ISR",
        observers=live(cluster, follower),
    )
    cluster.broker(follower).start()
    wait_state(
        cluster, lambda found: sorted(found.isr) == [1, 2, 3], "the follower back in the ISR"
    )
    for broker in cluster.brokers:
        broker.stop()
    replicas = [log_bytes(broker) for broker in cluster.brokers]
    assert replicas[0] and replicas.count(replicas[0]) == 3


def test_follower_behind_the_leaders_log_start_restarts_its_log(
    cluster: BrokerCluster,
) -> None:
    """Proves a follower that was down while retention deleted the leader's oldest
    segments starts its log over at the leader's log start and rejoins the ISR."""
    leader = create_replicated(
        cluster,
        {"segment.bytes": "1024", "retention.bytes": "2048", "retention.check.interval.ms": "100"},
    )
    follower = next(node for node in (1, 2, 3) if node != leader)
    cluster.broker(follower).kill()
    with Producer(cluster.bootstrap, linger_ms=0) as producer:
        for number in range(100):
            producer.send(TOPIC, b"%03d" % number * 30, partition=0, timeout=FAILOVER_S)
    client = RawClient(cluster.broker(leader).address)
    try:
        wait_until(
            lambda: client.list_offsets(TOPIC, {0: EARLIEST_TIMESTAMP})[0] > 0,
            TIMEOUT_S,
            "the leader's oldest segments deleted",
        )
    finally:
        client.close()
    cluster.broker(follower).start()
    wait_state(
        cluster, lambda found: sorted(found.isr) == [1, 2, 3], "the follower back in the ISR"
    )
    assert "follower log restarted" in cluster.broker(follower).logs(since_start=True)


def test_min_isr_refuses_acks_all_and_accepts_acks_leader(cluster: BrokerCluster) -> None:
    """Proves that with two of three replicas down (min ISR 2, the default for three
    replicas) acks=all is refused with NOT_ENOUGH_REPLICAS while acks=leader is
    still appended."""
    leader = create_replicated(cluster)
    followers = [node for node in (1, 2, 3) if node != leader]
    for node in followers:
        cluster.broker(node).kill()
    wait_state(
        cluster,
        lambda found: list(found.isr) == [leader],
        "the leader alone in the ISR",
        observers=[cluster.broker(leader)],
    )
    assert produce_raw(cluster.broker(leader), [b"all"], Acks.ALL) == ErrorCode.NOT_ENOUGH_REPLICAS
    assert produce_raw(cluster.broker(leader), [b"leader"], Acks.LEADER) == 0


def test_ex_leader_truncates_its_divergent_tail(cluster: BrokerCluster) -> None:
    """Proves that records only the old leader appended (acks=leader once its paused
    followers had left the ISR, so no fetch carried them) are cut from its log when
    it returns as a follower: afterwards every replica holds the same bytes and no
    consumer reads them."""
    leader = create_replicated(cluster)
    old_leader = cluster.broker(leader)
    followers = [cluster.broker(node) for node in (1, 2, 3) if node != leader]
    committed = [b"committed-%d" % n for n in range(10)]
    assert produce_raw(old_leader, committed, Acks.ALL) == 0
    for broker in followers:
        assert broker.process is not None
        broker.process.send_signal(signal.SIGSTOP)
    try:
        # A fetch parked at the leader may still carry this one to a follower.
        assert produce_raw(old_leader, [b"maybe"], Acks.LEADER) == 0
        wait_state(
            cluster,
            lambda found: list(found.isr) == [leader],
            "the paused followers out of the ISR",
            observers=[old_leader],
        )
        # No follower fetch is outstanding now: these stay on the old leader only.
        for number in range(3):
            assert produce_raw(old_leader, [b"divergent-%d" % number], Acks.LEADER) == 0
        old_leader.kill()
    finally:
        for broker in followers:
            assert broker.process is not None
            broker.process.send_signal(signal.SIGCONT)
    state = wait_state(
        cluster,
        lambda found: found.leader not in (leader, -1),
        "a follower elected",
        observers=followers,
    )
    after = [b"after-%d" % n for n in range(10)]
    produce_until_accepted(cluster.broker(state.leader), after, Acks.ALL)
    old_leader.start()
    wait_state(cluster, lambda found: sorted(found.isr) == [1, 2, 3], "the ex-leader in sync")
    read = [value for _, value in consume_all(cluster.bootstrap, len(committed) + len(after))]
    assert read in (committed + after, [*committed, b"maybe", *after])
    for broker in cluster.brokers:
        broker.stop()
    replicas = [log_bytes(broker) for broker in cluster.brokers]
    assert replicas.count(replicas[0]) == 3
    assert b"divergent" not in replicas[0]


def registration(cluster: BrokerCluster, node_id: int) -> BrokerRegistration | None:
    """Broker ``node_id``'s registration as etcd holds it (None: not registered)."""
    key = f"{PREFIX}/{broker_key(node_id)}".encode()
    found = cluster.etcd.post("/v3/kv/range", {"key": base64.b64encode(key).decode()})
    assert isinstance(found, dict), found
    kvs = found.get("kvs") or []
    if not kvs:
        return None
    return decode(broker_key(node_id), base64.b64decode(kvs[0]["value"]), BrokerRegistration)


def test_registration_says_whether_the_last_stop_was_clean(cluster: BrokerCluster) -> None:
    """Proves a broker registers clean_shutdown=True after a graceful stop and False
    after a SIGKILL (the controller then drops it from the eligible leaders)."""
    broker = cluster.broker(2)
    assert registration(cluster, 2) is not None
    broker.restart()
    found = wait_until(lambda: registration(cluster, 2), TIMEOUT_S, "registered again")
    assert found.clean_shutdown
    broker.kill()
    broker.start()
    found = wait_until(lambda: registration(cluster, 2), TIMEOUT_S, "registered after a kill")
    assert not found.clean_shutdown
