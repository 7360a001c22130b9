"""What the SDK says when the bootstrap address is not a Distributary broker:
an HTTP server, a server that accepts and stays silent, bytes that are no frame.

Each case must fail with one typed, catchable error naming the address, within
the connect timeout (no retries of a peer that is plainly not a broker)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import trio

from client.admin import Admin
from client.errors import InvalidConfigError, ProtocolError
from client.protocol.connection import ClientConnection
from client.protocol.messages import HelloRequest

CONNECT_TIMEOUT_MS = 500


def _serve_raw(reply: Callable[[socket.socket], None]) -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(connection)
            reply(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        for connection in accepted:
            connection.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    yield from _serve_raw(lambda connection: None)


@pytest.fixture
def garbage_server() -> Iterator[int]:
    yield from _serve_raw(lambda connection: connection.sendall(b"\x00\x00\x00\x20" + b"\xee" * 28))


async def test_an_http_server_is_named_as_such(http_server: int) -> None:
    """An HTTP server at the bootstrap address is reported as one (not as a frame too
    large, not after a hang), as a ProtocolError the caller can catch."""
    admin = Admin(f"127.0.0.1:{http_server}", connect_timeout_ms=CONNECT_TIMEOUT_MS)
    with trio.fail_after(CONNECT_TIMEOUT_MS / 1000 * 4):
        with pytest.raises(ProtocolError, match="answered like an HTTP server") as raised:
            async with admin:
                await admin.list_topics()
    assert f"127.0.0.1:{http_server}" in str(raised.value)


async def test_a_silent_server_is_reported_within_the_connect_timeout(silent_server: int) -> None:
    """A server that accepts and never answers is reported as giving no answer to
    hello, once, in about the connect timeout."""
    admin = Admin(f"127.0.0.1:{silent_server}", connect_timeout_ms=CONNECT_TIMEOUT_MS)
    with trio.fail_after(CONNECT_TIMEOUT_MS / 1000 * 4):
        with pytest.raises(
            ProtocolError, match=f"no answer to hello within {CONNECT_TIMEOUT_MS} ms"
        ):
            async with admin:
                await admin.list_topics()


async def test_bytes_that_are_no_frame_head_are_reported(garbage_server: int) -> None:
    """First bytes that cannot head a response (unknown api key) are reported as
    not a broker, naming the address."""
    admin = Admin(f"127.0.0.1:{garbage_server}", connect_timeout_ms=CONNECT_TIMEOUT_MS)
    with trio.fail_after(CONNECT_TIMEOUT_MS / 1000 * 4):
        with pytest.raises(ProtocolError, match="is not a Distributary broker"):
            async with admin:
                await admin.list_topics()


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_http_status_line_is_recognised_in_any_chunking(chunk: int) -> None:
    """The sans-I/O client recognises "HTTP/1.0 400" however the bytes arrive."""
    client = ClientConnection(peer="h:1")
    client.send_request(HelloRequest())
    data = b"HTTP/1.0 400 Bad Request\r\n\r\n"
    with pytest.raises(ProtocolError, match="h:1 answered like an HTTP server"):
        for start in range(0, len(data), chunk):
            client.receive_data(data[start : start + chunk])
    assert client.dead


async def test_an_unknown_host_name_is_a_config_error_at_once() -> None:
    """A bootstrap host that does not exist (the reserved .invalid domain) is an
    InvalidConfigError naming it, without a round of retries."""
    admin = Admin("no-such-broker.invalid:9392", connect_timeout_ms=CONNECT_TIMEOUT_MS)
    with trio.fail_after(CONNECT_TIMEOUT_MS / 1000 * 4):
        with pytest.raises(InvalidConfigError, match="unknown host name"):
            async with admin:
                await admin.list_topics()
