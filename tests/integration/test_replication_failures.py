"""Replication safety across failures of a leader's own disk and of a whole cluster,
with three real brokers and etcd (tests/integration/broker_cluster.py):

- a leader whose fsyncs of one partition fail with ENOSPC (the disk seam's test
  switch, broker/storage/disk.py, with the every-append flush policy) gives the
  partition up: another ISR member is elected and acks=all produce goes on;
- after a SIGKILL of all three brokers and a restart, every partition is led
  again in a newer leader epoch, and nothing acknowledged is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from broker_cluster import BrokerCluster, call, leads, metadata, wait_until
from etcd_process import EtcdProcess, etcd_server_fixture
from test_replication import (
    FAILOVER_S,
    IDLE_MS,
    LAG_TIME_MAX_MS,
    TIMEOUT_S,
    TOPIC,
    consume_all,
    create_replicated,
    wait_state,
)

from broker.config import env_name
from broker.storage.disk import TEST_FAIL_FSYNC_SWITCH_ENV
from client.errors import DistributaryError
from client.protocol.messages import (
    CreatableTopic,
    CreateTopicsRequest,
    CreateTopicsResponse,
    PartitionMetadata,
)
from client.sync import Consumer, Producer
from client.types import TopicPartition

__all__ = ["etcd_server_fixture"]

SWITCH_FILE: Final = "fail-fsync"


@pytest.fixture(name="cluster")
def cluster_fixture(etcd_server: EtcdProcess, tmp_path: Path) -> Iterator[BrokerCluster]:
    """Three brokers that fsync every append, with the disk seam's test switch at
    ``tmp_path / SWITCH_FILE`` (absent: every fsync works)."""
    cluster = BrokerCluster(
        etcd_server, tmp_path, args=["--replica-lag-time-max-ms", str(LAG_TIME_MAX_MS)]
    )
    cluster.env = {
        TEST_FAIL_FSYNC_SWITCH_ENV: str(tmp_path / SWITCH_FILE),
        env_name("topic_defaults", "flush_policy"): "every-append",
    }
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def produce_all(cluster: BrokerCluster, values: list[bytes]) -> dict[bytes, int]:
    """Produce ``values`` (idempotent, acks=all) to TOPIC-0; the offset of each one
    acknowledged."""
    acknowledged: dict[bytes, int] = {}
    with Producer(cluster.bootstrap, linger_ms=2) as producer:
        handles = [producer.enqueue(TOPIC, value, partition=0) for value in values]
        for value, handle in zip(values, handles, strict=True):
            try:
                acknowledged[value] = handle.result(timeout=FAILOVER_S + TIMEOUT_S).offset
            except DistributaryError:
                continue  # not acknowledged: it may be lost
    return acknowledged


def check_nothing_lost(cluster: BrokerCluster, acknowledged: dict[bytes, int]) -> None:
    """Every acknowledged value is read back once, at its offset."""
    read = consume_all(cluster.bootstrap, max(acknowledged.values()) + 1)
    values_read = [value for _, value in read]
    assert len(values_read) == len(set(values_read)), "a record was duplicated"
    assert [offset for offset, _ in read] == list(range(len(read))), "offsets not dense"
    lost = [value for value, offset in acknowledged.items() if read[offset][1] != value]
    assert not lost, f"acknowledged records lost or moved: {lost[:5]}"


def test_leader_whose_disk_fails_hands_leadership_to_an_isr_member(
    cluster: BrokerCluster, tmp_path: Path
) -> None:
    """Proves a leader whose fsyncs of the partition fail stops leading it: another
    ISR member leads in a newer epoch with the failed replica out of the ISR, every
    acks=all record is acknowledged across the failover, and none is lost."""
    leader = create_replicated(cluster)
    before = [b"before-%d" % n for n in range(200)]
    acknowledged = produce_all(cluster, before)
    assert len(acknowledged) == len(before)
    epoch_before = wait_state(cluster, lambda found: len(found.isr) == 3, "ISR of 3").leader_epoch
    (tmp_path / SWITCH_FILE).write_text(f"broker-{leader}/data/{TOPIC}-0/")
    after = [b"after-%d" % n for n in range(500)]
    acknowledged_after = produce_all(cluster, after)
    assert len(acknowledged_after) == len(after), "acks=all produce failed after the failover"
    state = wait_state(
        cluster,
        lambda found: found.leader not in (leader, -1) and leader not in found.isr,
        "another replica leads, the failed one out of the ISR",
    )
    assert state.leader_epoch > epoch_before
    assert not leads(cluster.broker(leader), TOPIC, 0)
    check_nothing_lost(cluster, acknowledged | acknowledged_after)


@pytest.fixture(name="plain_cluster")
def plain_cluster_fixture(etcd_server: EtcdProcess, tmp_path: Path) -> Iterator[BrokerCluster]:
    """Three brokers with the default flush policy."""
    cluster = BrokerCluster(
        etcd_server, tmp_path, args=["--replica-lag-time-max-ms", str(LAG_TIME_MAX_MS)]
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def partition_states(cluster: BrokerCluster) -> dict[int, PartitionMetadata] | None:
    """TOPIC's partitions as every broker reports them, when all agree."""
    found: list[dict[int, PartitionMetadata]] = []
    for broker in cluster.brokers:
        for topic in metadata(broker, [TOPIC]).topics:
            if topic.name == TOPIC and topic.error_code == 0:
                found.append({p.partition: p for p in topic.partitions})
    if len(found) != len(cluster.brokers) or any(f != found[0] for f in found):
        return None
    return found[0]


def all_led(cluster: BrokerCluster, partitions: int) -> dict[int, PartitionMetadata] | None:
    """TOPIC's partitions once each has a leader that serves it."""
    states = partition_states(cluster)
    if states is None or len(states) != partitions:
        return None
    for index, state in states.items():
        if state.leader < 1 or not leads(cluster.broker(state.leader), TOPIC, index):
            return None
    return states


def read_partition(bootstrap: str, partition: int, at_least: int) -> list[tuple[int, bytes]]:
    """Every (offset, value) of one partition of TOPIC: at least ``at_least``."""
    tp = TopicPartition(TOPIC, partition)
    found: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + TIMEOUT_S
    with Consumer(bootstrap) as consumer:
        consumer.assign([tp], timeout=TIMEOUT_S)
        consumer.seek_to_beginning(tp, timeout=TIMEOUT_S)
        while True:  # until idle with enough read, or the deadline
            records = consumer.getmany(timeout_ms=IDLE_MS).get(tp, [])
            found.extend((record.offset, bytes(record.value or b"")) for record in records)
            if not records and len(found) >= at_least:
                return found
            if time.monotonic() >= deadline:
                pytest.fail(f"read {len(found)} records of {partition}, expected {at_least}")


def test_whole_cluster_sigkill_and_restart_re_elects_every_partition(
    plain_cluster: BrokerCluster,
) -> None:
    """Proves that after a SIGKILL of all three brokers and their restart, no broker
    resumes a leadership from before its restart: every partition is led again in a
    newer leader epoch, and every acknowledged record is read back at its offset."""
    cluster = plain_cluster
    partitions = 3
    body = call(cluster.broker(1), CreateTopicsRequest([CreatableTopic(TOPIC, partitions, 3, {})]))
    assert isinstance(body, CreateTopicsResponse) and body.topics[0].error_code == 0, body
    wait_until(
        lambda: (
            (states := all_led(cluster, partitions))
            and all(len(state.isr) == 3 for state in states.values())
        ),
        FAILOVER_S,
        "every partition led with an ISR of 3",
    )
    acknowledged: dict[int, dict[bytes, int]] = {}
    with Producer(cluster.bootstrap, linger_ms=2) as producer:
        handles = {
            index: [(value, producer.enqueue(TOPIC, value, partition=index)) for value in
                    (b"p%d-%d" % (index, n) for n in range(300))]
            for index in range(partitions)
        }  # fmt: skip
        for index, sent in handles.items():
            acknowledged[index] = {
                value: handle.result(timeout=TIMEOUT_S).offset for value, handle in sent
            }
    before = partition_states(cluster)
    assert before is not None
    for broker in cluster.brokers:
        broker.kill()
    for broker in cluster.brokers:
        broker.start()
    after = wait_until(
        lambda: (
            (states := all_led(cluster, partitions))
            and all(states[i].leader_epoch > before[i].leader_epoch for i in range(partitions))
            and states
        ),
        FAILOVER_S + TIMEOUT_S,
        "every partition led again in a newer epoch",
    )
    assert set(after) == set(range(partitions))
    for index, sent in acknowledged.items():
        read = read_partition(cluster.bootstrap, index, max(sent.values()) + 1)
        lost = [value for value, offset in sent.items() if read[offset][1] != value]
        assert not lost, f"partition {index}: acknowledged records lost or moved: {lost[:5]}"
