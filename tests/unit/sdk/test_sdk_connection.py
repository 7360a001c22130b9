"""The connection shell against a tiny in-process server: pipelining and typed failures."""

from __future__ import annotations

import socket

import anyio
import anyio.abc
import pytest
import trio

from client._io.connection import open_connection
from client.errors import BrokerUnavailableError, ConnectionClosedError, RequestTimedOutError
from client.protocol.connection import ServerConnection
from client.protocol.messages import HelloRequest, HelloResponse, MetadataRequest


async def serve_hello_then_close(stream: anyio.abc.ByteStream, answer: int, ignore: int) -> None:
    """Answer the first ``answer`` requests (Hello), read ``ignore`` more, then drop
    the connection without answering them."""
    server = ServerConnection()
    seen = 0
    async with stream:
        while seen < answer + ignore:
            server.receive_data(await stream.receive())
            while (request := server.next_request()) is not None:
                assert not hasattr(request, "error")
                seen += 1
                if seen <= answer:
                    await stream.send(
                        server.encode_response(
                            request.api_key, 0, request.correlation_id, HelloResponse(node_id=7)
                        )
                    )


async def test_pipelined_requests_resolve_and_loss_fails_waiters_typed() -> None:
    """Proves responses match by correlation id and a dropped connection fails waiters typed."""
    with trio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, lambda s: serve_hello_then_close(s, 2, 3))
            connection = await open_connection(
                "127.0.0.1", port, group, connect_timeout_ms=2000, request_timeout_ms=5000
            )
            first = await connection.send(HelloRequest("a"))
            second = await connection.send(HelloRequest("b"))
            assert first is not None and second is not None
            assert first.correlation_id != second.correlation_id
            response = await connection.wait(second)
            assert isinstance(response.body, HelloResponse) and response.body.node_id == 7
            await connection.wait(first)
            pending = [await connection.send(MetadataRequest()) for _ in range(3)]
            for item in pending:
                assert item is not None
                with pytest.raises(ConnectionClosedError):
                    await connection.wait(item)
            with pytest.raises(ConnectionClosedError):
                await connection.request(MetadataRequest())
            group.cancel_scope.cancel()


async def test_silent_broker_times_out_typed() -> None:
    """Proves a request with no answer raises RequestTimedOutError, not a hang."""
    with trio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def silent(stream: anyio.abc.ByteStream) -> None:
            async with stream:
                await anyio.sleep(30)

        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, silent)
            connection = await open_connection(
                "127.0.0.1", port, group, connect_timeout_ms=2000, request_timeout_ms=100
            )
            with pytest.raises(RequestTimedOutError):
                await connection.request(HelloRequest())
            group.cancel_scope.cancel()


async def test_refused_connection_is_broker_unavailable() -> None:
    """Proves a refused TCP connect surfaces as BrokerUnavailableError, never OSError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(10):
        async with anyio.create_task_group() as group:
            with pytest.raises(BrokerUnavailableError) as caught:
                await open_connection(
                    "127.0.0.1", port, group, connect_timeout_ms=1000, request_timeout_ms=1000
                )
            assert caught.value.__cause__ is None
