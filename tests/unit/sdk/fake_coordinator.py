"""A fake group coordinator for the SDK's unit tests: a Cluster whose coordinator
answers queued OffsetCommit / OffsetFetch bodies, and builders for those bodies."""

from __future__ import annotations

from typing import Any

from client._io.cluster import Cluster
from client.protocol.messages import (
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    OffsetCommitPartitionResponse,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetCommitTopicResponse,
    OffsetFetchPartitionResponse,
    OffsetFetchResponse,
    OffsetFetchTopicResponse,
)
from client.types import TopicPartition

P0 = TopicPartition("orders", 0)
P1 = TopicPartition("orders", 1)


class FakeCoordinator:
    """A coordinator's connection: answers each request with the next queued body
    (or raises the next queued error; the last answer repeats), and keeps what was
    asked.  ``lookups`` counts FindCoordinator requests."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[Any] = []
        self.lookups = 0
        self.closed = False

    async def request(self, body: Any, *, timeout_ms: int | None = None) -> Any:
        self.requests.append(body)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer

        class Response:
            pass

        response = Response()
        response.body = answer  # type: ignore[attr-defined]
        return response


def serve(cluster: Cluster, monkeypatch: Any, answers: list[Any]) -> FakeCoordinator:
    """Make ``cluster`` find its coordinator at one address, answering ``answers``."""
    coordinator = FakeCoordinator(answers)

    async def request_any(body: Any, *, timeout_ms: int | None = None) -> Any:
        assert isinstance(body, FindCoordinatorRequest)
        coordinator.lookups += 1
        return FindCoordinatorResponse(node_id=1, host="10.0.0.1", port=9392)

    async def connection_to(address: tuple[str, int]) -> Any:
        return coordinator

    monkeypatch.setattr(cluster, "request_any", request_any)
    monkeypatch.setattr(cluster, "connection_to", connection_to)
    return coordinator


def committed_parts(request: OffsetCommitRequest) -> dict[TopicPartition, int]:
    return {
        TopicPartition(topic.name, part.partition): part.offset
        for topic in request.topics
        for part in topic.partitions
    }


def commit_answer(**codes: int) -> OffsetCommitResponse:
    """Per-partition codes by partition name (``p0=70``)."""
    parts = [OffsetCommitPartitionResponse(int(name[1:]), code) for name, code in codes.items()]
    return OffsetCommitResponse(topics=[OffsetCommitTopicResponse("orders", parts)])


def fetch_answer(**found: int | tuple[int, int]) -> OffsetFetchResponse:
    """Per partition name: an offset (-1: no commit) or (offset, error code)."""
    parts = []
    for name, value in found.items():
        offset, code = value if isinstance(value, tuple) else (value, 0)
        parts.append(OffsetFetchPartitionResponse(int(name[1:]), offset, error_code=code))
    return OffsetFetchResponse(topics=[OffsetFetchTopicResponse("orders", parts)])
