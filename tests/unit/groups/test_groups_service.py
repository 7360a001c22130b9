"""Tests for broker.groups.service and handlers: the offsets topic, appends, rebuild
after a restart and after compaction, expiry (trio, on a real TopicManager)."""

from __future__ import annotations

import random
from pathlib import Path

import trio
import trio.testing

from broker.groups.config import OFFSETS_TOPIC, GroupConfig
from broker.groups.handlers import (
    handle_delete_groups,
    handle_describe_groups,
    handle_heartbeat,
    handle_offset_commit,
    handle_offset_fetch,
)
from broker.groups.service import GroupService
from broker.storage.config import CleanupPolicy, LogConfig
from broker.topics import TopicManager
from client.errors import ErrorCode
from client.protocol.messages import (
    ConsumerGroupHeartbeatRequest,
    DeleteGroupsRequest,
    DescribeGroupsRequest,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetCommitTopic,
    OffsetFetchRequest,
)

START_MS = 1_700_000_000_000
# Tiny offsets segments so a few hundred commits roll several of them.
CONFIG = GroupConfig(offsets_topic_partitions=2, offsets_segment_bytes=2048)


class Clock:
    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms


async def open_service(data_dir: Path, clock: Clock) -> tuple[TopicManager, GroupService]:
    data_dir.mkdir(exist_ok=True)
    topics = TopicManager(data_dir, LogConfig(), clock, partitions_max=16)
    await topics.load()
    service = GroupService(topics, CONFIG, clock, random.Random(1))
    await service.load()
    return topics, service


def commit_request(
    group: str, member: str, epoch: int, offsets: dict[int, int]
) -> OffsetCommitRequest:
    partitions = [OffsetCommitPartition(p, o) for p, o in offsets.items()]
    return OffsetCommitRequest(group, member, epoch, [OffsetCommitTopic("t", partitions)])


async def test_offsets_topic_is_created_compacted_on_first_use(tmp_path: Path) -> None:
    """The first group request creates __consumer_offsets as a compacted topic; a
    commit is appended to the group's partition before it is acknowledged."""
    clock = Clock()
    topics, service = await open_service(tmp_path, clock)
    await topics.create("t", 4, {})
    assert topics.get(OFFSETS_TOPIC) is None
    joined = await handle_heartbeat(
        service, ConsumerGroupHeartbeatRequest("g", subscribed_topic_names=["t"])
    )
    assert joined.error_code == 0 and sum(len(a.partitions) for a in joined.assignment) == 4
    offsets_topic = topics.get(OFFSETS_TOPIC)
    assert offsets_topic is not None and len(offsets_topic.partitions) == 2
    assert offsets_topic.config.cleanup_policy is CleanupPolicy.COMPACT
    assert offsets_topic.config.retention_ms is None
    response = await handle_offset_commit(
        service, commit_request("g", joined.member_id, joined.member_epoch, {0: 7})
    )
    assert response.error_code == 0
    stored = sum(p.log_end_offset for p in offsets_topic.partitions)
    assert stored == 2  # the group's epoch record and the commit
    await topics.close()


async def test_rebuild_after_restart_and_compaction(tmp_path: Path) -> None:
    """Many commits, a compaction of __consumer_offsets, and a restart: the rebuilt
    coordinator has the newest offset of every partition, and deleted groups stay gone."""
    clock = Clock()
    topics, service = await open_service(tmp_path, clock)
    await topics.create("t", 4, {})
    for group in ("keep", "drop"):
        for round_number in range(60):
            request = commit_request(group, "", -1, {p: round_number * 10 + p for p in range(4)})
            assert (await handle_offset_commit(service, request)).error_code == 0
    assert (await handle_delete_groups(service, DeleteGroupsRequest(["drop"]))).results[
        0
    ].error_code == 0
    offsets_topic = topics.get(OFFSETS_TOPIC)
    assert offsets_topic is not None
    before = sum(p.stats().size_bytes for p in offsets_topic.partitions)
    for partition in offsets_topic.partitions:
        await partition._log.compact()
    after = sum(p.stats().size_bytes for p in offsets_topic.partitions)
    assert after < before / 2
    await topics.close()

    topics, service = await open_service(tmp_path, clock)
    fetched = await handle_offset_fetch(service, OffsetFetchRequest("keep"))
    assert {(p.partition, p.offset) for t in fetched.topics for p in t.partitions} == {
        (p, 590 + p) for p in range(4)
    }
    assert service.coordinator.group("drop") is None
    await topics.close()


async def test_expiry_task_expels_silent_members(tmp_path: Path) -> None:
    """The expiry task expels a member whose session passed, and describe shows the
    group empty afterwards."""
    clock = Clock()
    topics, service = await open_service(tmp_path, clock)
    await topics.create("t", 2, {})
    await handle_heartbeat(
        service,
        ConsumerGroupHeartbeatRequest("g", subscribed_topic_names=["t"], session_timeout_ms=1_000),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        clock.now_ms += 1_001
        service.deadlines_changed()
        with trio.fail_after(5):
            await trio.testing.wait_all_tasks_blocked()  # the expiry task has run
        group = service.coordinator.group("g")
        assert group is not None and not group.members
        nursery.cancel_scope.cancel()
    described = handle_describe_groups(service, DescribeGroupsRequest(["g", "missing"]))
    assert described.groups[0].state == "empty"
    assert described.groups[1].error_code == 53  # UNKNOWN_GROUP
    await topics.close()


async def test_unsupported_regex_is_answered_invalid_request(tmp_path: Path) -> None:
    """A heartbeat whose regex RE2 does not support (a backreference) is answered
    INVALID_REQUEST with a message naming RE2; no group is created."""
    topics, service = await open_service(tmp_path, Clock())
    await topics.create("orders", 1, {})
    response = await handle_heartbeat(
        service, ConsumerGroupHeartbeatRequest("g", subscribed_topic_regex=r"(or)\1ders")
    )
    assert response.error_code == ErrorCode.INVALID_REQUEST
    assert "RE2" in response.error_message
    assert service.coordinator.group("g") is None
    await topics.close()
