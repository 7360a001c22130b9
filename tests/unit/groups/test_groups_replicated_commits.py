"""Tests for commits on a replicated offsets partition: a commit is acknowledged, and
shown by OffsetFetch, only once the partition's high watermark covers its record;
a failed one leaves the previous commit; a new leader holds its unreplicated tail
(trio, on a real TopicManager whose offsets partition leads a follower that the
test moves by hand)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.groups.config import GroupConfig
from broker.groups.handlers import (
    handle_describe_groups,
    handle_offset_commit,
    handle_offset_fetch,
)
from broker.groups.service import GroupService
from broker.partition import Partition
from broker.replication.leader_state import LeaderState
from broker.storage.config import LogConfig
from broker.topics import TopicManager
from client.errors import ErrorCode
from client.protocol.messages import (
    ADMIN_COMMIT_EPOCH,
    DescribeGroupsRequest,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetCommitTopic,
    OffsetFetchRequest,
    OffsetFetchResponse,
)
from client.types import TopicPartition

NOW_MS = 1_700_000_000_000
GROUP = "g"
NODE, FOLLOWER = 1, 2
CONFIG = GroupConfig(offsets_topic_partitions=2)


def clock() -> int:
    return NOW_MS


@dataclass
class Coordinator:
    topics: TopicManager
    service: GroupService
    partition: Partition
    leading: bool = True

    async def lead(self, epoch: int, isr: tuple[int, ...] = (NODE, FOLLOWER)) -> None:
        """Lead the group's offsets partition at ``epoch`` with one follower (min ISR 2),
        and coordinate it."""
        partition = self.partition
        await partition.become_leader(
            epoch,
            LeaderState(
                node_id=NODE,
                leader_epoch=epoch,
                replicas=(NODE, FOLLOWER),
                isr=isr,
                log_end_offset=partition.log_end_offset,
                high_watermark=partition.high_watermark,
                epoch_start_offset=partition.log_end_offset,
                now_ms=NOW_MS,
                min_insync_replicas=2,
            ),
        )
        self.leading = True
        await self.service.lead_offsets_partitions({partition.index})

    def replicate(self) -> None:
        """The follower fetches up to the leader's log end: the high watermark moves there."""
        self.partition.follower_fetched(FOLLOWER, self.partition.log_end_offset, NOW_MS)


async def open_coordinator(data_dir: Path) -> Coordinator:
    topics = TopicManager(data_dir, LogConfig(), clock, partitions_max=16)
    await topics.load()
    await topics.create("t", 1, {})
    service = GroupService(topics, CONFIG, clock, random.Random(1))
    topic = await service.offsets_topic()
    coordinator = Coordinator(topics, service, topic.partitions[service.offsets_partition(GROUP)])
    service.coordinate_led_partitions(lambda topic, partition: coordinator.leading)
    await coordinator.lead(1)
    return coordinator


async def commit(service: GroupService, offset: int) -> OffsetCommitResponse:
    """An admin commit of ``offset`` for t-0 (the group has no members)."""
    return await handle_offset_commit(
        service,
        OffsetCommitRequest(
            GROUP,
            "",
            ADMIN_COMMIT_EPOCH,
            [OffsetCommitTopic("t", [OffsetCommitPartition(0, offset)])],
        ),
    )


def committed(service: GroupService) -> int | None:
    """t-0's commit as the coordinator's state holds it (what OffsetFetch would answer)."""
    found = service.coordinator.fetch_offsets(GROUP).get(TopicPartition("t", 0))
    return None if found is None else found.offset


def fetched(response: OffsetFetchResponse) -> dict[int, int]:
    assert response.error_code == 0, response
    return {part.partition: part.offset for topic in response.topics for part in topic.partitions}


def error_code(response: OffsetCommitResponse) -> int:
    codes = {response.error_code} | {
        part.error_code for topic in response.topics for part in topic.partitions
    }
    codes.discard(0)
    assert len(codes) <= 1, response
    return codes.pop() if codes else 0


async def replicated_commit(coordinator: Coordinator, offset: int) -> None:
    """Commit ``offset`` and let the follower confirm it."""
    answers: list[OffsetCommitResponse] = []

    async def run() -> None:
        answers.append(await commit(coordinator.service, offset))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        coordinator.replicate()
    assert error_code(answers[0]) == 0, answers


async def test_offset_fetch_never_sees_a_pending_commit(tmp_path: Path) -> None:
    """While a commit's record is not replicated, neither the commit's answer nor an
    OffsetFetch's comes, and the coordinator's state (DescribeGroups) keeps the
    previous commit; once the follower has it, both answer the new offset."""
    coordinator = await open_coordinator(tmp_path)
    service = coordinator.service
    await replicated_commit(coordinator, 5)
    answers: list[OffsetCommitResponse] = []
    fetches: list[OffsetFetchResponse] = []

    async def run_commit() -> None:
        answers.append(await commit(service, 9))

    async def run_fetch() -> None:
        fetches.append(await handle_offset_fetch(service, OffsetFetchRequest(GROUP)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_commit)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(run_fetch)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [] and fetches == []
        assert committed(service) == 5
        described = handle_describe_groups(service, DescribeGroupsRequest([GROUP]))
        assert [row.committed_offset for row in described.groups[0].partitions] == [5]
        service.check_invariants()
        coordinator.replicate()
    assert error_code(answers[0]) == 0
    assert fetched(fetches[0]) == {0: 9}
    assert committed(service) == 9
    service.check_invariants()
    await coordinator.topics.close()


async def test_a_commit_lost_with_the_leadership_keeps_the_previous_one(tmp_path: Path) -> None:
    """A commit whose partition changes leader before the follower has it answers
    COORDINATOR_NOT_AVAILABLE, and the coordinator's state keeps the previous commit."""
    coordinator = await open_coordinator(tmp_path)
    service = coordinator.service
    await replicated_commit(coordinator, 5)
    answers: list[OffsetCommitResponse] = []

    async def run_commit() -> None:
        answers.append(await commit(service, 9))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_commit)
        await trio.testing.wait_all_tasks_blocked()
        await coordinator.partition.become_follower(2)
    assert error_code(answers[0]) == ErrorCode.COORDINATOR_NOT_AVAILABLE
    assert committed(service) == 5
    service.check_invariants()
    await coordinator.topics.close()


async def test_a_timed_out_commit_keeps_the_previous_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A commit the follower never confirms answers REQUEST_TIMED_OUT; an OffsetFetch
    meanwhile answers the previous commit after its bounded wait, and so does one
    after the failure."""
    coordinator = await open_coordinator(tmp_path)
    service = coordinator.service
    await replicated_commit(coordinator, 5)
    answers: list[OffsetCommitResponse] = []
    fetches: list[OffsetFetchResponse] = []

    async def run_commit() -> None:
        answers.append(await commit(service, 9))

    async def run_fetch() -> None:
        fetches.append(await handle_offset_fetch(service, OffsetFetchRequest(GROUP)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_commit)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(run_fetch)
    assert error_code(answers[0]) == ErrorCode.REQUEST_TIMED_OUT
    assert fetched(fetches[0]) == {0: 5}
    assert fetched(await handle_offset_fetch(service, OffsetFetchRequest(GROUP))) == {0: 5}
    service.check_invariants()
    await coordinator.topics.close()


async def test_a_commit_below_the_min_isr_is_refused_before_appending(tmp_path: Path) -> None:
    """With fewer in-sync replicas than the min ISR a commit answers
    NOT_ENOUGH_REPLICAS at once and appends nothing."""
    coordinator = await open_coordinator(tmp_path)
    await coordinator.partition.become_follower(2)
    await coordinator.lead(3, isr=(NODE,))
    end = coordinator.partition.log_end_offset
    with trio.fail_after(1):
        answer = await commit(coordinator.service, 9)
    assert error_code(answer) == ErrorCode.NOT_ENOUGH_REPLICAS
    assert coordinator.partition.log_end_offset == end
    assert committed(coordinator.service) is None
    await coordinator.topics.close()


@pytest.mark.parametrize("reload", [False, True])
async def test_a_new_leader_holds_its_unreplicated_tail(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, reload: bool
) -> None:
    """A broker that starts leading an offsets partition whose log ends with a commit
    above the high watermark serves the previous commit until the follower has
    that record, then the newer one (``reload``: from a fresh coordinator)."""
    coordinator = await open_coordinator(tmp_path)
    await replicated_commit(coordinator, 5)
    timed_out = await commit(coordinator.service, 9)
    assert error_code(timed_out) == ErrorCode.REQUEST_TIMED_OUT
    if reload:
        coordinator.service = GroupService(coordinator.topics, CONFIG, clock, random.Random(2))
        coordinator.service.coordinate_led_partitions(lambda topic, partition: True)
    service = coordinator.service
    await coordinator.partition.become_follower(2)
    await service.lead_offsets_partitions(set())
    await coordinator.lead(3)
    assert committed(service) == 5
    service.check_invariants()
    coordinator.replicate()
    assert fetched(await handle_offset_fetch(service, OffsetFetchRequest(GROUP))) == {0: 9}
    service.check_invariants()
    await coordinator.topics.close()


async def test_offset_fetch_waits_for_a_held_tail(tmp_path: Path) -> None:
    """An OffsetFetch on a new leader whose tail holds the group's newest commit waits
    for the follower to have it and answers it."""
    coordinator = await open_coordinator(tmp_path)
    service = coordinator.service
    await replicated_commit(coordinator, 5)
    with trio.move_on_after(0.01):
        await commit(service, 9)  # cancelled while waiting for the follower
    await coordinator.partition.become_follower(2)
    await service.lead_offsets_partitions(set())
    await coordinator.lead(3)
    fetches: list[OffsetFetchResponse] = []

    async def run_fetch() -> None:
        fetches.append(await handle_offset_fetch(service, OffsetFetchRequest(GROUP)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_fetch)
        await trio.testing.wait_all_tasks_blocked()
        assert fetches == []
        coordinator.replicate()
    assert fetched(fetches[0]) == {0: 9}
    await coordinator.topics.close()
