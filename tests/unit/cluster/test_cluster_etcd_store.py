"""The etcd store and its gateway client against scripted HTTP answers (httpx's
MockTransport): endpoint failover, retries, the gateway's JSON quirks, watch resume.
The same store against a real etcd is in tests/integration/test_metadata_store_*.py."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import trio

from broker.cluster.etcd_gateway import EtcdGateway
from broker.cluster.etcd_store import EtcdStore
from broker.cluster.store import (
    Compare,
    LeaseLostError,
    Put,
    RevisionCompactedError,
    StoreUnavailableError,
    VersionConflictError,
    WriteOutcomeUnknownError,
)

A = "http://a:1"
B = "http://b:1"
PREFIX = "c/"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kv(key: str, value: str, create: int, mod: int) -> dict[str, str]:
    # As the gateway sends them: base64 bytes, 64-bit integers as strings.
    return {
        "key": b64(PREFIX + key),
        "value": b64(value),
        "create_revision": str(create),
        "mod_revision": str(mod),
    }


Answer = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeEtcd:
    """Answers requests by (endpoint, path) from a script; records every request."""

    answers: dict[tuple[str, str], list[Answer]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)

    def on(self, endpoint: str, path: str, *answers: Answer) -> None:
        self.answers.setdefault((endpoint, path), []).extend(answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        endpoint = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        body = json.loads(request.content) if request.content else {}
        self.requests.append((endpoint, request.url.path, body))
        queue = self.answers.get((endpoint, request.url.path))
        if not queue:
            raise httpx.ConnectError("connection refused", request=request)
        return queue.pop(0)(request)


def ok(body: object) -> Answer:
    return lambda request: httpx.Response(200, json=body)


def lines(*messages: object) -> Answer:
    content = b"".join(json.dumps(message).encode() + b"\n" for message in messages)
    return lambda request: httpx.Response(200, content=content)


def timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def refuse(code: int, message: str, status: int) -> Answer:
    return lambda request: httpx.Response(
        status, json={"error": message, "code": code, "message": message}
    )


@pytest.fixture
async def fake() -> FakeEtcd:
    return FakeEtcd()


@pytest.fixture
async def store(fake: FakeEtcd) -> AsyncIterator[EtcdStore]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        yield EtcdStore(EtcdGateway(http, [A, B]), "c")


HEADER = {"header": {"revision": "9"}}


async def test_a_refused_connection_moves_to_the_next_endpoint(
    fake: FakeEtcd, store: EtcdStore
) -> None:
    """Proves a request that cannot connect is retried on the next endpoint, and later
    requests stay there."""
    fake.on(B, "/v3/kv/range", ok({**HEADER, "kvs": [kv("k", "v", 3, 4)], "count": "1"}))
    fake.on(B, "/v3/kv/range", ok(HEADER))
    item = await store.get("k")
    assert item is not None and (item.value, item.create_revision, item.mod_revision) == (
        b"v",
        3,
        4,
    )
    assert await store.get("other") is None
    assert [endpoint for endpoint, _, _ in fake.requests] == [A, B, B]
    assert fake.requests[0][2] == {"key": b64("c/k")}


async def test_no_endpoint_answering_raises_store_unavailable(
    fake: FakeEtcd, store: EtcdStore
) -> None:
    """Proves the retries are bounded and end in StoreUnavailableError."""
    with trio.fail_after(5), pytest.raises(StoreUnavailableError):
        await store.get("k")
    assert len(fake.requests) == 4  # two rounds over two endpoints


async def test_an_unanswered_read_is_retried_elsewhere(fake: FakeEtcd, store: EtcdStore) -> None:
    """Proves a timed-out read (harmless to repeat) goes to the next endpoint."""
    fake.on(A, "/v3/kv/range", timeout)
    fake.on(B, "/v3/kv/range", ok(HEADER))
    assert await store.get("k") is None
    assert [endpoint for endpoint, _, _ in fake.requests] == [A, B]


async def test_an_unanswered_conditional_write_is_not_repeated(
    fake: FakeEtcd, store: EtcdStore
) -> None:
    """Proves a CAS whose answer timed out raises WriteOutcomeUnknownError instead of
    being sent again (it may have been applied)."""
    fake.on(A, "/v3/kv/txn", timeout)
    with pytest.raises(WriteOutcomeUnknownError):
        await store.put("k", b"v", expected_version=0)
    assert len(fake.requests) == 1


async def test_unavailable_answers_move_on_and_other_refusals_do_not(
    fake: FakeEtcd, store: EtcdStore
) -> None:
    """Proves etcd's "unavailable" answer is retried on the next endpoint, while a
    refusal such as a lease not found is final and typed."""
    fake.on(A, "/v3/kv/put", refuse(14, "etcdserver: no leader", 503))
    fake.on(B, "/v3/kv/put", ok(HEADER))
    assert await store.put("k", b"v") == 9
    fake.on(B, "/v3/kv/put", refuse(5, "etcdserver: requested lease not found", 404))
    with pytest.raises(LeaseLostError) as lost:
        await store.put("k", b"v", lease=0x1234)
    assert lost.value.lease_id == 0x1234
    assert fake.requests[-1][2]["lease"] == 0x1234


async def test_a_failed_txn_reports_the_actual_versions(fake: FakeEtcd, store: EtcdStore) -> None:
    """Proves a txn answer without `succeeded` (the gateway omits false) is a conflict
    carrying the versions read in the failure branch (0 for an absent key)."""
    range_answer = {"response_range": {"kvs": [kv("a", "x", 2, 7)], "count": "1"}}
    fake.on(A, "/v3/kv/txn", ok({**HEADER, "responses": [range_answer, {"response_range": {}}]}))
    with pytest.raises(VersionConflictError) as conflict:
        await store.txn([Compare("a", 5), Compare("b", 0)], [Put("a", b"y")])
    assert conflict.value.actual_versions == {"a": 7, "b": 0}
    sent = fake.requests[0][2]
    assert sent["compare"] == [
        {"key": b64("c/a"), "target": "MOD", "result": "EQUAL", "mod_revision": 5},
        {"key": b64("c/b"), "target": "MOD", "result": "EQUAL", "mod_revision": 0},
    ]
    assert sent["success"] == [{"request_put": {"key": b64("c/a"), "value": b64("y")}}]


async def test_a_keepalive_answered_without_ttl_means_the_lease_is_lost(
    fake: FakeEtcd, store: EtcdStore
) -> None:
    """Proves the gateway's answer to a keepalive on an expired lease (HTTP 200, an
    id, no TTL) raises LeaseLostError, and a normal answer returns the TTL."""
    fake.on(A, "/v3/lease/keepalive", lines({"result": {**HEADER, "ID": "77", "TTL": "5"}}))
    fake.on(A, "/v3/lease/keepalive", lines({"result": {**HEADER, "ID": "77"}}))
    assert await store.keep_alive(77) == 5
    with pytest.raises(LeaseLostError):
        await store.keep_alive(77)


def watch_result(events: list[dict[str, object]], **extra: object) -> dict[str, object]:
    return {"result": {**HEADER, "events": events, **extra}}


async def test_a_watch_splits_answers_per_revision_and_resumes_after_a_break(
    fake: FakeEtcd, store: EtcdStore
) -> None:
    """Proves one answer holding several revisions becomes one batch per revision, and
    a stream that ends is reopened on the next endpoint from the last revision + 1."""
    deleted = {"type": "DELETE", "kv": {"key": b64("c/t/a"), "mod_revision": "6"}}
    fake.on(
        A,
        "/v3/watch",
        lines(
            {"result": {**HEADER, "created": True}},
            watch_result([{"kv": kv("t/a", "1", 5, 5)}, {"kv": kv("t/b", "2", 5, 5)}, deleted]),
        ),
    )
    fake.on(B, "/v3/watch", lines(watch_result([{"kv": kv("t/c", "3", 8, 8)}])))
    async with store.watch("t/", 5) as batches:
        stream = aiter(batches)
        with trio.fail_after(5):
            received = [await stream.__anext__() for _ in range(3)]
    assert [batch.revision for batch in received] == [5, 6, 8]
    assert [[event.key for event in batch.events] for batch in received] == [
        ["t/a", "t/b"],
        ["t/a"],
        ["t/c"],
    ]
    assert received[1].events[0].kind.value == "delete"
    watch_bodies = [body for _, path, body in fake.requests if path == "/v3/watch"]
    starts = [body["create_request"]["start_revision"] for body in watch_bodies]  # type: ignore[index]
    assert starts[0] == 5 and starts[-1] == 7
    assert watch_bodies[0]["create_request"]["range_end"] == b64("c/t0")  # type: ignore[index]


async def test_a_progress_notification_moves_the_resume_point(
    fake: FakeEtcd, store: EtcdStore
) -> None:
    """Proves an empty, non-created answer (progress notification at revision 9)
    makes the next reopen start at 10."""
    fake.on(A, "/v3/watch", lines({"result": {**HEADER, "created": True}}, {"result": HEADER}))
    fake.on(B, "/v3/watch", lines(watch_result([{"kv": kv("t/c", "3", 12, 12)}])))
    async with store.watch("t/", 3) as batches:
        with trio.fail_after(5):
            batch = await aiter(batches).__anext__()
        assert batch.revision == 12
    starts = [
        body["create_request"]["start_revision"]  # type: ignore[index]
        for _, path, body in fake.requests
        if path == "/v3/watch"
    ]
    assert starts == [3, 10]


async def test_a_watch_from_a_compacted_revision_raises(fake: FakeEtcd, store: EtcdStore) -> None:
    """Proves etcd's cancel with a compact_revision raises RevisionCompactedError."""
    fake.on(
        A,
        "/v3/watch",
        lines(
            {"result": {**HEADER, "created": True}},
            {"result": {**HEADER, "canceled": True, "compact_revision": "4"}},
        ),
    )
    async with store.watch("t/", 2) as batches:
        with trio.fail_after(5), pytest.raises(RevisionCompactedError) as compacted:
            await aiter(batches).__anext__()
    assert (compacted.value.start_revision, compacted.value.compact_revision) == (2, 4)


async def test_a_watch_cancelled_for_another_reason_is_reopened(
    fake: FakeEtcd, store: EtcdStore
) -> None:
    """Proves a cancel without a compact revision (etcd shutting down) reopens the
    watch on the next endpoint from where it was, instead of failing the consumer."""
    fake.on(
        A,
        "/v3/watch",
        lines(
            {"result": {**HEADER, "created": True}},
            watch_result([{"kv": kv("t/a", "1", 4, 4)}]),
            {"result": {**HEADER, "canceled": True, "cancel_reason": "server closing"}},
        ),
    )
    fake.on(B, "/v3/watch", lines(watch_result([{"kv": kv("t/b", "2", 6, 6)}])))
    async with store.watch("t/", 2) as batches:
        stream = aiter(batches)
        with trio.fail_after(5):
            received = [await stream.__anext__(), await stream.__anext__()]
    assert [batch.revision for batch in received] == [4, 6]
    starts = [
        body["create_request"]["start_revision"]  # type: ignore[index]
        for _, path, body in fake.requests
        if path == "/v3/watch"
    ]
    assert starts == [2, 5]
