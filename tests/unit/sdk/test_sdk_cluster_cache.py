"""The SDK's cluster cache: leaders never go back a leader epoch; groups talk to a cached coordinator."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import trio
import trio.testing

from client._io.cluster import Cluster
from client.errors import ConnectionClosedError, ErrorCode
from client.protocol.messages import (
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    MetadataResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
    PartitionMetadata,
    TopicMetadata,
)


def metadata(leaders: dict[int, tuple[int, int]], topic: str = "orders") -> MetadataResponse:
    """An answer naming, per partition, (leader, leader epoch)."""
    partitions = [
        PartitionMetadata(
            number, leader=leader, leader_epoch=epoch, replicas=[leader], isr=[leader]
        )
        for number, (leader, epoch) in leaders.items()
    ]
    return MetadataResponse(topics=[TopicMetadata(topic, partitions=partitions)])


async def test_an_older_leader_epoch_does_not_overwrite_a_newer_one() -> None:
    """Proves an answer with a lower leader epoch for a partition leaves the known
    (leader, epoch) in place, while other partitions and newer epochs are taken."""
    async with anyio.create_task_group() as task_group:
        cluster = Cluster("127.0.0.1:1", task_group)
        cluster._apply_metadata(metadata({0: (1, 5), 1: (1, 5)}), ["orders"])
        cluster.check_invariants()
        cluster._apply_metadata(metadata({0: (2, 4), 1: (2, 6)}), ["orders"])
        assert cluster.leader_for("orders", 0) == 1
        assert cluster.leader_epoch_for("orders", 0) == 5
        assert cluster.leader_for("orders", 1) == 2
        assert cluster.leader_epoch_for("orders", 1) == 6
        cached = {
            p.partition: (p.leader, p.leader_epoch) for p in cluster.topics["orders"].partitions
        }
        assert cached == {0: (1, 5), 1: (2, 6)}


async def test_invalidating_a_topic_keeps_its_epochs() -> None:
    """Proves dropping a topic from the cache (after NOT_LEADER) does not let an
    older answer back in: the leader stays unknown until a newer epoch arrives."""
    async with anyio.create_task_group() as task_group:
        cluster = Cluster("127.0.0.1:1", task_group)
        cluster._apply_metadata(metadata({0: (1, 5)}), ["orders"])
        cluster.check_invariants()
        cluster.invalidate("orders")
        cluster.check_invariants()
        assert cluster.leader_for("orders", 0) is None
        cluster._apply_metadata(metadata({0: (2, 3)}), ["orders"])
        cluster.check_invariants()
        assert cluster.leader_for("orders", 0) is None
        assert cluster.partition_counts["orders"] == 1
        cluster._apply_metadata(metadata({0: (3, 7)}), ["orders"])
        cluster.check_invariants()
        assert (cluster.leader_for("orders", 0), cluster.leader_epoch_for("orders", 0)) == (3, 7)


async def test_a_deleted_topic_forgets_its_epochs() -> None:
    """Proves a topic the cluster says is unknown forgets its epochs, so a
    re-created topic (epochs from 0 again) is taken."""
    async with anyio.create_task_group() as task_group:
        cluster = Cluster("127.0.0.1:1", task_group)
        cluster._apply_metadata(metadata({0: (1, 5)}), ["orders"])
        cluster.check_invariants()
        gone = MetadataResponse(
            topics=[TopicMetadata("orders", error_code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)]
        )
        cluster._apply_metadata(gone, ["orders"])
        cluster.check_invariants()
        assert cluster.leader_epoch_for("orders", 0) is None
        cluster._apply_metadata(metadata({0: (2, 0)}), ["orders"])
        cluster.check_invariants()
        assert cluster.leader_for("orders", 0) == 2


class FakeConnection:
    """Answers OffsetFetch with the queued bodies (or raises the queued errors)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.closed = False
        self.asked = 0

    async def request(self, body: Any, *, timeout_ms: int | None = None) -> Any:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer

        class Response:
            pass

        response = Response()
        response.body = answer  # type: ignore[attr-defined]
        return response


@pytest.fixture
def lookups() -> list[str]:
    return []


async def make_coordinated_cluster(
    task_group: Any, lookups: list[str], connection: FakeConnection, monkeypatch: Any
) -> Cluster:
    cluster = Cluster("127.0.0.1:1", task_group, reconnect_backoff_ms=0, reconnect_backoff_max_ms=0)

    async def request_any(body: Any, *, timeout_ms: int | None = None) -> Any:
        assert isinstance(body, FindCoordinatorRequest)
        lookups.append(body.group_id)
        return FindCoordinatorResponse(node_id=1, host="10.0.0.1", port=9392)

    async def connection_to(address: tuple[str, int]) -> Any:
        assert address == ("10.0.0.1", 9392)
        return connection

    monkeypatch.setattr(cluster, "request_any", request_any)
    monkeypatch.setattr(cluster, "connection_to", connection_to)
    return cluster


async def test_group_requests_reuse_one_coordinator_lookup(
    lookups: list[str], monkeypatch: Any
) -> None:
    """Proves group requests look the coordinator up once per group and go to it."""
    connection = FakeConnection(
        [OffsetFetchResponse(), OffsetFetchResponse(), OffsetFetchResponse()]
    )
    async with anyio.create_task_group() as task_group:
        cluster = await make_coordinated_cluster(task_group, lookups, connection, monkeypatch)
        for _ in range(2):
            await cluster.request_coordinator("g1", OffsetFetchRequest("g1"))
        await cluster.request_coordinator("g2", OffsetFetchRequest("g2"))
    assert lookups == ["g1", "g2"]
    assert connection.asked == 3


async def test_coordinator_is_looked_up_again_after_a_lost_connection(
    lookups: list[str], monkeypatch: Any
) -> None:
    """Proves a connection lost under a group request drops the cached coordinator:
    the retry looks it up again."""
    connection = FakeConnection([ConnectionClosedError("gone"), OffsetFetchResponse()])
    async with anyio.create_task_group() as task_group:
        cluster = await make_coordinated_cluster(task_group, lookups, connection, monkeypatch)
        body = await cluster.request_coordinator("g1", OffsetFetchRequest("g1"))
    assert isinstance(body, OffsetFetchResponse)
    assert lookups == ["g1", "g1"]


async def test_coordinator_not_available_drops_the_cached_coordinator(
    lookups: list[str], monkeypatch: Any
) -> None:
    """Proves an answer COORDINATOR_NOT_AVAILABLE makes the next request look the
    coordinator up again (the answer itself goes to the caller)."""
    refused = OffsetFetchResponse(error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE)
    connection = FakeConnection([refused, OffsetFetchResponse()])
    async with anyio.create_task_group() as task_group:
        cluster = await make_coordinated_cluster(task_group, lookups, connection, monkeypatch)
        first = await cluster.request_coordinator("g1", OffsetFetchRequest("g1"))
        assert isinstance(first, OffsetFetchResponse) and first.error_code
        await cluster.request_coordinator("g1", OffsetFetchRequest("g1"))
    assert lookups == ["g1", "g1"]


async def test_open_cluster_leaves_its_task_group_when_shut_down() -> None:
    """Proves Cluster.open's task group is left by shutdown (its tasks cancelled)."""
    cluster = await Cluster.open("127.0.0.1:1")
    cancelled = anyio.Event()

    async def background() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    cluster.task_group.start_soon(background)
    await trio.testing.wait_all_tasks_blocked()
    await cluster.shutdown()
    assert cancelled.is_set()


async def test_cached_topics_are_refreshed_once_the_metadata_is_max_age_old(
    autojump_clock: Any, monkeypatch: Any
) -> None:
    """Proves the periodic refresh asks for every cached topic once the last refresh
    covering them is max_age_ms old (not before; a refresh asked for meanwhile
    restarts the age), takes the answer (a grown partition count) and calls back."""
    asked: list[tuple[float, list[str] | None]] = []
    refreshed: list[float] = []

    async def request_any(body: Any, *, timeout_ms: int | None = None) -> Any:
        asked.append((trio.current_time(), body.topics))
        return metadata({0: (1, 0), 1: (1, 0), 2: (1, 0)})

    async with anyio.create_task_group() as task_group:
        cluster = Cluster("127.0.0.1:1", task_group)
        monkeypatch.setattr(cluster, "request_any", request_any)
        cluster._apply_metadata(metadata({0: (1, 0)}), ["orders"])
        start = trio.current_time()
        task_group.start_soon(
            cluster.refresh_metadata_periodically,
            1_000,
            lambda: refreshed.append(trio.current_time()),
        )
        await trio.sleep(0.9)
        assert asked == [] and cluster.partition_counts["orders"] == 1
        await trio.sleep(0.2)
        assert asked == [(pytest.approx(start + 1.0), ["orders"])]
        assert refreshed == [pytest.approx(start + 1.0)]
        assert cluster.partition_counts["orders"] == 3
        await trio.sleep(0.4)
        await cluster.refresh_metadata(["orders"])  # at start + 1.5: the age restarts
        await trio.sleep(0.9)
        assert len(asked) == 2
        await trio.sleep(0.2)
        assert [when for when, _ in asked] == pytest.approx([start + 1.0, start + 1.5, start + 2.5])
        task_group.cancel_scope.cancel()
