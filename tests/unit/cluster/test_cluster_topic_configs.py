"""Topic configs in a cluster (broker/cluster/topic_configs.py): an alter planned
from the stored overrides and validated as on a single node, its conditional
write, and a member's local topics following the stored overrides."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from broker.cluster.local_store import open_local_store
from broker.cluster.schema import TopicAssignment, decode, encode, topic_key
from broker.cluster.snapshot import ClusterMetadata
from broker.cluster.topic_configs import (
    apply_topic_configs,
    local_changes,
    plan_configs,
    write_configs,
)
from broker.storage.config import LogConfig
from broker.topics import FRAME_ROOM_BYTES, TOPICS_FILE, TopicManager, TopicsFile
from client.errors import InvalidConfigError, UnknownTopicOrPartitionError

FRAME_BYTES_MAX = 1024 * 1024


def manager(tmp_path: Path) -> TopicManager:
    return TopicManager(tmp_path, LogConfig(), lambda: 0, 16, FRAME_BYTES_MAX)


def cluster_with(configs: dict[str, str]) -> ClusterMetadata:
    return ClusterMetadata(
        topics={"t": TopicAssignment([[1], [2]], configs, 7)}, topic_versions={"t": 5}
    )


def test_an_alter_changes_the_stored_overrides_and_keeps_the_rest(tmp_path: Path) -> None:
    """Proves the plan starts from the stored overrides (the local topic plays no
    part), sets the keys named, replaces a key spelled another way, removes one set
    to ``default``, and keeps the replicas and creation time."""
    stored = {"retention.ms": "5000", "segment_bytes": "65536", "segment.ms": "1000"}
    altered = plan_configs(
        cluster_with(stored),
        manager(tmp_path),
        "t",
        {"retention_ms": "86400000", "segment.bytes": "default"},
    )
    assert altered.configs == {"segment.ms": "1000", "retention_ms": "86400000"}
    assert (altered.replicas, altered.created_ms) == ([[1], [2]], 7)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "blue"}, "unknown topic config key 'colour'"),
        ({"retention.ms": "soon"}, "retention.ms"),
        ({"segment.bytes": "12"}, "segment_bytes=12 is out of range"),
        ({"batch_bytes_max": str(FRAME_BYTES_MAX)}, "frame_bytes_max"),
    ],
)
def test_a_bad_alter_is_refused_as_on_a_single_node(
    tmp_path: Path, changes: dict[str, str], message: str
) -> None:
    """Proves an unknown key, a value of the wrong type or out of range, and a
    batch_bytes_max the frame limit cannot carry are INVALID_CONFIG."""
    with pytest.raises(InvalidConfigError, match=message):
        plan_configs(cluster_with({}), manager(tmp_path), "t", changes)


def test_an_alter_of_an_unknown_topic_is_refused(tmp_path: Path) -> None:
    """Proves an alter of a topic the metadata does not hold is UNKNOWN_TOPIC_OR_PARTITION."""
    with pytest.raises(UnknownTopicOrPartitionError):
        plan_configs(cluster_with({}), manager(tmp_path), "other", {"retention.ms": "1"})


async def test_an_alter_is_written_only_over_the_version_planned_from(tmp_path: Path) -> None:
    """Proves the altered topic key is written when the key still has the version the
    plan read, and nothing is written (a retriable error) when it changed meanwhile."""
    async with open_local_store(tmp_path / "metadata.json") as store:
        topic = TopicAssignment([[1]], {"retention.ms": "5000"})
        version = await store.put(topic_key("t"), encode(topic))
        altered = TopicAssignment([[1]], {"retention.ms": "9000"})
        with pytest.raises(UnknownTopicOrPartitionError, match="changed meanwhile") as refused:
            await write_configs(store, "t", version - 1, altered)
        assert refused.value.retriable
        found = await store.get(topic_key("t"))
        assert found is not None and decode("t", found.value, TopicAssignment) == topic
        revision = await write_configs(store, "t", version, altered)
        found = await store.get(topic_key("t"))
        assert found is not None and found.mod_revision == revision
        assert decode("t", found.value, TopicAssignment) == altered


def test_local_changes_turn_the_local_overrides_into_the_stored_ones() -> None:
    """Proves equal overrides need no alter, and otherwise the alter resets the keys
    the store lacks and sets every stored key."""
    assert local_changes({"retention.ms": "1"}, {"retention.ms": "1"}) == {}
    assert local_changes({"retention_ms": "1", "segment.ms": "5"}, {"retention.ms": "2"}) == {
        "retention_ms": "default",
        "segment.ms": "default",
        "retention.ms": "2",
    }


async def test_a_member_takes_the_stored_configs_into_its_local_topic(tmp_path: Path) -> None:
    """Proves apply_topic_configs alters a local topic whose overrides differ from the
    stored ones (its partitions get the new config, the topics file keeps it),
    and remembers the stored overrides it cannot take (keeping its own) until they
    change or the topic goes."""
    topics = manager(tmp_path)
    await topics.create("t", 2, {"retention.ms": "5000", "segment.ms": "1000"})
    refused: dict[str, dict[str, str]] = {}
    stored = {"retention.ms": "60000", "segment.bytes": "4096"}
    await apply_topic_configs(topics, cluster_with(stored), refused)
    local = topics.get("t")
    assert local is not None and local.record.configs == stored
    assert local.config.retention_ms == 60000 and local.config.segment_ms == LogConfig().segment_ms
    assert all(p.config == local.config for p in local.partitions)
    written = msgspec.json.decode((tmp_path / TOPICS_FILE).read_bytes(), type=TopicsFile)
    assert written.topics["t"].configs == stored

    too_big = {"batch_bytes_max": str(FRAME_BYTES_MAX - FRAME_ROOM_BYTES + 1)}
    await apply_topic_configs(topics, cluster_with(too_big), refused)
    assert refused == {"t": too_big} and local.record.configs == stored
    await apply_topic_configs(topics, cluster_with({"retention.ms": "1"}), refused)
    assert refused == {} and local.record.configs == {"retention.ms": "1"}
    await apply_topic_configs(topics, cluster_with(too_big), refused)
    await apply_topic_configs(topics, ClusterMetadata(), refused)
    assert refused == {}
    await topics.close()


def test_a_min_insync_above_the_replication_factor_is_refused(tmp_path: Path) -> None:
    """Proves an alter setting min.insync.replicas above the topic's replication
    factor (here 1) is INVALID_CONFIG: acks=all could never succeed."""
    with pytest.raises(InvalidConfigError, match="above the replication factor 1"):
        plan_configs(cluster_with({}), manager(tmp_path), "t", {"min.insync.replicas": "2"})
    altered = plan_configs(cluster_with({}), manager(tmp_path), "t", {"min.insync.replicas": "1"})
    assert altered.configs == {"min.insync.replicas": "1"}
