"""Tests for the group service on a cluster member: it serves only the groups of the
offsets partitions it leads, loads a partition's commits when it starts leading it
and drops its groups when it stops (trio, on a real TopicManager)."""

from __future__ import annotations

import random
from pathlib import Path

from broker.groups.config import OFFSETS_TOPIC, GroupConfig
from broker.groups.handlers import (
    handle_describe_groups,
    handle_heartbeat,
    handle_offset_commit,
    handle_offset_fetch,
)
from broker.groups.records import partition_for_group
from broker.groups.service import GroupService
from broker.storage.config import LogConfig
from broker.topics import TopicManager
from client.errors import ErrorCode
from client.protocol.messages import (
    ConsumerGroupHeartbeatRequest,
    DescribeGroupsRequest,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetCommitTopic,
    OffsetFetchRequest,
    OffsetFetchResponse,
)

START_MS = 1_700_000_000_000
CONFIG = GroupConfig(offsets_topic_partitions=2)


def clock() -> int:
    return START_MS


def group_on(partition: int) -> str:
    """A group id whose offsets partition is ``partition`` (of 2)."""
    for number in range(100):
        group_id = f"g{number}"
        if partition_for_group(group_id, CONFIG.offsets_topic_partitions) == partition:
            return group_id
    raise AssertionError("no group id hashes there")


async def commit(service: GroupService, group_id: str, offset: int) -> None:
    joined = await handle_heartbeat(
        service, ConsumerGroupHeartbeatRequest(group_id, subscribed_topic_names=["t"])
    )
    assert joined.error_code == 0, joined
    partitions = [OffsetCommitPartition(0, offset)]
    response = await handle_offset_commit(
        service,
        OffsetCommitRequest(
            group_id,
            joined.member_id,
            joined.member_epoch,
            [OffsetCommitTopic("t", partitions)],
        ),
    )
    assert response.error_code == 0, response


def fetched(response: OffsetFetchResponse) -> dict[int, int]:
    assert response.error_code == 0, response
    return {part.partition: part.offset for topic in response.topics for part in topic.partitions}


async def test_serves_only_the_groups_of_led_partitions(tmp_path: Path) -> None:
    """A member serves a group only once it leads (and has loaded) the group's offsets
    partition, with the commits the log holds; it drops the group when it stops
    leading it, and serves nothing while fenced."""
    first, second = group_on(0), group_on(1)
    topics = TopicManager(tmp_path, LogConfig(), clock, partitions_max=16)
    await topics.load()
    await topics.create("t", 1, {})
    single = GroupService(topics, CONFIG, clock, random.Random(1))
    await commit(single, first, 7)
    await commit(single, second, 9)
    assert topics.get(OFFSETS_TOPIC) is not None

    fenced = False
    member = GroupService(topics, CONFIG, clock, random.Random(1))
    member.coordinate_led_partitions(lambda topic, partition: not fenced)
    for group_id in (first, second):
        refused = await handle_offset_fetch(member, OffsetFetchRequest(group_id))
        assert refused.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE
        joined = await handle_heartbeat(
            member, ConsumerGroupHeartbeatRequest(group_id, subscribed_topic_names=["t"])
        )
        assert joined.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE

    await member.lead_offsets_partitions({0})
    assert fetched(await handle_offset_fetch(member, OffsetFetchRequest(first))) == {0: 7}
    refused = await handle_offset_fetch(member, OffsetFetchRequest(second))
    assert refused.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE
    described = handle_describe_groups(member, DescribeGroupsRequest([second]))
    assert described.groups[0].error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE

    fenced = True
    refused = await handle_offset_fetch(member, OffsetFetchRequest(first))
    assert refused.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE
    fenced = False

    await member.lead_offsets_partitions({1})
    assert member.coordinator.group(first) is None
    assert fetched(await handle_offset_fetch(member, OffsetFetchRequest(second))) == {0: 9}
    refused = await handle_offset_fetch(member, OffsetFetchRequest(first))
    assert refused.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE
    member.coordinator.check_invariants()
    await topics.close()
