"""The connection shell against a tiny in-process server: pipelining, callbacks,
deadlines and typed failures, on trio and on asyncio (each has its own socket layer)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import pytest
import trio

from client._io.connection import BrokerConnection, PendingResponse, open_connection
from client.errors import BrokerUnavailableError, ConnectionClosedError, RequestTimedOutError
from client.protocol.connection import BadRequest, IncomingRequest, ServerConnection
from client.protocol.messages import HelloRequest, HelloResponse, MetadataRequest, MetadataResponse


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


async def serve_and_connect(
    group: anyio.abc.TaskGroup,
    handler: Callable[[Any], Awaitable[None]],
    *,
    request_timeout_ms: int = 5000,
) -> BrokerConnection:
    """A listener on 127.0.0.1 serving each client with ``handler`` in ``group``,
    and a connection to it."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    group.start_soon(listener.serve, handler)
    return await open_connection(
        "127.0.0.1",
        port,
        group,
        connect_timeout_ms=2000,
        request_timeout_ms=request_timeout_ms,
    )


async def test_pipelined_requests_resolve_and_loss_fails_waiters_typed() -> None:
    """Proves responses match by correlation id and a dropped connection fails waiters typed."""
    with trio.fail_after(10):
        async with anyio.create_task_group() as group:
            connection = await serve_and_connect(group, lambda s: serve_hello_then_close(s, 2, 3))
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
                await connection.request(MetadataRequest())
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


def on_asyncio(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run a backend-neutral scenario on a fresh asyncio loop (pytest-trio owns async tests)."""

    async def main() -> None:
        await scenario()

    asyncio.run(main())


async def pipelined_requests_and_callbacks() -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            connection = await serve_and_connect(group, lambda s: serve_hello_then_close(s, 2, 2))
            done: list[PendingResponse] = []
            answered = await connection.send(HelloRequest("a"), on_done=done.append)
            waited = await connection.send(HelloRequest("b"))
            assert answered is not None and waited is not None
            response = await connection.wait(waited)
            assert isinstance(response.body, HelloResponse) and response.body.node_id == 7
            assert done == [answered]  # resolved in the reader, before the later response
            assert isinstance(answered.result().body, HelloResponse)
            lost = [await connection.send(MetadataRequest(), on_done=done.append) for _ in range(2)]
            for item in lost:
                assert item is not None
                with pytest.raises(ConnectionClosedError):
                    await connection.wait(item)
            assert done[1:] == lost  # the loss ran every callback, with the typed error
            with pytest.raises(ConnectionClosedError):
                await connection.send(MetadataRequest(), on_done=done.append)
            assert len(done) == 3  # a send that raises never calls its callback
            group.cancel_scope.cancel()


async def deadline_fails_slot_and_connection_stays_usable() -> None:
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def answer_second_only(stream: anyio.abc.ByteStream) -> None:
            server = ServerConnection()
            requests: list[IncomingRequest | BadRequest] = []
            async with stream:
                while len(requests) < 2:
                    server.receive_data(await stream.receive())
                    while (request := server.next_request()) is not None:
                        requests.append(request)
                for request in reversed(requests):  # the first one's answer comes too late
                    await stream.send(
                        server.encode_response(
                            request.api_key,
                            0,
                            request.correlation_id,
                            HelloResponse(node_id=3)
                            if isinstance(request.body, HelloRequest)
                            else MetadataResponse(),
                        )
                    )
                await anyio.sleep(30)

        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, answer_second_only)
            connection = await open_connection(
                "127.0.0.1", port, group, connect_timeout_ms=2000, request_timeout_ms=5000
            )
            failed: list[PendingResponse] = []
            # (A Hello is the first request and nothing has been received: its
            # timeout would mean "not a broker"; a Metadata is any request.)
            slow = await connection.send(MetadataRequest(), timeout_ms=1, on_done=failed.append)
            assert slow is not None
            with pytest.raises(RequestTimedOutError):
                await connection.wait(slow)
            assert failed == [slow] and isinstance(slow.error, RequestTimedOutError)
            response = await connection.request(HelloRequest("second"))
            assert isinstance(response.body, HelloResponse) and response.body.node_id == 3
            assert not connection.closed  # the late answer to the first was dropped quietly
            group.cancel_scope.cancel()


async def test_callbacks_resolve_in_order_and_loss_fails_them() -> None:
    """Proves on_done runs once per slot: with the response, or with the loss's typed error."""
    await pipelined_requests_and_callbacks()


def test_callbacks_on_asyncio() -> None:
    """Proves the asyncio socket layer delivers responses and losses like the trio one."""
    on_asyncio(pipelined_requests_and_callbacks)


async def test_deadline_fails_one_slot_only() -> None:
    """Proves an expired slot fails typed (callback included) and its late answer is dropped."""
    await deadline_fails_slot_and_connection_stays_usable()


def test_deadline_on_asyncio() -> None:
    """Proves the deadline watchdog works on asyncio too."""
    on_asyncio(deadline_fails_slot_and_connection_stays_usable)


def test_silent_broker_times_out_typed_on_asyncio() -> None:
    """Proves a request with no answer raises RequestTimedOutError on asyncio."""

    async def scenario() -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def silent(stream: anyio.abc.ByteStream) -> None:
            async with stream:
                await anyio.sleep(30)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(listener.serve, silent)
                connection = await open_connection(
                    "127.0.0.1", port, group, connect_timeout_ms=2000, request_timeout_ms=100
                )
                with pytest.raises(RequestTimedOutError):
                    await connection.request(MetadataRequest())
                group.cancel_scope.cancel()

    on_asyncio(scenario)


def test_send_nowait_and_writable_now_on_asyncio() -> None:
    """Proves writable_now (kept by the asyncio transport's callbacks) is true on a
    live connection and false once it is lost, and send_nowait on a lost
    connection raises ConnectionClosedError instead of registering a slot."""

    async def scenario() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                connection = await serve_and_connect(
                    group, lambda s: serve_hello_then_close(s, 1, 1)
                )
                assert connection.writable_now
                done: list[PendingResponse] = []
                first = connection.send_nowait(HelloRequest("a"), on_done=done.append)
                assert first is not None
                response = await connection.wait(first)
                assert isinstance(response.body, HelloResponse) and done == [first]
                lost = connection.send_nowait(MetadataRequest())  # read, never answered
                assert lost is not None
                with pytest.raises(ConnectionClosedError):
                    await connection.wait(lost)
                assert connection.closed and not connection.writable_now
                with pytest.raises(ConnectionClosedError):
                    connection.send_nowait(MetadataRequest())
                assert connection.inflight_count == 0
                group.cancel_scope.cancel()

    on_asyncio(scenario)


async def test_the_brokers_frame_limit_from_hello_is_adopted() -> None:
    """Proves a Hello answer announcing a frame limit above the client's raises the
    limit of the connection that received it (so a batch as big as the broker
    allows can be fetched)."""
    announced = 200 * 1024 * 1024

    async def announce(stream: anyio.abc.ByteStream) -> None:
        server = ServerConnection()
        async with stream:
            server.receive_data(await stream.receive())
            request = server.next_request()
            assert isinstance(request, IncomingRequest)
            await stream.send(
                server.encode_response(
                    request.api_key,
                    0,
                    request.correlation_id,
                    HelloResponse(frame_bytes_max=announced),
                )
            )
            await anyio.sleep(30)

    with trio.fail_after(10):
        async with anyio.create_task_group() as group:
            connection = await serve_and_connect(group, announce)
            await connection.request(HelloRequest())
            assert connection._protocol._frame_bytes_max == announced
            group.cancel_scope.cancel()
