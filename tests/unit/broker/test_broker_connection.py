"""The per-connection trio shell over a socketpair: ordering, timeouts, violations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import broker.connection as connection_module
from broker.config import load_config
from broker.connection import ConnectionHandler
from broker.state import Broker
from client.errors import ErrorCode
from client.protocol.connection import ClientConnection, IncomingResponse
from client.protocol.messages import ErrorResponse, HelloRequest, HelloResponse


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[Broker]:
    config = load_config(
        flags={"data_dir": str(tmp_path)},
        environ={
            "DISTRIBUTARY_LIMITS__REQUEST_TIMEOUT_MS": "200",
            "DISTRIBUTARY_LIMITS__IDLE_CONNECTION_TIMEOUT_MS": "60000",
        },
    ).config
    opened = await Broker.open(config)
    yield opened
    await opened.close()


class Peer:
    """The client end of a socketpair."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.protocol = ClientConnection()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, body: Any) -> int:
        correlation_id, data = self.protocol.send_request(body)
        await self.stream.send_all(data)
        return correlation_id

    async def response(self) -> IncomingResponse | None:
        """The next response, or None at EOF."""
        while True:  # bounded by fail_after in the tests
            response = self.protocol.next_response()
            if response is not None:
                return response
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.protocol.receive_data(data)


async def serve_one(state: Broker, nursery: trio.Nursery) -> Peer:
    server_socket, client_socket = trio.socket.socketpair()
    handler = ConnectionHandler(state, trio.SocketStream(server_socket), "test-peer")
    nursery.start_soon(handler.run)
    return Peer(trio.SocketStream(client_socket))


async def test_pipelined_requests_are_answered_in_order(state: Broker) -> None:
    """Ten pipelined Hellos get ten responses, in request order."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve_one(state, nursery)
            ids = [await peer.request(HelloRequest(str(i))) for i in range(10)]
            answered = []
            for _ in ids:
                response = await peer.response()
                assert response is not None and isinstance(response.body, HelloResponse)
                answered.append(response.correlation_id)
            assert answered == ids
            await peer.stream.aclose()


async def test_slow_handler_gets_request_timed_out(
    state: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler running past request_timeout_ms is cancelled and answered
    REQUEST_TIMED_OUT; the connection keeps serving."""
    calls = 0
    real_handle = connection_module.handle

    async def stuck_once(broker: Broker, request: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep_forever()
        return await real_handle(broker, request)

    monkeypatch.setattr(connection_module, "handle", stuck_once)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve_one(state, nursery)
            await peer.request(HelloRequest())
            await peer.request(HelloRequest())
            first = await peer.response()
            assert first is not None and isinstance(first.body, ErrorResponse)
            assert first.body.error_code == ErrorCode.REQUEST_TIMED_OUT
            second = await peer.response()
            assert second is not None and isinstance(second.body, HelloResponse)
            await peer.stream.aclose()


async def test_garbage_closes_the_connection(state: Broker) -> None:
    """Bytes with unknown frame flags end the connection (EOF for the peer)."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve_one(state, nursery)
            await peer.send(b"\x00\x00\x00\x20" + b"\xff" * 32)
            assert await peer.stream.receive_some(100) == b""


async def test_eof_after_requests_answers_them_first(state: Broker) -> None:
    """A client that sends requests then half-closes still gets every answer."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            peer = await serve_one(state, nursery)
            for _ in range(3):
                await peer.request(HelloRequest())
            await peer.stream.send_eof()
            for _ in range(3):
                response = await peer.response()
                assert response is not None and isinstance(response.body, HelloResponse)
            assert await peer.response() is None
