"""A consumer detects a log truncated under it by an unclean leader election (KIP-320).

Three brokers and etcd (tests/integration/broker_cluster.py).  The topic has
three replicas, min.insync.replicas 1 and unclean.leader.election.enable: with
both followers paused (SIGSTOP) and out of the ISR, the leader alone commits
records, and a consumer reads them.  The leader is then killed and the
followers resumed: one of them is elected uncleanly, without those records,
and new records take their offsets.  The consumer, paused over the failover so
that the new leader's log is past its position when it fetches again, must
notice the truncation by leader epoch -- not silently skip the new records at
the offsets it already read, nor re-read the log from its start.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from broker_cluster import BrokerCluster
from etcd_process import EtcdProcess, etcd_server_fixture
from test_replication import (
    LAG_TIME_MAX_MS,
    TIMEOUT_S,
    TOPIC,
    create_replicated,
    produce_raw,
    produce_until_accepted,
    wait_state,
)

from client.errors import LogTruncationError
from client.protocol.messages import Acks
from client.sync import Consumer
from client.types import TopicPartition

__all__ = ["etcd_server_fixture"]

TP: Final = TopicPartition(TOPIC, 0)
CONFIGS: Final = {"min.insync.replicas": "1", "unclean.leader.election.enable": "true"}
COMMITTED: Final = [b"committed-%d" % n for n in range(10)]
LOST: Final = [b"lost-%d" % n for n in range(20)]  # only the old leader ever holds them
NEW: Final = [b"new-%d" % n for n in range(60)]


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


def read_until(consumer: Consumer, count: int) -> list[tuple[int, bytes]]:
    """``count`` (offset, value) pairs of TP, within TIMEOUT_S."""
    found: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(found) < count:
        if time.monotonic() >= deadline:
            pytest.fail(f"read {len(found)} records, expected {count}")
        for record in consumer.getmany(timeout_ms=500).get(TP, []):
            found.append((record.offset, bytes(record.value or b"")))
    return found


def truncate_under(cluster: BrokerCluster, consumer: Consumer) -> int:
    """Commit LOST on the leader alone, let ``consumer`` read everything, pause it,
    elect a follower uncleanly and write NEW there.  Returns the offset where the
    new leader's log parts from what the consumer read."""
    leader = create_replicated(cluster, CONFIGS)
    old_leader = cluster.broker(leader)
    followers = [cluster.broker(node) for node in (1, 2, 3) if node != leader]
    assert produce_raw(old_leader, COMMITTED, Acks.ALL) == 0
    wait_state(cluster, lambda found: len(found.isr) == 3, "the followers hold COMMITTED")
    consumer.assign([TP], timeout=TIMEOUT_S)
    consumer.seek(TP, 0)
    for broker in followers:
        assert broker.process is not None
        broker.process.send_signal(signal.SIGSTOP)
    try:
        wait_state(
            cluster,
            lambda found: list(found.isr) == [leader],
            "the paused followers out of the ISR",
            observers=[old_leader],
        )
        # The leader alone is the ISR (min ISR 1): it commits these by itself.
        assert produce_raw(old_leader, LOST, Acks.ALL) == 0
        read = read_until(consumer, len(COMMITTED) + len(LOST))
        assert [value for _, value in read] == COMMITTED + LOST
        consumer.pause(TP)
        old_leader.kill()
    finally:
        for broker in followers:
            assert broker.process is not None
            broker.process.send_signal(signal.SIGCONT)
    state = wait_state(
        cluster,
        lambda found: found.leader not in (leader, -1),
        "a follower elected uncleanly",
        observers=followers,
    )
    new_leader = cluster.broker(state.leader)
    produce_until_accepted(new_leader, NEW, Acks.LEADER)
    # Where the new leader's log went on: NEW starts right after what it kept.
    with Consumer(new_leader.address) as reader:
        reader.assign([TP], timeout=TIMEOUT_S)
        reader.seek(TP, 0)
        kept = read_until(reader, len(COMMITTED) + len(NEW))
    divergent_offset = next(offset for offset, value in kept if value == NEW[0])
    assert divergent_offset < len(COMMITTED) + len(LOST)  # records the consumer read are gone
    assert kept[-1][0] >= len(COMMITTED) + len(LOST)  # its position is inside the new log
    return divergent_offset


def test_truncation_under_a_consumer_with_policy_none_raises_log_truncation(
    cluster: BrokerCluster,
) -> None:
    """Proves a consumer with auto_offset_reset "none" whose log is truncated below
    its position by an unclean election raises LogTruncationError naming where the
    logs part, and after a seek there reads the new leader's records in order."""
    with Consumer(cluster.broker(1).address, auto_offset_reset="none") as consumer:
        divergent_offset = truncate_under(cluster, consumer)
        consumer.resume(TP)
        deadline = time.monotonic() + TIMEOUT_S
        with pytest.raises(LogTruncationError) as raised:
            while time.monotonic() < deadline:  # until the error
                assert consumer.getmany(timeout_ms=500).get(TP, []) == []
        assert raised.value.divergent_offset == divergent_offset
        consumer.seek(TP, divergent_offset)
        read = read_until(consumer, len(NEW))
    assert read[0] == (divergent_offset, NEW[0])
    assert [value for _, value in read] == NEW


def test_truncation_under_a_consumer_with_a_policy_resumes_where_the_logs_part(
    cluster: BrokerCluster,
) -> None:
    """Proves a consumer with a reset policy whose log is truncated below its
    position moves back to where the logs part and reads every new record from
    there: none skipped, and not the whole log again."""
    with Consumer(cluster.broker(1).address, auto_offset_reset="earliest") as consumer:
        divergent_offset = truncate_under(cluster, consumer)
        consumer.resume(TP)
        read = read_until(consumer, len(NEW))
    assert read[0] == (divergent_offset, NEW[0])
    assert [value for _, value in read] == NEW
