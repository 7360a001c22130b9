"""Replication's wire and storage on one real broker: the clean-shutdown marker, the
leader-epoch checkpoint, and the typed refusals a lone broker gives replica
fetches, foreign epochs and OffsetsForLeaderEpoch."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from broker.shutdown_marker import MARKER_FILE
from broker.storage.epoch_checkpoint import EPOCH_CHECKPOINT_FILE, read_epoch_checkpoint
from broker.testing import BrokerProcess
from client.errors import ErrorCode
from client.protocol.messages import (
    Acks,
    FetchPartition,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    OffsetForLeaderEpochPartition,
    OffsetForLeaderEpochTopic,
    OffsetsForLeaderEpochRequest,
    OffsetsForLeaderEpochResponse,
)
from client.records.builder import build_batch

RawFactory = Callable[..., Any]


def opened_cleanly(broker: BrokerProcess) -> bool:
    """What the broker logged about its previous run at this start."""
    for event in broker.log_events(since_start=True):
        if event.get("event") == "broker state opened":
            return bool(event["clean_start"])
    raise AssertionError("no 'broker state opened' line:\n" + broker.logs(since_start=True))


def test_clean_start_follows_how_the_previous_run_ended(
    broker: BrokerProcess, raw_client: RawFactory
) -> None:
    """Proves SIGTERM leaves the data dir's clean-shutdown marker (and every
    partition's epoch checkpoint), the next start reports a clean start and takes
    the marker, and a start after SIGKILL reports an unclean one."""
    assert opened_cleanly(broker)  # a new data dir
    client = raw_client(broker.address)
    client.create_topic("epochs", 1)
    response = client.produce("epochs", {0: [build_batch([b"a", b"b"])]}, acks=Acks.ALL)
    assert response is not None and response.topics[0].partitions[0].error_code == 0
    client.close()
    assert broker.stop(signal.SIGTERM) == 0
    assert (broker.data_dir / MARKER_FILE).exists()
    assert read_epoch_checkpoint(broker.data_dir / "epochs-0") == [(0, 0)]
    broker.start()
    assert opened_cleanly(broker)
    assert not (broker.data_dir / MARKER_FILE).exists()
    broker.kill()
    (broker.data_dir / "epochs-0" / EPOCH_CHECKPOINT_FILE).unlink()
    broker.start()
    assert not opened_cleanly(broker)
    client = raw_client(broker.address)
    client.produce("epochs", {0: [build_batch([b"c"])]})
    client.close()
    assert broker.stop(signal.SIGTERM) == 0
    assert read_epoch_checkpoint(broker.data_dir / "epochs-0") == [(0, 0)]


def test_lone_broker_refuses_replica_fetches_and_foreign_epochs(
    broker: BrokerProcess, raw_client: RawFactory
) -> None:
    """Proves a replica fetch to a partition without followers is NOT_REPLICA, a
    fetch naming a leader epoch the broker has not seen is UNKNOWN_LEADER_EPOCH, and
    OffsetsForLeaderEpoch answers from the epoch checkpoint -- typed answers, and
    the connection keeps serving."""
    client = raw_client(broker.address)
    client.create_topic("lone", 1)
    client.produce("lone", {0: [build_batch([b"x"] * 3)]})

    def fetch(replica_id: int, current_leader_epoch: int) -> int:
        wanted = FetchPartition(0, 0, 1 << 20, current_leader_epoch, -1)
        body = FetchRequest(
            max_wait_ms=0, topics=[FetchTopic("lone", [wanted])], replica_id=replica_id
        )
        answer = client.call(body).body
        assert isinstance(answer, FetchResponse)
        return answer.topics[0].partitions[0].error_code

    assert fetch(replica_id=5, current_leader_epoch=0) == ErrorCode.NOT_REPLICA
    assert fetch(replica_id=-1, current_leader_epoch=1) == ErrorCode.UNKNOWN_LEADER_EPOCH
    assert fetch(replica_id=-1, current_leader_epoch=0) == 0
    asked = OffsetsForLeaderEpochRequest(
        [OffsetForLeaderEpochTopic("lone", [OffsetForLeaderEpochPartition(0, 0)])]
    )
    answer = client.call(asked).body
    assert isinstance(answer, OffsetsForLeaderEpochResponse)
    result = answer.topics[0].partitions[0]
    assert (result.error_code, result.leader_epoch, result.end_offset) == (0, 0, 3)
    client.close()
