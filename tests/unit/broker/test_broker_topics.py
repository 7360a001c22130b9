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
