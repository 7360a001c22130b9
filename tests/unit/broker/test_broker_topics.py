"""Topic names, per-topic configs, and the topic manager's persistence (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.storage.config import FlushPolicy, LogConfig
from broker.topics import (
    TOPICS_FILE,
    TopicManager,
    config_strings,
    log_config_for,
    validate_topic_name,
)
from client.errors import (
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    StorageError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)


@pytest.mark.parametrize("name", ["a", "orders", "Orders.v2", "x_y-z", "1", "a" * 249, "..."])
def test_valid_topic_names(name: str) -> None:
    """Names of 1..249 characters from [a-zA-Z0-9._-] are accepted."""
    validate_topic_name(name)


@pytest.mark.parametrize(
    "name", ["", "a" * 250, ".", "..", "a/b", "a b", "é", "topic!", "a\x00", "../etc"]
)
def test_invalid_topic_names(name: str) -> None:
    """Empty, too long, dot directories and any other character are InvalidTopicError."""
    with pytest.raises(InvalidTopicError):
        validate_topic_name(name)


def test_log_config_overrides_accept_our_and_kafka_spellings() -> None:
    """retention.ms and retention_ms mean the same key; 'none' means no limit."""
    defaults = LogConfig()
    config = log_config_for(
        defaults,
        {
            "retention.ms": "1000",
            "segment_bytes": "4096",
            "retention.bytes": "none",
            "flush.policy": "every-append",
        },
    )
    assert config.retention_ms == 1000
    assert config.segment_bytes == 4096
    assert config.retention_bytes is None
    assert config.flush_policy is FlushPolicy.EVERY_APPEND
    assert log_config_for(defaults, {}) is defaults


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"retention.mss": "1"}, "retention.mss"),
        ({"segment_bytes": "lots"}, "segment_bytes"),
        ({"segment_bytes": "5"}, "segment_bytes"),
        ({"flush_policy": "sometimes"}, "flush_policy"),
    ],
)
def test_bad_topic_configs(overrides: dict[str, str], needle: str) -> None:
    """Unknown keys and bad values are InvalidConfigError naming the key."""
    with pytest.raises(InvalidConfigError, match=needle.replace(".", r"\.")):
        log_config_for(LogConfig(), overrides)


def test_config_strings_cover_every_field() -> None:
    """DescribeTopics shows every LogConfig field as a string."""
    strings = config_strings(LogConfig(retention_bytes=None, flush_policy=FlushPolicy.INTERVAL))
    assert set(strings) == set(LogConfig.__struct_fields__)
    assert strings["retention_bytes"] == "none"
    assert strings["flush_policy"] == "interval"


def clock() -> int:
    return 1_700_000_000_000


def manager(data_dir: Path) -> TopicManager:
    data_dir.mkdir(exist_ok=True)
    return TopicManager(data_dir, LogConfig(), clock, partitions_max=8)


async def test_create_persist_reload_delete(tmp_path: Path) -> None:
    """Created topics survive a reload with their partitions and configs; a delete
    removes the record and the directories."""
    topics = manager(tmp_path)
    await topics.load()
    await topics.create("alpha", 3, {"retention.ms": "5000"})
    await topics.create("beta", 1, {})
    assert (tmp_path / "alpha-2").is_dir()
    stored = json.loads((tmp_path / TOPICS_FILE).read_text())
    assert stored["topics"]["alpha"]["partitions"] == 3
    await topics.close()

    reloaded = manager(tmp_path)
    await reloaded.load()
    assert reloaded.names() == ["alpha", "beta"]
    alpha = reloaded.get("alpha")
    assert alpha is not None and alpha.config.retention_ms == 5000
    assert [p.index for p in alpha.partitions] == [0, 1, 2]
    await reloaded.delete("alpha")
    assert not (tmp_path / "alpha-0").exists()
    assert reloaded.names() == ["beta"]
    with pytest.raises(UnknownTopicOrPartitionError):
        reloaded.partition("alpha", 0)
    with pytest.raises(UnknownTopicOrPartitionError):
        reloaded.partition("beta", 1)
    await reloaded.close()

    again = manager(tmp_path)
    await again.load()
    assert again.names() == ["beta"]
    await again.close()


async def test_create_refuses_bad_requests(tmp_path: Path) -> None:
    """Duplicates, bad counts, bad names and bad configs are refused before any change."""
    topics = manager(tmp_path)
    await topics.load()
    await topics.create("taken", 1, {})
    with pytest.raises(TopicAlreadyExistsError):
        await topics.create("taken", 1, {})
    with pytest.raises(InvalidPartitionsError):
        await topics.create("many", 9, {})
    with pytest.raises(InvalidPartitionsError):
        await topics.create("none", 0, {})
    with pytest.raises(InvalidTopicError):
        await topics.create("bad name", 1, {})
    with pytest.raises(InvalidConfigError):
        await topics.create("cfg", 1, {"nope": "1"})
    assert topics.names() == ["taken"]
    with pytest.raises(UnknownTopicOrPartitionError):
        await topics.delete("never")
    await topics.close()


async def test_unreadable_topics_file_is_a_storage_error(tmp_path: Path) -> None:
    """A damaged topics.json stops the load with StorageError naming the file."""
    (tmp_path / TOPICS_FILE).write_text("{not json")
    with pytest.raises(StorageError, match=TOPICS_FILE):
        await manager(tmp_path).load()


async def test_alter_configs_persists_and_reaches_open_partitions(tmp_path: Path) -> None:
    """An alter changes the named keys (any spelling), 'default' removes an
    override, the open partitions get the new config, and a reload keeps it."""
    topics = manager(tmp_path)
    await topics.load()
    await topics.create("alpha", 2, {"retention.ms": "5000", "segment_bytes": "65536"})
    await topics.alter_configs("alpha", {"retention_ms": "9000", "segment.bytes": "default"})
    topic = topics.get("alpha")
    assert topic is not None
    assert topic.record.configs == {"retention_ms": "9000"}
    assert topic.config.retention_ms == 9000
    assert topic.config.segment_bytes == LogConfig().segment_bytes
    assert all(p.config is topic.config for p in topic.partitions)
    await topics.close()
    reloaded = manager(tmp_path)
    await reloaded.load()
    again = reloaded.get("alpha")
    assert again is not None and again.config.retention_ms == 9000
    await reloaded.close()


async def test_alter_configs_validates_as_at_creation(tmp_path: Path) -> None:
    """A bad key or value, a batch_bytes_max over the frame limit, or a missing
    topic is refused and nothing changes."""
    topics = manager(tmp_path)
    await topics.load()
    await topics.create("alpha", 1, {})
    with pytest.raises(InvalidConfigError, match="unknown topic config"):
        await topics.alter_configs("alpha", {"colour": "blue"})
    with pytest.raises(InvalidConfigError, match="frame_bytes_max"):
        await topics.alter_configs("alpha", {"batch_bytes_max": str(1 << 30)})
    with pytest.raises(UnknownTopicOrPartitionError):
        await topics.alter_configs("beta", {"retention.ms": "1"})
    topic = topics.get("alpha")
    assert topic is not None and topic.record.configs == {}
    await topics.close()


async def test_batch_bytes_max_must_fit_the_frame_limit(tmp_path: Path) -> None:
    """A topic batch_bytes_max above what frame_bytes_max can carry is refused at
    creation, naming both limits; one that fits is accepted, and a topic that sets
    none takes the built-in default (the frame limit is then the tighter one)."""
    data_dir = tmp_path / "small"
    data_dir.mkdir()
    small = TopicManager(data_dir, LogConfig(), clock, partitions_max=8, frame_bytes_max=8 << 20)
    await small.load()
    with pytest.raises(InvalidConfigError, match="batch_bytes_max=6291456 does not fit") as raised:
        await small.create("big", 1, {"batch_bytes_max": str(6 << 20)})
    assert "limits.frame_bytes_max=8388608" in raised.value.message
    await small.create("fits", 1, {"batch_bytes_max": str(2 << 20)})
    await small.create("plain", 1, {})
    await small.close()


async def test_add_partitions_opens_new_logs_and_refuses_a_decrease(tmp_path: Path) -> None:
    """add_partitions raises the total, opens the new logs, persists the count;
    a count not above today's or above the maximum is InvalidPartitionsError."""
    topics = manager(tmp_path)
    await topics.load()
    await topics.create("alpha", 2, {"retention.ms": "5000"})
    await topics.add_partitions("alpha", 4)
    assert [p.index for p in topics.get("alpha").partitions] == [0, 1, 2, 3]  # type: ignore[union-attr]
    assert topics.partition("alpha", 3).config.retention_ms == 5000
    for count in (4, 3):
        with pytest.raises(InvalidPartitionsError, match="cannot be removed"):
            await topics.add_partitions("alpha", count)
    with pytest.raises(InvalidPartitionsError, match="topic_partitions_max"):
        await topics.add_partitions("alpha", 9)
    with pytest.raises(UnknownTopicOrPartitionError):
        await topics.add_partitions("beta", 2)
    await topics.close()
    reloaded = manager(tmp_path)
    await reloaded.load()
    assert len(reloaded.get("alpha").partitions) == 4  # type: ignore[union-attr]
    assert (tmp_path / "alpha-3").is_dir()
    await reloaded.close()
