"""A group member taking new partitions: where each starts when the coordinator's
OffsetFetch answers fail, against a fake coordinator."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from typing import Any

import anyio
import pytest

from client._io.cluster import Cluster
from client.errors import ErrorCode, InvalidRequestError
from client.group import GroupMembership, GroupOptions
from client.protocol.messages import OffsetFetchResponse
from client.types import TopicPartition
from tests.unit.sdk.fake_coordinator import P0, P1, fetch_answer, serve


class FakeMember:
    """The consumer side of a membership: records what it was asked to fetch from."""

    client_id = "member"
    request_timeout_ms = 30_000
    reconnect_attempts_max = 5
    busy = False

    def __init__(self) -> None:
        self.added: list[dict[TopicPartition, int | None]] = []
        self.errors: list[BaseException] = []

    def report_error(self, error: BaseException) -> None:
        self.errors.append(error)

    async def add_partitions(self, partitions: Mapping[TopicPartition, int | None]) -> None:
        self.added.append(dict(partitions))

    def freeze_partitions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {}

    def remove_partitions(self, partitions: Collection[TopicPartition]) -> None:
        return None

    def processed_positions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {}

    def current_positions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {}


def membership(cluster: Cluster, member: FakeMember) -> GroupMembership:
    group = GroupMembership(member, cluster, GroupOptions("g"), random.Random(1))
    group.session_timeout_ms = 10_000
    return group


@pytest.fixture
async def cluster() -> Any:
    async with anyio.create_task_group() as task_group:
        yield Cluster("127.0.0.1:1", task_group, reconnect_backoff_ms=0, reconnect_backoff_max_ms=0)
        task_group.cancel_scope.cancel()


@pytest.mark.parametrize(
    "code",
    [ErrorCode.COORDINATOR_NOT_AVAILABLE, ErrorCode.REQUEST_TIMED_OUT],
)
async def test_a_failed_offset_fetch_is_retried_not_reset(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any, code: ErrorCode
) -> None:
    """Proves new partitions whose OffsetFetch is first refused retriably (the
    coordinator moved; the commits are not settled) start from the committed
    offsets of the retried answer, not by auto_offset_reset."""
    member = FakeMember()
    serve(cluster, monkeypatch, [OffsetFetchResponse(error_code=code), fetch_answer(p0=42, p1=7)])
    group = membership(cluster, member)
    assert await group._assign({P0, P1})
    assert member.added == [{P0: 42, P1: 7}]
    assert group.owned == {P0, P1}


async def test_a_partition_error_in_the_offset_fetch_is_retried(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves a retriable error for one partition in the OffsetFetch body is asked
    again, and that partition starts from the answered commit."""
    member = FakeMember()
    serve(
        cluster,
        monkeypatch,
        [fetch_answer(p0=42, p1=(-1, ErrorCode.COORDINATOR_NOT_AVAILABLE)), fetch_answer(p1=7)],
    )
    group = membership(cluster, member)
    assert await group._assign({P0, P1})
    assert member.added == [{P0: 42, P1: 7}]


async def test_only_an_absent_commit_starts_by_auto_offset_reset(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves a partition answered with offset -1 (no commit) is started by
    auto_offset_reset (None), next to one that has a commit."""
    member = FakeMember()
    serve(cluster, monkeypatch, [fetch_answer(p0=42, p1=-1)])
    group = membership(cluster, member)
    assert await group._assign({P0, P1})
    assert member.added == [{P0: 42, P1: None}]


async def test_partitions_wait_for_the_next_heartbeat_when_the_coordinator_stays_away(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves partitions whose committed offsets cannot be fetched within half the
    session timeout are not started at all (not by auto_offset_reset), not owned
    (the next heartbeat answer assigns them again), and no error reaches the
    application; the next attempt, with the coordinator back, takes them."""
    member = FakeMember()
    moved = OffsetFetchResponse(error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE)
    coordinator = serve(cluster, monkeypatch, [moved])
    group = membership(cluster, member)
    start = anyio.current_time()
    assert not await group._assign({P0})
    assert anyio.current_time() - start <= group.session_timeout_ms / 2 / 1000
    assert member.added == [] and group.owned == set() and member.errors == []
    assert len(coordinator.requests) > 2
    coordinator.answers = [fetch_answer(p0=42)]
    assert await group._assign({P0})
    assert member.added == [{P0: 42}] and group.owned == {P0}


async def test_a_non_retriable_offset_fetch_error_goes_to_the_application(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves a non-retriable OffsetFetch error is reported to the application as
    its typed error, and the partitions are not started by auto_offset_reset."""
    member = FakeMember()
    serve(cluster, monkeypatch, [OffsetFetchResponse(error_code=ErrorCode.INVALID_REQUEST)])
    group = membership(cluster, member)
    assert not await group._assign({P0})
    assert member.added == []
    assert [type(error) for error in member.errors] == [InvalidRequestError]
