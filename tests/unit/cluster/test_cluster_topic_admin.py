"""Growing a cluster topic (CreatePartitions): the plan (validation and placement of
the new partitions) and its conditional write, against the local store."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from broker.cluster.local_store import open_local_store
from broker.cluster.schema import (
    BrokerRegistration,
    PartitionState,
    TopicAssignment,
    decode,
    encode,
    state_key,
    topic_key,
)
from broker.cluster.snapshot import ClusterMetadata
from broker.cluster.topic_admin import plan_partitions, write_partitions
from broker.storage.config import LogConfig
from broker.topics import TopicManager
from client.errors import (
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    UnknownTopicOrPartitionError,
)


def cluster_of(nodes: list[int], topic: TopicAssignment) -> ClusterMetadata:
    return ClusterMetadata(
        brokers={n: BrokerRegistration(n, "127.0.0.1", 9000 + n) for n in nodes},
        topics={"t": topic},
        topic_versions={"t": 5},
    )


def test_new_partitions_continue_the_round_robin_of_leaders(tmp_path: Path) -> None:
    """Proves a 3-partition topic grown to 7 keeps its partitions, and the new ones'
    preferred leaders go on round-robin after the last one's, with the topic's
    replication factor and configs."""
    topics = TopicManager(tmp_path, LogConfig(), lambda: 0, 16)
    topic = TopicAssignment([[2, 3], [3, 1], [1, 2]], {"retention.ms": "1000"}, 7)
    grown = plan_partitions(cluster_of([1, 2, 3], topic), topics, "t", 7)
    assert grown.replicas[:3] == topic.replicas
    assert [r[0] for r in grown.replicas[3:]] == [2, 3, 1, 2]
    assert all(len(set(r)) == 2 for r in grown.replicas)
    assert (grown.configs, grown.created_ms) == (topic.configs, 7)


def test_growth_is_refused_with_typed_errors(tmp_path: Path) -> None:
    """Proves an unknown topic, a count not above today's, a count above the broker's
    maximum and a replication factor above the live brokers are refused."""
    topics = TopicManager(tmp_path, LogConfig(), lambda: 0, 16)
    metadata = cluster_of([1, 2, 3], TopicAssignment([[1, 2], [2, 3]]))
    with pytest.raises(UnknownTopicOrPartitionError):
        plan_partitions(metadata, topics, "other", 4)
    with pytest.raises(InvalidPartitionsError, match="cannot be removed"):
        plan_partitions(metadata, topics, "t", 2)
    with pytest.raises(InvalidPartitionsError, match="topic_partitions_max"):
        plan_partitions(metadata, topics, "t", 17)
    with pytest.raises(InvalidReplicationFactorError):
        plan_partitions(cluster_of([1], TopicAssignment([[1, 2]])), topics, "t", 2)


async def test_growth_is_written_in_one_conditional_transaction(tmp_path: Path) -> None:
    """Proves the grown topic key and the new partitions' states are written when the
    topic key still has the version planned from, and nothing is written (a retriable
    error) when it changed meanwhile."""
    async with open_local_store(tmp_path / "metadata.json") as store:
        topic = TopicAssignment([[1]])
        version = await store.put(topic_key("t"), encode(topic))
        grown = msgspec.structs.replace(topic, replicas=[[1], [2], [3]])
        with pytest.raises(UnknownTopicOrPartitionError, match="changed meanwhile") as refused:
            await write_partitions(store, "t", version - 1, 1, grown)
        assert refused.value.retriable
        assert await store.get(state_key("t", 1)) is None
        revision = await write_partitions(store, "t", version, 1, grown)
        item = await store.get(topic_key("t"))
        assert item is not None and item.mod_revision == revision
        assert decode(item.key, item.value, TopicAssignment).replicas == [[1], [2], [3]]
        for index, leader in ((1, 2), (2, 3)):
            state = await store.get(state_key("t", index))
            assert state is not None
            assert decode(state.key, state.value, PartitionState) == PartitionState(
                leader, 0, [leader]
            )
