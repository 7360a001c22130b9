"""Group commits and offset fetches against a fake coordinator: which answers are
retried (and the coordinator looked up again), which are raised at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from client._io.cluster import Cluster
from client.errors import (
    ConnectionClosedError,
    CoordinatorNotAvailableError,
    ErrorCode,
    FencedMemberEpochError,
    InvalidRequestError,
    NotEnoughReplicasError,
    RebalanceInProgressError,
    UnknownMemberError,
    UnknownTopicOrPartitionError,
)
from client.group_offsets import commit_offsets, fetch_committed
from client.protocol.messages import (
    OffsetCommitResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
)
from tests.unit.sdk.fake_coordinator import (
    P0,
    P1,
    commit_answer,
    committed_parts,
    fetch_answer,
    serve,
)


@pytest.fixture
async def cluster(monkeypatch: Any) -> AsyncIterator[Cluster]:
    async with anyio.create_task_group() as task_group:
        yield Cluster("127.0.0.1:1", task_group, reconnect_backoff_ms=0, reconnect_backoff_max_ms=0)
        task_group.cancel_scope.cancel()


# -- commits ------------------------------------------------------------------------


async def test_commit_retries_a_moved_coordinator_after_looking_it_up_again(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves an OffsetCommit answered COORDINATOR_NOT_AVAILABLE is sent again, to a
    coordinator found anew, and then succeeds."""
    moved = OffsetCommitResponse(error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE)
    coordinator = serve(cluster, monkeypatch, [moved, commit_answer(p0=0)])
    await commit_offsets(cluster, "g", {P0: 10})
    assert len(coordinator.requests) == 2
    assert coordinator.lookups == 2


@pytest.mark.parametrize(
    "code",
    [
        ErrorCode.REQUEST_TIMED_OUT,
        ErrorCode.NOT_ENOUGH_REPLICAS,
        ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    ],
)
async def test_commit_retries_a_transient_refusal(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any, code: ErrorCode
) -> None:
    """Proves an OffsetCommit refused for the whole request with a transient code
    (not replicated in time, too few in-sync replicas) is sent again."""
    coordinator = serve(
        cluster, monkeypatch, [OffsetCommitResponse(error_code=code), commit_answer(p0=0)]
    )
    await commit_offsets(cluster, "g", {P0: 10})
    assert [committed_parts(r) for r in coordinator.requests] == [{P0: 10}, {P0: 10}]


async def test_commit_sends_again_only_the_partitions_that_failed(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves a per-partition retriable error (NOT_ENOUGH_REPLICAS in the body) is
    retried, for that partition only."""
    coordinator = serve(
        cluster,
        monkeypatch,
        [commit_answer(p0=0, p1=ErrorCode.NOT_ENOUGH_REPLICAS), commit_answer(p1=0)],
    )
    await commit_offsets(cluster, "g", {P0: 10, P1: 20})
    assert [committed_parts(r) for r in coordinator.requests] == [{P0: 10, P1: 20}, {P1: 20}]


async def test_commit_retries_a_lost_connection(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves a commit whose connection dies twice in a row (more than the
    coordinator request's own retry) is tried again at a coordinator found anew."""
    gone = ConnectionClosedError("gone")
    coordinator = serve(cluster, monkeypatch, [gone, gone, commit_answer(p0=0)])
    await commit_offsets(cluster, "g", {P0: 10})
    assert len(coordinator.requests) == 3
    assert coordinator.lookups == 3


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (ErrorCode.UNKNOWN_MEMBER, UnknownMemberError),
        (ErrorCode.FENCED_MEMBER_EPOCH, FencedMemberEpochError),
        (ErrorCode.REBALANCE_IN_PROGRESS, RebalanceInProgressError),
    ],
)
async def test_commit_refused_to_the_member_is_raised_at_once(
    cluster: Cluster,
    monkeypatch: Any,
    autojump_clock: Any,
    code: ErrorCode,
    error_class: type[Exception],
) -> None:
    """Proves a commit refused because the member lost its place (Kafka's
    CommitFailedException cases) raises its typed error without a retry."""
    coordinator = serve(
        cluster, monkeypatch, [OffsetCommitResponse(error_code=code), commit_answer(p0=0)]
    )
    with pytest.raises(error_class):
        await commit_offsets(cluster, "g", {P0: 10}, member_id="m", member_epoch=3)
    assert len(coordinator.requests) == 1


async def test_a_refusal_after_a_failed_attempt_names_it_as_its_cause(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves a commit refused (UNKNOWN_MEMBER, at the next coordinator) after an
    attempt that reached the old coordinator and failed carries that failure as
    its __cause__ (the first attempt may still take effect), while a refusal at
    the first attempt has none (certainly not written)."""
    moved = OffsetCommitResponse(error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE)
    unknown = OffsetCommitResponse(error_code=ErrorCode.UNKNOWN_MEMBER)
    serve(cluster, monkeypatch, [moved, unknown])
    with pytest.raises(UnknownMemberError) as raised:
        await commit_offsets(cluster, "g", {P0: 10}, member_id="m", member_epoch=3)
    assert isinstance(raised.value.__cause__, CoordinatorNotAvailableError)
    serve(cluster, monkeypatch, [unknown])
    with pytest.raises(UnknownMemberError) as raised:
        await commit_offsets(cluster, "g", {P0: 10}, member_id="m", member_epoch=3)
    assert raised.value.__cause__ is None


async def test_commit_of_an_unknown_partition_is_raised_at_once(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves a partition the coordinator does not know is raised, not retried."""
    coordinator = serve(
        cluster, monkeypatch, [commit_answer(p0=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)]
    )
    with pytest.raises(UnknownTopicOrPartitionError):
        await commit_offsets(cluster, "g", {P0: 10})
    assert len(coordinator.requests) == 1


async def test_commit_retries_are_bounded_by_the_timeout(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves a commit that keeps being refused retriably raises that typed error
    once its timeout has passed, after several attempts."""
    refused = OffsetCommitResponse(error_code=ErrorCode.NOT_ENOUGH_REPLICAS)
    coordinator = serve(cluster, monkeypatch, [refused])
    start = anyio.current_time()
    with pytest.raises(NotEnoughReplicasError):
        await commit_offsets(cluster, "g", {P0: 10}, timeout_ms=3_000)
    assert anyio.current_time() - start <= 3.0
    assert len(coordinator.requests) > 2


# -- offset fetches -----------------------------------------------------------------


async def test_fetch_retries_a_moved_coordinator_after_looking_it_up_again(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves an OffsetFetch answered COORDINATOR_NOT_AVAILABLE is sent again to a
    coordinator found anew, and its answer is returned (no commit: left out)."""
    moved = OffsetFetchResponse(error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE)
    coordinator = serve(cluster, monkeypatch, [moved, fetch_answer(p0=42, p1=-1)])
    assert await fetch_committed(cluster, "g", [P0, P1]) == {P0: 42}
    assert coordinator.lookups == 2


async def test_fetch_asks_again_for_the_partitions_that_failed(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves a per-partition retriable error in an OffsetFetch answer is retried
    for that partition only, and both answers are merged."""
    coordinator = serve(
        cluster,
        monkeypatch,
        [fetch_answer(p0=42, p1=(-1, ErrorCode.REQUEST_TIMED_OUT)), fetch_answer(p1=7)],
    )
    assert await fetch_committed(cluster, "g", [P0, P1]) == {P0: 42, P1: 7}
    second = coordinator.requests[1]
    assert isinstance(second, OffsetFetchRequest)
    assert second.topics is not None and [t.partitions for t in second.topics] == [[1]]


async def test_fetch_raises_a_non_retriable_error_at_once(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves an OffsetFetch refused with a non-retriable code raises its typed error
    after one request."""
    refused = OffsetFetchResponse(error_code=ErrorCode.INVALID_REQUEST)
    coordinator = serve(cluster, monkeypatch, [refused, fetch_answer(p0=1)])
    with pytest.raises(InvalidRequestError):
        await fetch_committed(cluster, "g", [P0])
    assert len(coordinator.requests) == 1


async def test_fetch_retries_are_bounded_by_the_timeout(
    cluster: Cluster, monkeypatch: Any, autojump_clock: Any
) -> None:
    """Proves an OffsetFetch whose coordinator stays unavailable raises
    CoordinatorNotAvailableError by its timeout."""
    moved = OffsetFetchResponse(error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE)
    coordinator = serve(cluster, monkeypatch, [moved])
    start = anyio.current_time()
    with pytest.raises(CoordinatorNotAvailableError):
        await fetch_committed(cluster, "g", [P0], timeout_ms=2_000)
    assert anyio.current_time() - start <= 2.0
    assert len(coordinator.requests) > 2
