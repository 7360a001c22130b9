"""The trio socket layer of a broker connection: writes that wait for a slow reader."""

from __future__ import annotations

import socket

import anyio
import anyio.abc
import pytest
import trio

from client._io import transports
from client._io.transports import TrioTransport

# A small send buffer makes the writer wait for the reader many times per frame
# (smaller ones slow loopback TCP down to delayed-acknowledgement pace).
SEND_BUFFER_BYTES = 64 * 1024


async def connected_pair() -> tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]:
    """A client stream with a small send buffer and the server's end of it."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    client = await anyio.connect_tcp("127.0.0.1", port)
    server = await listener.listeners[0].accept()
    await listener.aclose()
    raw = client.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    return client, server


async def test_large_send_to_a_slow_reader_completes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proves a frame many times the socket buffer reaches a reader that takes small
    pieces: the writer waits for room far more often than the bound on wake-ups
    without progress (lowered here), and every byte arrives in order."""
    wakeups_max = 10
    monkeypatch.setattr(transports, "SEND_WAKEUPS_WITHOUT_PROGRESS_MAX", wakeups_max)
    frame_bytes = 32 * 1024 * 1024
    data = bytes(range(256)) * (frame_bytes // 256)
    received = bytearray()
    waits = 0
    with trio.fail_after(60):
        client, server = await connected_pair()
        transport = TrioTransport(client, write_stall_ms_max=30_000)
        original_wait = transport._wait

        async def counting_wait(wait: object) -> None:
            nonlocal waits
            waits += 1
            await original_wait(wait)  # type: ignore[arg-type]

        transport._wait = counting_wait  # type: ignore[method-assign]

        async def read_slowly() -> None:
            while len(received) < frame_bytes:
                received.extend(await server.receive(16 * 1024))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_slowly)
            await transport.send_frame([b"head", data])
        assert not transport.frame_torn
        await transport.aclose()
        await server.aclose()
    assert received == b"head" + data
    assert waits > 10 * wakeups_max


async def test_send_to_a_reader_that_stops_fails_after_the_stall_bound() -> None:
    """Proves a write the socket stops taking fails with TimeoutError (an OSError the
    connection turns into ConnectionClosedError) instead of waiting for ever."""
    with trio.fail_after(30):
        client, server = await connected_pair()
        transport = TrioTransport(client, write_stall_ms_max=200)
        with pytest.raises(TimeoutError, match="took no byte"):
            await transport.send_frame([bytes(4 * 1024 * 1024)])
        assert transport.frame_torn
        await transport.aclose()
        await server.aclose()
