"""The metrics endpoint: ``GET /metrics`` over HTTP/1.1, inside the broker's task tree.

:class:`MetricsEndpoint` runs in the server's nursery (no thread: the collector
reads the broker's state on the event loop, between two scheduler steps) on a
listener of its own, apart from the client port.  HTTP parsing is h11's (a
sans-I/O state machine); this module is the thin trio shell around it:

    run()                      accept loop; beyond SCRAPES_MAX open connections
    └── _serve(stream)         a new one is closed at once
        ├── _next_request      bytes into h11 until a request head; the head must
        │                      arrive within REQUEST_HEAD_TIMEOUT_S and fit in
        │                      REQUEST_HEAD_BYTES_MAX (slowloris, oversized heads)
        └── _respond           200 with the scrape, 404 (another path), 405 (another
                               method), 400/431 (what h11 refuses), 500 (a collector
                               failed: logged), sent within RESPONSE_SEND_TIMEOUT_S

A connection is kept alive for the next scrape when both sides finished the
exchange cleanly; anything else -- garbage, a timeout, a request with a body,
a client gone -- closes that connection only, with a debug log line.  The
broker's clients never notice: the endpoint's cost is one scrape at a time on
the loop (docs/benchmarks.md has its time with 1,000 partitions).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Final

import h11
import trio

from broker.logging import get_logger

# Request line and headers of one request: Prometheus sends ~250 bytes, curl ~100.
# 8 KiB, as nginx's default large_client_header_buffers line, leaves room for a
# proxy's headers; anything beyond is not a scrape (431).
REQUEST_HEAD_BYTES_MAX: Final = 8 * 1024
# A request head must be complete this long after the connection opened (or the
# previous answer went out): a client trickling bytes (slowloris) is cut off, and
# an idle kept-alive connection is closed (Prometheus reconnects at its next scrape).
REQUEST_HEAD_TIMEOUT_S: Final = 5.0
# An answer must be taken by the client within this long (a scrape is at most a
# few MB; a client that stops reading loses its connection).
RESPONSE_SEND_TIMEOUT_S: Final = 10.0
# Open connections at once.  A scrape renders on the event loop, so they are
# answered one after the other anyway; a few cover Prometheus, a second Prometheus
# and `distributary top`.  Connections beyond are closed as they arrive.
SCRAPES_MAX: Final = 8
# One receive reads at most this much (a request head is far smaller).
RECEIVE_BYTES_MAX: Final = 4096
# Closing a connection, what the client still sends is read and dropped for at
# most this long and this much (a lingering close, as nginx's lingering_close):
# closing with unread bytes would reset the connection and lose our answer.
LINGER_TIMEOUT_S: Final = 1.0
LINGER_BYTES_MAX: Final = 64 * 1024
# After accept() fails for lack of descriptors or memory, wait before retrying.
ACCEPT_RETRY_DELAY_S: Final = 0.1
_ACCEPT_RESOURCE_ERRORS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

METRICS_PATH: Final = "/metrics"
ALLOWED_METHODS: Final = (b"GET", b"HEAD")
SERVER_HEADER: Final = b"distributary"

_logger = get_logger()

# Renders a scrape: the request's Accept header in, (body, content type) out.
Render = Callable[[str], Awaitable[tuple[bytes, str]]]


class MetricsEndpoint:
    """Serves ``render`` on ``listener`` until cancelled; closes the listener then."""

    def __init__(self, listener: trio.SocketListener, render: Render) -> None:
        self.listener = listener
        self.render = render
        self.open_connections = 0
        self.refused_connections = 0  # closed at once: SCRAPES_MAX were open
        self.scrapes = 0  # 200 answers to GET or HEAD /metrics

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.socket.getsockname()[:2]
        return str(host), int(port)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:  # until cancelled
                    try:
                        stream = await self.listener.accept()
                    except OSError as error:
                        if error.errno not in _ACCEPT_RESOURCE_ERRORS:
                            raise
                        _logger.error("metrics accept failed", error=os.strerror(error.errno or 0))
                        await trio.sleep(ACCEPT_RETRY_DELAY_S)
                        continue
                    if self.open_connections >= SCRAPES_MAX:
                        self.refused_connections += 1
                        _logger.debug("metrics connection refused", scrapes_max=SCRAPES_MAX)
                        await trio.aclose_forcefully(stream)
                        continue
                    self.open_connections += 1
                    nursery.start_soon(self._serve, stream)
        finally:
            with trio.CancelScope(shield=True):
                await self.listener.aclose()

    async def _serve(self, stream: trio.SocketStream) -> None:
        """Answer requests on one connection until it should close."""
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=REQUEST_HEAD_BYTES_MAX)
        try:
            while True:  # one pass per request, until the connection closes
                request = await self._next_request(stream, connection)
                if request is None:
                    return
                await self._respond(stream, connection, request)
                _end_of_request(connection)
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return  # a request body not received yet, or Connection: close
                connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            _logger.debug("metrics connection lost", error=str(error))
        finally:
            await _close(stream)
            self.open_connections -= 1

    async def _next_request(
        self, stream: trio.SocketStream, connection: h11.Connection
    ) -> h11.Request | None:
        """The next request head, or None (after answering an error if there is
        one to answer) when the connection should close."""
        with trio.move_on_after(REQUEST_HEAD_TIMEOUT_S):
            while True:  # bounded by REQUEST_HEAD_BYTES_MAX and the deadline
                try:
                    event = connection.next_event()
                except h11.RemoteProtocolError as error:
                    _logger.debug("metrics request refused", error=str(error))
                    await self._send_error(stream, connection, error.error_status_hint)
                    return None
                if isinstance(event, h11.Request):
                    return event
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(RECEIVE_BYTES_MAX)
                    connection.receive_data(data)  # b"": the client closed
                    continue
                return None  # ConnectionClosed or PAUSED: nothing more to answer
        _logger.debug("metrics request head not received in time, closing")
        return None

    async def _respond(
        self, stream: trio.SocketStream, connection: h11.Connection, request: h11.Request
    ) -> None:
        path = request.target.split(b"?", 1)[0]
        if path != METRICS_PATH.encode():
            await self._send_simple(stream, connection, 404, b"not found: try /metrics\n")
            return
        if request.method not in ALLOWED_METHODS:
            await self._send_simple(
                stream,
                connection,
                405,
                b"method not allowed: GET /metrics\n",
                [(b"allow", b", ".join(ALLOWED_METHODS))],
            )
            return
        accept = b", ".join(value for name, value in request.headers if name == b"accept")
        try:
            body, content_type = await self.render(accept.decode("latin-1"))
        except Exception:
            # A bug in a collector: this scrape fails loudly, the broker serves on.
            _logger.error("metrics scrape failed", exc_info=True)
            await self._send_simple(stream, connection, 500, b"scrape failed: see the broker log\n")
            return
        self.scrapes += 1
        await self._send(
            stream,
            connection,
            200,
            [(b"content-type", content_type.encode("latin-1"))],
            b"" if request.method == b"HEAD" else body,
            len(body),
        )

    async def _send_error(
        self, stream: trio.SocketStream, connection: h11.Connection, status: int
    ) -> None:
        """Answer a request h11 refused, if the exchange is at a point where an
        answer can still go out."""
        if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        reason = b"request head too large\n" if status == 431 else b"bad request\n"
        await self._send_simple(stream, connection, status, reason)

    async def _send_simple(
        self,
        stream: trio.SocketStream,
        connection: h11.Connection,
        status: int,
        text: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), *(headers or [])]
        await self._send(stream, connection, status, headers, text, len(text))

    async def _send(
        self,
        stream: trio.SocketStream,
        connection: h11.Connection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        length: int,
    ) -> None:
        """One whole response (``body`` empty for HEAD: ``length`` is still the
        length a GET would get).  Raises trio.BrokenResourceError (the client
        left, or did not take the response within RESPONSE_SEND_TIMEOUT_S)."""
        head = [
            (b"server", SERVER_HEADER),
            (b"content-length", str(length).encode()),
            *headers,
        ]
        if status >= 400:
            # An error ends the connection: whatever follows is not trusted.
            head.append((b"connection", b"close"))
        reason = HTTPStatus(status).phrase.encode()
        data = connection.send(h11.Response(status_code=status, headers=head, reason=reason))
        assert data is not None
        if body:
            sent = connection.send(h11.Data(data=body))
            assert sent is not None
            data += sent
        ended = connection.send(h11.EndOfMessage())
        assert ended is not None
        data += ended
        with trio.move_on_after(RESPONSE_SEND_TIMEOUT_S) as scope:
            await stream.send_all(data)
        if scope.cancelled_caught:
            _logger.debug("metrics response not taken in time, closing")
            raise trio.BrokenResourceError("metrics client did not read the response in time")


def _end_of_request(connection: h11.Connection) -> None:
    """Take the rest of the request from what is already received (usually just
    its end: a scrape has no body); never reads more."""
    while connection.their_state is h11.SEND_BODY:  # bounded by the bytes received
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError:
            return
        if event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage):
            return


async def _close(stream: trio.SocketStream) -> None:
    """Close after a lingering read: stop sending, then discard what the client
    still sends (for at most LINGER_TIMEOUT_S and LINGER_BYTES_MAX), so a client
    whose request we did not read whole gets our answer instead of a reset."""
    with trio.move_on_after(LINGER_TIMEOUT_S):
        try:
            await stream.send_eof()
            discarded = 0
            while discarded < LINGER_BYTES_MAX:
                data = await stream.receive_some(RECEIVE_BYTES_MAX)
                if not data:
                    break
                discarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await trio.aclose_forcefully(stream)
