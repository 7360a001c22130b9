"""Replication safety across failures of a leader's own disk and of a whole cluster,
with three real brokers and etcd (tests/integration/broker_cluster.py):

- a leader whose fsyncs of one partition fail with ENOSPC (the disk seam's test
  switch, broker/storage/disk.py, with the every-append flush policy) gives the
  partition up: another ISR member is elected and acks=all produce goes on;
- after a SIGKILL of all three brokers and a restart, every partition is led
  again in a newer leader epoch, and nothing acknowledged is lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from broker_cluster import BrokerCluster, leads
from etcd_process import EtcdProcess, etcd_server_fixture
from test_replication import (
    FAILOVER_S,
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
from client.sync import Producer

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
