"""Tests for DescribeGroups' log end and lag (broker/groups/handlers.py): given
only where the broker serves the partition's reads, -1 (unknown) elsewhere."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from broker.groups.config import GroupConfig
from broker.groups.handlers import handle_describe_groups, handle_offset_commit
from broker.groups.service import GroupService
from broker.storage.config import LogConfig
from broker.topics import TopicManager
from client.protocol.messages import (
    DescribedPartition,
    DescribeGroupsRequest,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetCommitTopic,
)
from client.records.builder import build_batch

START_MS = 1_700_000_000_000
RECORDS = 5


def clock() -> int:
    return START_MS


async def test_log_end_and_lag_are_unknown_where_reads_are_not_served(tmp_path: Path) -> None:
    """Proves a partition whose reads this broker serves gets its high watermark and
    lag, one it does not serve gets -1 for both (its committed offset still shown),
    and without a serves_reads check (a single node) every partition held gets them."""
    topics = TopicManager(tmp_path, LogConfig(), clock, partitions_max=16)
    await topics.load()
    await topics.create("t", 2, {})
    for index in range(2):
        payload = build_batch([b"v"] * RECORDS, timestamp_ms=START_MS)
        await topics.partition("t", index).append(memoryview(payload))
    service = GroupService(topics, GroupConfig(), clock, random.Random(1))
    partitions = [OffsetCommitPartition(0, 2), OffsetCommitPartition(1, 3)]
    committed = await handle_offset_commit(
        service, OffsetCommitRequest("g", topics=[OffsetCommitTopic("t", partitions)])
    )
    assert committed.error_code == 0, committed

    def rows(serves_reads: Callable[[str, int], bool] | None) -> list[DescribedPartition]:
        described = handle_describe_groups(service, DescribeGroupsRequest(["g"]), serves_reads)
        assert described.groups[0].error_code == 0, described
        return sorted(described.groups[0].partitions, key=lambda p: p.partition)

    first, second = rows(lambda topic, index: index == 0)
    assert (first.log_end_offset, first.lag, first.committed_offset) == (RECORDS, 3, 2)
    assert (second.log_end_offset, second.lag, second.committed_offset) == (-1, -1, 3)
    assert [(p.log_end_offset, p.lag) for p in rows(None)] == [(RECORDS, 3), (RECORDS, 2)]
    await topics.close()
