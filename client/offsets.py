"""Offsets by time: ListOffsets for the consumer, and resolving a Fetcher's positions.

:func:`list_offsets` asks each partition's leader where a timestamp falls
(``EARLIEST_TIMESTAMP`` -2: the log start, ``LATEST_TIMESTAMP`` -1: the log end),
grouping the partitions per leader and naming the leader epoch the metadata
gives (a deposed leader refuses it), retrying on connection trouble and
dropping a topic's cached metadata when its leader moved.
:func:`resolve_positions` turns the reset policies and timestamps a
:class:`~client.fetcher.Fetcher` waits on into positions with it.
"""

from __future__ import annotations

from collections.abc import Iterable

from client._io.cluster import Cluster
from client.errors import (
    FencedLeaderEpochError,
    NotLeaderError,
    UnknownLeaderEpochError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.fetcher import Fetcher
from client.protocol.messages import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsetsTopic,
)
from client.types import TopicPartition

# Errors after which the topic's metadata is loaded again before the next try.
_LEADER_MAY_HAVE_MOVED = (
    NotLeaderError,
    UnknownTopicOrPartitionError,
    FencedLeaderEpochError,
    UnknownLeaderEpochError,
)


async def list_offsets(
    cluster: Cluster, targets: dict[TopicPartition, int], *, attempts_max: int
) -> dict[TopicPartition, tuple[int, int]]:
    """``(offset, timestamp_ms)`` per partition for its target timestamp; offset -1:
    no record at or after it.  Raises the first failed partition's typed error
    (NotLeaderError / UnknownTopicOrPartitionError after the retries)."""

    async def attempt() -> dict[TopicPartition, tuple[int, int]]:
        by_leader: dict[int, dict[str, list[ListOffsetsPartition]]] = {}
        for tp, timestamp in targets.items():
            if cluster.leader_for(tp.topic, tp.partition) is None:
                await cluster.topic_metadata(tp.topic)
            leader = cluster.leader_for(tp.topic, tp.partition)
            topics = by_leader.setdefault(leader if leader is not None else -1, {})
            epoch = cluster.leader_epoch_for(tp.topic, tp.partition)
            topics.setdefault(tp.topic, []).append(
                ListOffsetsPartition(tp.partition, timestamp, -1 if epoch is None else epoch)
            )
        offsets: dict[TopicPartition, tuple[int, int]] = {}
        for leader, topics in by_leader.items():
            connection = await cluster.connection_for_node(leader)
            response = await connection.request(
                ListOffsetsRequest(
                    [ListOffsetsTopic(name, parts) for name, parts in topics.items()]
                )
            )
            body = response.body
            assert isinstance(body, ListOffsetsResponse)
            for topic in body.topics:
                for part in topic.partitions:
                    if part.error_code:
                        error = error_for_code(part.error_code, part.error_message)
                        if isinstance(error, _LEADER_MAY_HAVE_MOVED):
                            cluster.invalidate(topic.name)
                        raise error
                    offsets[TopicPartition(topic.name, part.partition)] = (
                        part.offset,
                        part.timestamp_ms,
                    )
        return offsets

    return await cluster.call_with_retries(attempt, attempts_max=attempts_max)


async def resolve_positions(
    cluster: Cluster, fetcher: Fetcher, partitions: Iterable[TopicPartition], *, attempts_max: int
) -> None:
    """Resolve the positions of ``partitions`` that wait for one (a policy or a
    timestamp; a timestamp after every record resolves to the log end).  Raises
    the typed error of the lookup."""
    targets, seek_counts = fetcher.resolve_targets(partitions)
    if not targets:
        return
    found = await list_offsets(cluster, targets, attempts_max=attempts_max)
    again = fetcher.apply_resolved(
        {tp: offset for tp, (offset, _timestamp_ms) in found.items()}, seek_counts
    )
    if again:
        found = await list_offsets(cluster, again, attempts_max=attempts_max)
        fetcher.apply_resolved(
            {tp: offset for tp, (offset, _timestamp_ms) in found.items()}, seek_counts
        )
