"""examples/iot/mqtt_client.py's BufferedSocket: what paho reads through it is what
was sent, in any split, and what it writes leaves in order, even past a full
socket buffer."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from examples.iot.mqtt_client import BufferedSocket


@pytest.fixture
def pair() -> Iterator[tuple[BufferedSocket, socket.socket]]:
    left, right = socket.socketpair()
    left.setblocking(False)
    right.settimeout(5.0)
    yield BufferedSocket(left), right
    left.close()
    right.close()


def test_recv_hands_out_small_reads_from_one_large_read(
    pair: tuple[BufferedSocket, socket.socket],
) -> None:
    """Proves byte-at-a-time reads (as paho parses a packet header) return the stream
    unchanged, buffered() says when bytes wait, and an empty socket raises
    BlockingIOError, as paho expects of a non-blocking socket."""
    buffered, peer = pair
    peer.sendall(b"\x30\x05hello\x40\x02\x00\x01")
    assert buffered.recv(1) == b"\x30"
    assert buffered.buffered()
    assert buffered.recv(1) == b"\x05"
    assert buffered.recv(5) == b"hello"
    assert buffered.recv(100) == b"\x40\x02\x00\x01"
    assert not buffered.buffered()
    with pytest.raises(BlockingIOError):
        buffered.recv(1)


def test_recv_returns_empty_at_end_of_stream(pair: tuple[BufferedSocket, socket.socket]) -> None:
    """Proves a closed peer reads as b"" (paho's connection-lost signal)."""
    buffered, peer = pair
    peer.sendall(b"ab")
    peer.close()
    assert buffered.recv(10) == b"ab"
    assert buffered.recv(10) == b""


def test_send_buffers_until_flush_and_keeps_order_past_a_full_socket(
    pair: tuple[BufferedSocket, socket.socket],
) -> None:
    """Proves send only buffers, flush writes everything in order, and a flush that
    meets a full socket returns False and finishes later."""
    buffered, peer = pair
    chunk = bytes(range(256)) * 64  # 16 KiB
    chunks = 64  # 1 MiB: more than a socketpair's buffers hold
    for _ in range(chunks):
        assert buffered.send(chunk) == len(chunk)
    assert buffered.flush() is False  # the socket is full: the rest waits
    received = bytearray()
    while len(received) < len(chunk) * chunks:
        received += peer.recv(1 << 16)
        buffered.flush()
    assert bytes(received) == chunk * chunks
    assert buffered.flush() is True
