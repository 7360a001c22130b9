"""Hostile connection patterns against an in-process server on loopback: half-sent
frames are bounded in memory and in time, one address cannot take every
connection, and idle connections make room for new ones at connections_max."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from broker.config import load_config
from broker.connection import RECEIVE_BYTES_MAX
from broker.server import Server, serve
from client.protocol.connection import ClientConnection
from client.protocol.messages import HelloRequest, HelloResponse

FRAME_BYTES_MAX = 512 * 1024


async def _serve(tmp_path: Path, nursery: trio.Nursery, **limits: int) -> Server:
    environ = {f"DISTRIBUTARY_LIMITS__{key.upper()}": str(value) for key, value in limits.items()}
    config = load_config(
        flags={"data_dir": str(tmp_path), "listen": "127.0.0.1:0"}, environ=environ
    ).config
    server: Server = await nursery.start(
        lambda task_status: serve(config, handle_signals=False, task_status=task_status)
    )
    return server


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as opened:
        yield opened
        opened.cancel_scope.cancel()


async def _connect(server: Server, source: str = "127.0.0.1") -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", server.broker.advertised_port))
    return trio.SocketStream(sock)


async def _hello(stream: trio.SocketStream) -> bool:
    """Whether a Hello on ``stream`` is answered (False: the broker closed it)."""
    protocol = ClientConnection()
    _, data = protocol.send_request(HelloRequest("limits-test"))
    try:
        await stream.send_all(data)
        while True:  # bounded by the test's fail_after
            response = protocol.next_response()
            if response is not None:
                return isinstance(response.body, HelloResponse)
            received = await stream.receive_some(65536)
            if not received:
                return False
            protocol.receive_data(received)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False


async def _closed_by_broker(stream: trio.SocketStream) -> bool:
    try:
        while True:  # bounded by the test's fail_after
            if not await stream.receive_some(65536):
                return True
    except trio.BrokenResourceError:
        return True


def _frame_start(declared_bytes: int) -> bytes:
    """The length prefix of a frame declaring ``declared_bytes`` after it."""
    return struct.pack(">I", declared_bytes)


async def _wait_for(condition: object) -> None:
    while not condition():  # type: ignore[operator]  # bounded by fail_after
        await trio.sleep(0.01)


async def test_half_sent_frames_stay_within_queued_request_bytes_max(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Sixteen connections that each stop half way through a big frame hold at most
    queued_request_bytes_max (plus one read) together: readers stop reading at the
    limit; once the frames' deadline closes them, the memory is released and a
    new client is served."""
    limit = FRAME_BYTES_MAX
    server = await _serve(
        tmp_path,
        nursery,
        frame_bytes_max=FRAME_BYTES_MAX,
        fetch_bytes_max=FRAME_BYTES_MAX // 2,
        queued_request_bytes_max=limit,
        frame_receive_timeout_ms=2_000,
    )
    memory = server.request_memory
    with trio.fail_after(30):
        streams = [await _connect(server) for _ in range(16)]
        closed = 0

        async def stop_half_way(stream: trio.SocketStream) -> None:
            nonlocal closed
            # A frame declared almost as big as allowed, 200 KiB of it sent (the
            # send blocks while the broker does not read).
            try:
                await stream.send_all(_frame_start(FRAME_BYTES_MAX - 64) + bytes(200 * 1024))
            except trio.BrokenResourceError:
                pass
            if await _closed_by_broker(stream):
                closed += 1

        async with trio.open_nursery() as senders:
            for stream in streams:
                senders.start_soon(stop_half_way, stream)
            await _wait_for(lambda: memory.full and len(server.handlers) == 16)
        assert closed == 16
        assert memory.waits > 0
        assert memory.peak_bytes <= limit + RECEIVE_BYTES_MAX
        await _wait_for(lambda: memory.used_bytes == 0)
        assert await _hello(await _connect(server))
        memory.check_invariants()


async def test_slowloris_connections_are_closed_at_the_frame_deadline(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """400 connections that trickle a frame byte by byte are all closed once
    frame_receive_timeout_ms passes since their frame began; others are served."""
    server = await _serve(tmp_path, nursery, frame_receive_timeout_ms=500)
    with trio.fail_after(60):
        streams = [await _connect(server) for _ in range(400)]
        closed = 0

        async def trickle(stream: trio.SocketStream) -> None:
            nonlocal closed
            try:
                for byte in _frame_start(1000) + bytes(1000):  # bounded by the frame
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            if await _closed_by_broker(stream):
                closed += 1

        async with trio.open_nursery() as tricklers:
            for stream in streams:
                tricklers.start_soon(trickle, stream)
            assert await _hello(await _connect(server))
        assert closed == 400


async def test_connections_per_address_max(tmp_path: Path, nursery: trio.Nursery) -> None:
    """One address gets at most connections_per_address_max connections; another
    address still connects."""
    server = await _serve(tmp_path, nursery, connections_per_address_max=5)
    with trio.fail_after(20):
        streams = [await _connect(server) for _ in range(5)]
        for stream in streams:
            assert await _hello(stream)
        assert not await _hello(await _connect(server))
        assert await _hello(await _connect(server, source="127.0.0.2"))
        assert server.connections_by_address == {"127.0.0.1": 5, "127.0.0.2": 1}


async def test_idle_connection_makes_room_at_connections_max(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """At connections_max, a new client is admitted by closing the connection idle
    longest (first opened, no request since); busy ones are kept."""
    server = await _serve(tmp_path, nursery, connections_max=10, connection_evict_idle_ms=1)
    with trio.fail_after(20):
        idle = [await _connect(server) for _ in range(9)]
        busy = await _connect(server)
        await _wait_for(lambda: len(server.handlers) == 10)
        start = trio.current_time()
        await _wait_for(lambda: trio.current_time() >= start + 0.002)
        assert await _hello(busy)
        newcomer = await _connect(server, source="127.0.0.2")
        assert await _hello(newcomer)
        assert await _closed_by_broker(idle[0])
        assert await _hello(busy)


async def test_connections_max_refuses_when_nobody_is_idle_long_enough(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Connections active within connection_evict_idle_ms are not evicted: the new
    one is refused."""
    server = await _serve(tmp_path, nursery, connections_max=3, connection_evict_idle_ms=600_000)
    with trio.fail_after(20):
        streams = [await _connect(server) for _ in range(3)]
        await _wait_for(lambda: len(server.handlers) == 3)
        assert not await _hello(await _connect(server, source="127.0.0.2"))
        for stream in streams:
            assert await _hello(stream)
