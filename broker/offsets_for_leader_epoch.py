"""OffsetsForLeaderEpoch: where a leader epoch ends in this leader's log (KIP-101).

A follower about to fetch asks with the epoch of its last batch and truncates its
log to where that epoch ends here, so a write only it holds never survives a
leader change (broker/replication/follower_state.py); a consumer may ask too, to
check its position after a leader change (KIP-320).  The answer comes from the
partition's leader-epoch cache (broker/replication/epochs.py ``end_offset_for``):
the largest epoch here <= the asked one, and the start of the epoch after it (the
log end for the latest).

Per partition, in order: the partition exists and is led here (NOT_LEADER); the
asker's ``current_leader_epoch``, if given, is the partition's
(FENCED_LEADER_EPOCH / UNKNOWN_LEADER_EPOCH); a follower (``replica_id`` >= 0) is
an assigned replica (NOT_REPLICA); a consumer's answer is capped at the high
watermark, and a new leader that does not know its high watermark yet (below the
start of its epoch) answers consumers OFFSET_NOT_AVAILABLE.  Never waits.
"""

from __future__ import annotations

from broker.fetch import check_leader_epoch
from broker.replication.epochs import UNDEFINED_OFFSET
from broker.state import Broker
from client.errors import (
    DistributaryError,
    NotLeaderError,
    NotReplicaError,
    OffsetNotAvailableError,
)
from client.protocol.messages import (
    OffsetForLeaderEpochPartition,
    OffsetForLeaderEpochPartitionResponse,
    OffsetForLeaderEpochTopicResponse,
    OffsetsForLeaderEpochRequest,
    OffsetsForLeaderEpochResponse,
)


def handle_offsets_for_leader_epoch(
    broker: Broker, body: OffsetsForLeaderEpochRequest
) -> OffsetsForLeaderEpochResponse:
    """Answer each partition; errors are per partition."""
    topics = []
    for asked_topic in body.topics:
        answers = [
            offset_for_leader_epoch(broker, asked_topic.name, asked, body.replica_id)
            for asked in asked_topic.partitions
        ]
        topics.append(OffsetForLeaderEpochTopicResponse(asked_topic.name, answers))
    return OffsetsForLeaderEpochResponse(topics)


def offset_for_leader_epoch(
    broker: Broker, topic: str, asked: OffsetForLeaderEpochPartition, replica_id: int
) -> OffsetForLeaderEpochPartitionResponse:
    """One partition's answer (see the module docstring)."""
    index = asked.partition
    try:
        partition = broker.topics.partition(topic, index)
        partition.check_open()
        if partition.is_follower or not broker.metadata.leads(topic, index):
            raise NotLeaderError(f"{topic}-{index}: this broker is not its leader")
        if asked.current_leader_epoch != -1:
            check_leader_epoch(partition, asked.current_leader_epoch)
        leader_state = partition.leader_state
        if replica_id >= 0:
            leadership = broker.metadata.leadership(topic, index)
            if (
                leadership is None
                or replica_id == broker.metadata.node_id
                or replica_id not in leadership.replicas
            ):
                raise NotReplicaError(f"{topic}-{index}: broker {replica_id} is not a replica")
        elif leader_state is not None and not leader_state.high_watermark_known:
            raise OffsetNotAvailableError(
                f"{topic}-{index}: the new leader's high watermark is not known yet"
            )
        epoch, end_offset = partition.epochs.end_offset_for(
            asked.leader_epoch, partition.log_end_offset
        )
    except DistributaryError as error:
        return OffsetForLeaderEpochPartitionResponse(index, int(error.code), error.message)
    if replica_id < 0 and end_offset != UNDEFINED_OFFSET:
        end_offset = min(end_offset, partition.high_watermark)
    return OffsetForLeaderEpochPartitionResponse(index, leader_epoch=epoch, end_offset=end_offset)
