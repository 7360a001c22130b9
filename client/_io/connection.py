"""One TCP connection to one broker: the anyio shell around the sans-I/O ClientConnection.

Runs on trio and on asyncio alike (anyio).  A reader task feeds received bytes
into :class:`client.protocol.connection.ClientConnection` and hands each response
to the waiter registered under its correlation id (an ``anyio.Event`` plus a
slot).  Writers serialise on a lock, so a request's header and payload are never
interleaved with another's; many requests may be in flight (pipelining), bounded
by a semaphore of ``inflight_requests_max`` slots.

Failure model: every socket error, end of stream or protocol error closes the
connection and fails every waiter with a typed, retriable
:class:`~client.errors.ConnectionClosedError` (or the ProtocolError itself).
Users never see ``OSError`` or anyio's exceptions.  Reconnecting is the
caller's business (:class:`client._io.cluster.Cluster` makes a new connection).

Concurrency: one reader task per connection, started in the owner's task group;
any number of tasks may call :meth:`send` / :meth:`request` concurrently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import anyio
import anyio.abc
import structlog

from client.errors import (
    BrokerUnavailableError,
    ConnectionClosedError,
    DistributaryError,
    ProtocolError,
    RequestTimedOutError,
    error_for_code,
)
from client.protocol.connection import ClientConnection, IncomingResponse
from client.protocol.messages import ErrorResponse, Request

log = structlog.get_logger("client.connection")

Buffer = bytes | bytearray | memoryview

# Bytes asked of the socket per read.  Large enough that a fast fetch stream
# needs few wakeups, small enough that trio's per-call buffer stays cheap.
RECEIVE_BYTES: Final = 256 * 1024
# Small payloads are joined with the header into one write (one syscall).
JOIN_WRITES_BELOW_BYTES: Final = 64 * 1024
# Pipelined requests per connection (the broker's own default maximum is 256).
INFLIGHT_REQUESTS_MAX_DEFAULT: Final = 64
_SOCKET_ERRORS: Final = (
    OSError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


class PendingResponse:
    """The slot a response (or the error that replaces it) is delivered into."""

    __slots__ = ("_event", "correlation_id", "error", "response")

    def __init__(self, correlation_id: int) -> None:
        self.correlation_id = correlation_id
        self.response: IncomingResponse | None = None
        self.error: DistributaryError | None = None
        self._event = anyio.Event()

    @property
    def done(self) -> bool:
        return self.response is not None or self.error is not None

    def resolve(self, response: IncomingResponse) -> None:
        self.response = response
        self._event.set()

    def fail(self, error: DistributaryError) -> None:
        self.error = error
        self._event.set()


async def open_connection(
    host: str,
    port: int,
    task_group: anyio.abc.TaskGroup,
    *,
    connect_timeout_ms: int,
    request_timeout_ms: int,
    inflight_requests_max: int = INFLIGHT_REQUESTS_MAX_DEFAULT,
) -> BrokerConnection:
    """Connect and start the reader task in ``task_group``.

    Raises BrokerUnavailableError when the broker cannot be reached in time.
    """
    try:
        with anyio.fail_after(connect_timeout_ms / 1000):
            stream = await anyio.connect_tcp(host, port)
    except TimeoutError:
        raise BrokerUnavailableError(
            f"broker {host}:{port} did not accept a connection within {connect_timeout_ms} ms"
        ) from None
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise BrokerUnavailableError(f"cannot connect to broker {host}:{port}: {reason}") from None
    connection = BrokerConnection(
        stream,
        host,
        port,
        request_timeout_ms=request_timeout_ms,
        inflight_requests_max=inflight_requests_max,
    )
    task_group.start_soon(connection.read_loop)
    return connection


class BrokerConnection:
    """A live connection; see the module docstring.  Create with :func:`open_connection`."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        host: str,
        port: int,
        *,
        request_timeout_ms: int,
        inflight_requests_max: int,
    ) -> None:
        self.host = host
        self.port = port
        self.request_timeout_ms = request_timeout_ms
        self._stream = stream
        self._protocol = ClientConnection(inflight_requests_max=inflight_requests_max * 4)
        self._waiters: dict[int, PendingResponse] = {}
        self._write_lock = anyio.Lock()
        self._slots = anyio.Semaphore(inflight_requests_max)
        self._closed = False
        self._close_reason = "connection closed"
        self._log = log.bind(broker=f"{host}:{port}")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def inflight_count(self) -> int:
        return len(self._waiters)

    async def send(
        self,
        body: Request,
        payload: Sequence[Buffer] = (),
        *,
        wants_response: bool = True,
    ) -> PendingResponse | None:
        """Write one request (header, body, then the payload buffers in order).

        Returns the slot its response will land in (None when ``wants_response``
        is false).  Waits for a free in-flight slot first.  Raises
        ConnectionClosedError if the connection is or becomes closed.
        """
        if self._closed:
            raise ConnectionClosedError(self._close_reason)
        await self._slots.acquire()
        pending: PendingResponse | None = None
        try:
            async with self._write_lock:
                if self._closed:
                    raise ConnectionClosedError(self._close_reason)
                payload_length = sum(len(part) for part in payload)
                correlation_id, head = self._protocol.send_request(
                    body, payload_length, wants_response=wants_response
                )
                if wants_response:
                    pending = PendingResponse(correlation_id)
                    self._waiters[correlation_id] = pending
                await self._write(head, payload, payload_length)
        except BaseException:
            if pending is not None:
                self._waiters.pop(pending.correlation_id, None)
            self._slots.release()
            raise
        if pending is None:
            self._slots.release()
        return pending

    async def _write(self, head: bytes, payload: Sequence[Buffer], payload_length: int) -> None:
        try:
            if payload_length < JOIN_WRITES_BELOW_BYTES:
                await self._stream.send(b"".join([head, *payload]))
            else:
                await self._stream.send(head)
                for part in payload:
                    await self._stream.send(part)  # type: ignore[arg-type]
        except _SOCKET_ERRORS as error:
            self._mark_closed(f"write to {self.host}:{self.port} failed: {_describe(error)}")
            raise ConnectionClosedError(self._close_reason) from None
        except BaseException:
            # Cancelled mid-write: the byte stream is no longer framed correctly.
            self._mark_closed("a write was cancelled half-way")
            raise

    async def wait(
        self, pending: PendingResponse, timeout_ms: int | None = None
    ) -> IncomingResponse:
        """The response for ``pending``.  Raises RequestTimedOutError after
        ``timeout_ms`` (default: the connection's request timeout), the typed error
        of an ErrorResponse, or ConnectionClosedError / ProtocolError."""
        try:
            if not pending.done:
                timeout_s = (
                    timeout_ms if timeout_ms is not None else self.request_timeout_ms
                ) / 1000
                with anyio.move_on_after(timeout_s):
                    await pending._event.wait()
            if pending.error is not None:
                raise pending.error
            response = pending.response
            if response is None:
                raise RequestTimedOutError(
                    f"no response from {self.host}:{self.port} within "
                    f"{timeout_ms or self.request_timeout_ms} ms"
                )
        finally:
            # A late response is dropped by the reader (no waiter left).
            if self._waiters.pop(pending.correlation_id, None) is not None:
                self._slots.release()
        body = response.body
        if type(body) is ErrorResponse:
            raise error_for_code(body.error_code, body.error_message)
        return response

    async def request(
        self,
        body: Request,
        payload: Sequence[Buffer] = (),
        *,
        timeout_ms: int | None = None,
    ) -> IncomingResponse:
        """Send and wait; see :meth:`send` and :meth:`wait` for what it raises."""
        pending = await self.send(body, payload)
        assert pending is not None
        return await self.wait(pending, timeout_ms)

    async def read_loop(self) -> None:
        """The reader task: bytes in, responses out to their waiters, until closed."""
        reason = "connection closed"
        error: DistributaryError | None = None
        try:
            protocol = self._protocol
            waiters = self._waiters
            receive = self._stream.receive
            while True:
                data = await receive(RECEIVE_BYTES)
                protocol.receive_data(data)
                while (response := protocol.next_response()) is not None:
                    pending = waiters.pop(response.correlation_id, None)
                    if pending is not None:
                        self._slots.release()
                        pending.resolve(response)
        except _SOCKET_ERRORS as socket_error:
            reason = f"connection to {self.host}:{self.port} lost: {_describe(socket_error)}"
        except ProtocolError as protocol_error:
            self._log.warning("protocol error from broker", error=str(protocol_error))
            reason = f"protocol error from {self.host}:{self.port}: {protocol_error}"
            error = protocol_error
        finally:
            self._mark_closed(reason, error)
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

    def _mark_closed(self, reason: str, error: DistributaryError | None = None) -> None:
        if not self._closed:
            self._closed = True
            self._close_reason = reason
        waiters = list(self._waiters.values())
        self._waiters.clear()
        for pending in waiters:
            self._slots.release()
            pending.fail(error if error is not None else ConnectionClosedError(self._close_reason))

    async def aclose(self) -> None:
        """Close the socket; waiters fail with ConnectionClosedError."""
        self._mark_closed("connection closed by the client")
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
