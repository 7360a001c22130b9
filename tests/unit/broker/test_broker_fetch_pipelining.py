"""Fetch pipelining on one connection: FETCH_OFFSET_CONTINUE, a parked long poll
answered from the append that feeds it, and ended early by a request behind it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import broker.connection as connection_module
from broker.config import load_config
from broker.connection import ConnectionHandler
from broker.handlers import handle
from broker.metadata_view import LocalMetadataView, PartitionLeadership
from broker.partition import Partition
from broker.response_slots import Frame
from broker.state import Broker
from broker.waiting import PendingFetch, WakeReason
from client.errors import ErrorCode
from client.protocol.connection import ClientConnection, IncomingRequest, IncomingResponse
from client.protocol.messages import (
    FETCH_OFFSET_CONTINUE,
    ApiKey,
    CreatableTopic,
    CreateTopicsRequest,
    ErrorResponse,
    FetchPartition,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    HelloRequest,
    HelloResponse,
    ProducePartition,
    ProduceRequest,
    ProduceTopic,
)
from client.records.builder import build_batch
from client.records.decoder import decode_fetch


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[Broker]:
    config = load_config(flags={"data_dir": str(tmp_path)}, environ={}).config
    opened = await Broker.open(config)
    create = CreateTopicsRequest([CreatableTopic("t", 1)])
    await handle(opened, IncomingRequest(ApiKey.CREATE_TOPICS, 0, 1, True, create, memoryview(b"")))
    yield opened
    await opened.close()


async def append(state: Broker, *values: bytes) -> None:
    """Produce one batch of ``values`` to t/0 the way a client's request would."""
    data = bytes(build_batch(list(values)))
    body = ProduceRequest(topics=[ProduceTopic("t", [ProducePartition(0, len(data))])])
    request = IncomingRequest(ApiKey.PRODUCE, 0, 1, True, body, memoryview(bytearray(data)))
    reply = await handle(state, request)
    assert reply is not None


def fetch(offset: int, max_wait_ms: int = 5000, partition_max_bytes: int = 1 << 20) -> FetchRequest:
    partitions = [FetchPartition(0, offset, partition_max_bytes)]
    return FetchRequest(max_wait_ms=max_wait_ms, topics=[FetchTopic("t", partitions)])


class Peer:
    """The client end of a socketpair, with a ConnectionHandler on the other."""

    def __init__(self, stream: trio.SocketStream, handler: ConnectionHandler) -> None:
        self.stream = stream
        self.protocol = ClientConnection()
        self.handler = handler  # the broker's end

    async def request(self, body: Any) -> int:
        correlation_id, data = self.protocol.send_request(body)
        await self.stream.send_all(data)
        return correlation_id

    async def response(self) -> IncomingResponse:
        while True:  # bounded by fail_after in the tests
            self.handler.check_invariants()
            response = self.protocol.next_response()
            if response is not None:
                return response
            data = await self.stream.receive_some(1 << 16)
            assert data, "connection closed"
            self.protocol.receive_data(data)

    async def produce(self, *values: bytes) -> None:
        """Produce one batch of ``values`` to t/0 and wait for the acknowledgement."""
        data = bytes(build_batch(list(values)))
        body = ProduceRequest(topics=[ProduceTopic("t", [ProducePartition(0, len(data))])])
        _, head = self.protocol.send_request(body, len(data))
        await self.stream.send_all(head + data)
        response = await self.response()
        assert not isinstance(response.body, ErrorResponse), response.body

    async def values(self) -> list[bytes | None]:
        """The next response, a fetch: its records' values."""
        response = await self.response()
        assert isinstance(response.body, FetchResponse), response.body
        return [record.value for record in decode_fetch(response.payload).records]


async def serve(state: Broker, nursery: trio.Nursery, *, send_buffer: int = 0) -> Peer:
    server_socket, client_socket = trio.socket.socketpair()
    if send_buffer:
        server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    handler = ConnectionHandler(state, trio.SocketStream(server_socket), "test-peer")
    nursery.start_soon(handler.run)
    return Peer(trio.SocketStream(client_socket), handler)


async def test_continuation_resumes_where_the_previous_fetch_ended(state: Broker) -> None:
    """Each FETCH_OFFSET_CONTINUE fetch returns the batch after the last one sent."""
    for value in (b"a", b"b", b"c"):
        await append(state, value)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            await peer.request(fetch(0, partition_max_bytes=1))  # one whole batch only
            assert await peer.values() == [b"a"]
            await peer.request(fetch(FETCH_OFFSET_CONTINUE, partition_max_bytes=1))
            assert await peer.values() == [b"b"]
            await peer.request(fetch(FETCH_OFFSET_CONTINUE))
            assert await peer.values() == [b"c"]
            nursery.cancel_scope.cancel()


async def test_continuation_without_an_earlier_fetch_is_refused(state: Broker) -> None:
    """A continuation needs an earlier fetch of the partition on the connection."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            await peer.request(fetch(FETCH_OFFSET_CONTINUE))
            response = await peer.response()
            assert isinstance(response.body, ErrorResponse)
            assert response.body.error_code == ErrorCode.INVALID_REQUEST
            await peer.request(HelloRequest())  # the connection keeps serving
            assert isinstance((await peer.response()).body, HelloResponse)
            nursery.cancel_scope.cancel()


async def test_pipelined_continuations_get_each_append_in_turn(state: Broker) -> None:
    """Two fetches on the wire: the first is answered when an append feeds it, the
    continuation behind it waits for the next one."""
    await append(state, b"old")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            await peer.request(fetch(1))
            await peer.request(fetch(FETCH_OFFSET_CONTINUE))
            with trio.move_on_after(0.3):
                await peer.response()
                pytest.fail("a long poll answered with nothing new")
            await append(state, b"x1")  # not through a connection: the fetch task answers
            assert await peer.values() == [b"x1"]
            with trio.move_on_after(0.3):
                await peer.response()
                pytest.fail("the continuation did not wait for the next append")
            producer = await serve(state, nursery)
            await producer.produce(b"x2")  # through a connection: answered right after
            assert await peer.values() == [b"x2"]
            await peer.request(fetch(FETCH_OFFSET_CONTINUE, max_wait_ms=0))
            assert await peer.values() == []  # continues after x2: nothing yet
            nursery.cancel_scope.cancel()


async def test_a_request_behind_a_long_poll_ends_it(state: Broker) -> None:
    """A parked fetch answers (empty) as soon as another request is queued behind
    it, instead of holding that request for max_wait_ms."""
    with trio.fail_after(2):  # far below the fetch's 10 s max_wait_ms
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            await peer.request(fetch(0, max_wait_ms=10_000))
            await trio.testing.wait_all_tasks_blocked()  # parked by now
            await peer.request(HelloRequest())
            assert await peer.values() == []
            assert isinstance((await peer.response()).body, HelloResponse)
            nursery.cancel_scope.cancel()


@pytest.fixture
def finished(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the answers the socket took in part, as the connections'
    writers finish them (broker.sending.send_frame on a started frame)."""
    sizes: list[int] = []
    real_send_frame = connection_module.send_frame

    async def send_frame(sock: Any, frame: Frame) -> None:
        if frame.started:
            sizes.append(len(frame.data))
        await real_send_frame(sock, frame)

    monkeypatch.setattr(connection_module, "send_frame", send_frame)
    return sizes


async def test_an_early_answer_the_socket_takes_in_part_is_completed(
    state: Broker, finished: list[int]
) -> None:
    """A woken fetch's answer that fills the socket half-way is finished by the
    connection's writer, whole and in order."""
    big = bytes(range(256)) * 48  # 12 KiB: sent in one piece, over the tiny buffer
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery, send_buffer=4096)
            producer = await serve(state, nursery)
            await peer.request(fetch(0))
            await trio.testing.wait_all_tasks_blocked()  # parked by now
            await producer.produce(big)  # answered right after the ack; not read yet
            await peer.request(HelloRequest())
            assert await peer.values() == [big]
            assert isinstance((await peer.response()).body, HelloResponse)
            assert finished and finished[0] > 0  # the writer did complete a torn answer
            nursery.cancel_scope.cancel()


def stream(offset: int, responses_max: int, max_wait_ms: int = 5000) -> FetchRequest:
    request = fetch(offset, max_wait_ms)
    request.responses_max = responses_max
    return request


async def stream_answer(peer: Peer) -> tuple[list[bytes | None], bool]:
    """The next answer of a fetch stream: its records' values, and its MORE flag."""
    response = await peer.response()
    assert isinstance(response.body, FetchResponse), response.body
    return [record.value for record in decode_fetch(response.payload).records], response.more


async def test_a_stream_answers_each_append_until_its_last_answer(
    state: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch with responses_max=3 answers three appends in turn, the first two
    flagged MORE (the request stays in flight), each continuing after the last --
    all from the appends, the fetch's long poll never restarted in between."""
    long_polls: list[int] = []
    real_pending_fetch = connection_module.PendingFetch

    def counting_pending_fetch(*args: Any) -> PendingFetch:
        long_polls.append(1)
        return real_pending_fetch(*args)

    monkeypatch.setattr(connection_module, "PendingFetch", counting_pending_fetch)
    await append(state, b"old")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            producer = await serve(state, nursery)
            await peer.request(stream(1, responses_max=3))
            await trio.testing.wait_all_tasks_blocked()  # parked by now
            for value, more in ((b"x1", True), (b"x2", True), (b"x3", False)):
                await producer.produce(value)
                assert await stream_answer(peer) == ([value], more)
                assert peer.protocol.inflight_count == (1 if more else 0)
            assert len(long_polls) == 1
            await append(state, b"x4")  # the stream is over: nothing more comes
            with trio.move_on_after(0.3):
                await peer.response()
                pytest.fail("a finished stream answered again")
            await peer.request(fetch(FETCH_OFFSET_CONTINUE, max_wait_ms=0))
            assert await peer.values() == [b"x4"]
            nursery.cancel_scope.cancel()


async def test_a_stream_ends_empty_when_max_wait_passes(state: Broker) -> None:
    """After a MORE answer the stream waits max_wait_ms afresh; without records it
    ends with an empty answer."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            producer = await serve(state, nursery)
            await peer.request(stream(0, responses_max=10, max_wait_ms=200))
            await trio.testing.wait_all_tasks_blocked()
            await producer.produce(b"x1")
            assert await stream_answer(peer) == ([b"x1"], True)
            started = trio.current_time()
            assert await stream_answer(peer) == ([], False)
            assert trio.current_time() - started >= 0.15
            nursery.cancel_scope.cancel()


async def test_a_request_behind_a_stream_ends_it_a_continuation_does_not(state: Broker) -> None:
    """A continuation stream queued behind a stream lets it go on; any other
    request ends it at once (an answer without MORE), then is answered."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            producer = await serve(state, nursery)
            await peer.request(stream(0, responses_max=10, max_wait_ms=10_000))
            await peer.request(stream(FETCH_OFFSET_CONTINUE, responses_max=10, max_wait_ms=10_000))
            await trio.testing.wait_all_tasks_blocked()
            await producer.produce(b"x1")
            assert await stream_answer(peer) == ([b"x1"], True)
            await peer.request(HelloRequest())
            assert await stream_answer(peer) == ([], False)  # the first stream ends
            assert await stream_answer(peer) == ([], False)  # and the continuation behind
            assert isinstance((await peer.response()).body, HelloResponse)
            nursery.cancel_scope.cancel()


async def test_a_big_answer_ends_a_stream(state: Broker) -> None:
    """An answer of more than 16 KiB (a consumer catching up) is the stream's last."""
    big = bytes(range(256)) * 80  # 20 KiB
    await append(state, big)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            await peer.request(stream(0, responses_max=10))
            assert await stream_answer(peer) == ([big], False)
            assert peer.protocol.inflight_count == 0
            nursery.cancel_scope.cancel()


async def test_a_big_answer_sends_a_cached_append_beside_file_regions(state: Broker) -> None:
    """A fetch answer over 16 KiB goes out by sendfile; a partition whose records
    are the latest small append (kept in memory) is written from memory in it."""
    create = CreateTopicsRequest([CreatableTopic("two", 2)])
    await handle(state, IncomingRequest(ApiKey.CREATE_TOPICS, 0, 1, True, create, memoryview(b"")))
    big = bytes(range(256)) * 80  # 20 KiB: read from the file
    for index, value in ((0, big), (1, b"small")):  # b"small": the latest append of two/1
        data = bytes(build_batch([value]))
        body = ProduceRequest(topics=[ProduceTopic("two", [ProducePartition(index, len(data))])])
        request = IncomingRequest(ApiKey.PRODUCE, 0, 1, True, body, memoryview(bytearray(data)))
        assert await handle(state, request) is not None
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            both = [FetchPartition(0, 0), FetchPartition(1, 0)]
            await peer.request(FetchRequest(max_wait_ms=0, topics=[FetchTopic("two", both)]))
            response = await peer.response()
            assert isinstance(response.body, FetchResponse)
            sizes = [part.records_bytes for part in response.body.topics[0].partitions]
            payload = response.payload
            first = decode_fetch(payload[: sizes[0]]).records
            second = decode_fetch(payload[sizes[0] :]).records
            assert [record.value for record in first] == [big]
            assert [record.value for record in second] == [b"small"]
            nursery.cancel_scope.cancel()


async def test_a_stream_goes_on_after_an_answer_the_socket_took_in_part(
    state: Broker, finished: list[int]
) -> None:
    """A stream's answer flagged MORE that fills the socket half-way is finished
    by the connection's writer, and the stream then answers the next append."""
    big = bytes(range(256)) * 48  # 12 KiB: a stream answer, over the tiny buffer
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery, send_buffer=4096)
            producer = await serve(state, nursery)
            await peer.request(stream(0, responses_max=5))
            await trio.testing.wait_all_tasks_blocked()  # parked by now
            await producer.produce(big)  # answered right after the ack; not read yet
            await trio.testing.wait_all_tasks_blocked()
            assert await stream_answer(peer) == ([big], True)
            await producer.produce(b"next")
            assert await stream_answer(peer) == ([b"next"], True)
            assert peer.protocol.inflight_count == 1
            assert finished and finished[0] > 0  # the writer did complete a torn answer
            nursery.cancel_scope.cancel()


async def test_a_produce_behind_a_long_poll_on_the_same_connection_is_handled_at_once(
    state: Broker,
) -> None:
    """A Produce pipelined behind a parked fetch on the same connection is
    appended at once (another connection reads it) and ends the long poll
    early with its records; the acknowledgement, completed first, is sent
    after the fetch's answer (responses leave in request order)."""
    with trio.fail_after(2):  # far below the fetch's 10 s max_wait_ms
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            other = await serve(state, nursery)
            fetch_id = await peer.request(fetch(0, max_wait_ms=10_000))
            await trio.testing.wait_all_tasks_blocked()  # parked
            data = bytes(build_batch([b"mine"]))
            body = ProduceRequest(topics=[ProduceTopic("t", [ProducePartition(0, len(data))])])
            produce_id, head = peer.protocol.send_request(body, len(data))
            await peer.stream.send_all(head + data)
            await other.request(fetch(0, max_wait_ms=0))
            assert await other.values() == [b"mine"]  # appended, visible elsewhere
            first = await peer.response()
            second = await peer.response()
            assert (first.correlation_id, second.correlation_id) == (fetch_id, produce_id)
            assert isinstance(first.body, FetchResponse)
            assert [r.value for r in decode_fetch(first.payload).records] == [b"mine"]
            assert not isinstance(second.body, ErrorResponse)
            nursery.cancel_scope.cancel()


async def test_a_request_behind_a_slow_one_waits_its_turn(
    state: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests are handled in arrival order: a Produce behind a Hello still
    being handled is not appended before it, and is answered after it."""
    release = trio.Event()
    real_handle = connection_module.handle

    async def slow_hello(broker: Broker, request: Any) -> Any:
        if isinstance(request.body, HelloRequest):
            await release.wait()
        return await real_handle(broker, request)

    monkeypatch.setattr(connection_module, "handle", slow_hello)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            other = await serve(state, nursery)
            hello_id = await peer.request(HelloRequest())
            data = bytes(build_batch([b"early"]))
            body = ProduceRequest(topics=[ProduceTopic("t", [ProducePartition(0, len(data))])])
            produce_id, head = peer.protocol.send_request(body, len(data))
            await peer.stream.send_all(head + data)
            await trio.testing.wait_all_tasks_blocked()
            await other.request(fetch(0, max_wait_ms=0))
            assert await other.values() == []  # not appended yet
            release.set()
            first = await peer.response()
            second = await peer.response()
            assert (first.correlation_id, second.correlation_id) == (hello_id, produce_id)
            await other.request(fetch(0, max_wait_ms=0))
            assert await other.values() == [b"early"]
            nursery.cancel_scope.cancel()


async def test_a_parked_fetch_is_answered_when_leadership_moves(state: Broker) -> None:
    """A long poll woken for a leadership change answers at once, NOT_LEADER for
    the partition now led by another node."""
    view = state.metadata
    assert isinstance(view, LocalMetadataView)
    with trio.fail_after(2):  # far below the fetch's 10 s max_wait_ms
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            await peer.request(fetch(0, max_wait_ms=10_000))
            await trio.testing.wait_all_tasks_blocked()  # parked
            view.set_leadership("t", 0, PartitionLeadership(5, 1, (5,), (5,)))
            state.topics.partition("t", 0).wake_waiters(WakeReason.LEADERSHIP)
            response = await peer.response()
            assert isinstance(response.body, FetchResponse)
            assert response.body.topics[0].partitions[0].error_code == ErrorCode.NOT_LEADER
            nursery.cancel_scope.cancel()


async def test_a_continuation_after_a_truncation_is_refused(
    state: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch position taken before the partition's log was truncated is not
    continued: the continuation is refused and the client fetches from an offset."""
    await append(state, b"a")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve(state, nursery)
            await peer.request(fetch(0))
            assert await peer.values() == [b"a"]
            monkeypatch.setattr(Partition, "truncations", property(lambda self: 1), raising=False)
            await peer.request(fetch(FETCH_OFFSET_CONTINUE, max_wait_ms=0))
            response = await peer.response()
            assert isinstance(response.body, ErrorResponse)
            assert response.body.error_code == ErrorCode.INVALID_REQUEST
            nursery.cancel_scope.cancel()
