"""One TCP connection to one broker: the I/O shell around the sans-I/O ClientConnection.

Runs on trio and on asyncio alike (anyio for everything but the socket itself).
Each received chunk goes straight into
:class:`client.protocol.connection.ClientConnection`; each response it yields is
delivered, in the same call, into the :class:`PendingResponse` registered under
its correlation id: the slot's ``on_done`` callback runs (the producer completes
its batches there, with no task per request) and a task parked in :meth:`wait`
wakes.  Many requests may be in flight (pipelining), bounded by
``inflight_requests_max``; a sender beyond it waits for a slot.

The socket layer differs per event loop, because it is the per-request cost:

- asyncio: a plain ``asyncio.BufferedProtocol`` reading into one reused
  buffer.  ``buffer_updated`` runs the dispatch above directly (no reader task
  to wake, no pause/resume of reading per chunk), and a write is one
  ``transport.write`` that never interleaves with another frame (it is
  synchronous); only a full write buffer makes it wait.  So a request can also
  be sent by a plain call (:meth:`BrokerConnection.send_nowait`, when
  :attr:`BrokerConnection.writable_now`), even from an ``on_done`` callback.
- trio: the socket with one reader task (non-blocking ``recv``, trio's
  ``wait_readable``).  A write goes straight to the socket when no other write is
  under way and it has room; otherwise it waits its turn (a write may suspend
  half-way through a frame, and frames must not interleave).

Timeouts: every slot has a deadline.  One watchdog task per connection sleeps
until the earliest one and fails the expired slots with RequestTimedOutError (a
late response is then dropped); there is no cancel scope per request.

Failure model: every socket error, end of stream or protocol error closes the
connection and fails every slot with a typed, retriable
:class:`~client.errors.ConnectionClosedError` (or the ProtocolError itself).
Users never see ``OSError`` or anyio's exceptions.  Reconnecting is the
caller's business (:class:`client._io.cluster.Cluster` makes a new connection).

Concurrency: the watchdog (and on trio the reader) run in the owner's task
group; any number of tasks may call :meth:`send` / :meth:`request` concurrently.
``on_done`` callbacks run inside the I/O dispatch: they must be quick, must not
block and must not raise.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Final, Protocol

import anyio
import anyio.abc
import sniffio

from client._logging import get_logger
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

log = get_logger("client.connection")

Buffer = bytes | bytearray | memoryview

# Bytes asked of the socket per read.  Large enough that a fast fetch stream
# needs few wakeups.  Reads go into one buffer per connection, reused: a fresh
# 256 KiB bytes object per read would be mmap'ed, shrunk and unmapped by malloc
# (three system calls per read).
RECEIVE_BYTES: Final = 256 * 1024
# Small payloads are joined with the header into one write (one syscall).
JOIN_WRITES_BELOW_BYTES: Final = 64 * 1024
# Pipelined requests per connection (the broker's own default maximum is 256).
INFLIGHT_REQUESTS_MAX_DEFAULT: Final = 64
# asyncio: bytes queued in the transport before a writer waits for the socket to
# drain.  A few produce requests' worth, so pipelining never waits on the
# kernel; large enough that a 1 MiB batch is handed over in one call.
WRITE_BUFFER_BYTES_HIGH: Final = 4 * 1024 * 1024
_SOCKET_ERRORS: Final = (
    OSError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


class LoopEvent(Protocol):
    """What we need of ``asyncio.Event`` / ``trio.Event``."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


class EventLoopTools:
    """The running event loop's native Event class and clock.

    anyio's ``Event()`` and ``current_time()`` look the loop up on every call;
    on the per-request path we use the native ones directly (both cancel
    correctly under anyio's cancel scopes: a cancelled wait is a cancelled wait).
    """

    __slots__ = (
        "call_at",
        "call_soon",
        "checkpoint",
        "clock",
        "event",
        "is_asyncio",
        "wait_or_timeout",
    )

    def __init__(self) -> None:
        library = sniffio.current_async_library()
        self.is_asyncio = library == "asyncio"
        self.checkpoint: Callable[[], Awaitable[None]]
        # wait_or_timeout(event, timeout_s): park until the event is set or the
        # time has passed, without a cancel scope.  On asyncio the timeout sets
        # the event, so use a fresh event per wait.
        self.wait_or_timeout: Callable[[LoopEvent, float], Awaitable[None]]
        # asyncio: call_at(when, callback) on the ``clock`` scale (a cancellable
        # timer handle); None on trio.
        self.call_at: Callable[[float, Callable[[], None]], asyncio.TimerHandle] | None = None
        # asyncio: call_soon(callback), after what is already due (tasks just woken
        # included); None on trio.
        self.call_soon: Callable[[Callable[[], None]], asyncio.Handle] | None = None
        if self.is_asyncio:
            loop = asyncio.get_running_loop()
            self.call_at = loop.call_at
            self.call_soon = loop.call_soon
            self.event: Callable[[], LoopEvent] = partial(_AsyncioEvent, loop)
            # The standard loop's time() is time.monotonic() behind a Python call:
            # read the C function directly (once per request and per poll).
            self.clock: Callable[[], float] = (
                time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
            )
            self.checkpoint = _asyncio_checkpoint
            self.wait_or_timeout = partial(_asyncio_wait_or_timeout, loop)
        else:
            assert library == "trio", f"unsupported event loop {library!r}"
            import trio

            self.event = trio.Event
            self.clock = trio.current_time
            self.checkpoint = trio.lowlevel.checkpoint
            self.wait_or_timeout = _trio_wait_or_timeout


async def _asyncio_checkpoint() -> None:
    """Let the other ready tasks run (what anyio.lowlevel.checkpoint does on asyncio)."""
    await asyncio.sleep(0)


async def _asyncio_wait_or_timeout(
    loop: asyncio.AbstractEventLoop, event: LoopEvent, timeout_s: float
) -> None:
    # A timer that sets the event costs a fraction of a cancel scope.
    timer = loop.call_later(max(0.0, timeout_s), event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()


class _AsyncioEvent:
    """``asyncio.Event`` bound to its loop when made: asyncio.Event looks the
    running loop up on its first wait, which costs a getpid() system call."""

    __slots__ = ("_loop", "_value", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._value = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(self) -> bool:
        if self._value:
            return True
        # One future per waiter, as asyncio.Event: a cancelled waiter cancels
        # only its own.
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)
        return True


async def _trio_wait_or_timeout(event: LoopEvent, timeout_s: float) -> None:
    import trio

    with trio.move_on_after(max(0.0, timeout_s)):
        await event.wait()


class PendingResponse:
    """The slot a response (or the error that replaces it) is delivered into.

    ``on_done(slot)``, when set, runs once when the slot completes, inside the
    connection's dispatch (see the module docstring for its rules).
    ``on_more(response)``, for a fetch stream, runs the same way for each
    response flagged MORE: the slot stays open (its deadline starts again) until
    the stream's last response completes it.
    """

    __slots__ = (
        "_event",
        "_event_class",
        "correlation_id",
        "deadline",
        "error",
        "on_done",
        "on_more",
        "response",
        "timeout_ms",
    )

    def __init__(
        self,
        correlation_id: int,
        deadline: float,
        timeout_ms: int,
        event_class: Callable[[], LoopEvent],
        on_done: Callable[[PendingResponse], None] | None = None,
        on_more: Callable[[IncomingResponse], None] | None = None,
    ) -> None:
        self.correlation_id = correlation_id
        self.deadline = deadline
        self.timeout_ms = timeout_ms
        self.response: IncomingResponse | None = None
        self.error: DistributaryError | None = None
        self.on_done = on_done
        self.on_more = on_more
        self._event_class = event_class
        self._event: LoopEvent | None = None

    @property
    def done(self) -> bool:
        return self.response is not None or self.error is not None

    def resolve(self, response: IncomingResponse) -> None:
        self.response = response
        self._finish()

    def fail(self, error: DistributaryError) -> None:
        self.error = error
        self._finish()

    def _finish(self) -> None:
        on_done = self.on_done
        if on_done is not None:
            self.on_done = None
            on_done(self)
        if self._event is not None:
            self._event.set()

    async def wait_done(self) -> None:
        """Park until the slot is resolved or failed."""
        if self.done:
            return
        if self._event is None:
            self._event = self._event_class()
        await self._event.wait()

    def result(self) -> IncomingResponse:
        """The response of a done slot.  Raises the slot's error (ConnectionClosedError,
        ProtocolError, RequestTimedOutError) or the typed error of an ErrorResponse."""
        if self.error is not None:
            raise self.error
        response = self.response
        assert response is not None, "the slot is not done yet"
        body = response.body
        if type(body) is ErrorResponse:
            raise error_for_code(body.error_code, body.error_message)
        return response


async def open_connection(
    host: str,
    port: int,
    task_group: anyio.abc.TaskGroup,
    *,
    connect_timeout_ms: int,
    request_timeout_ms: int,
    inflight_requests_max: int = INFLIGHT_REQUESTS_MAX_DEFAULT,
) -> BrokerConnection:
    """Connect and start the connection's tasks in ``task_group``.

    Raises BrokerUnavailableError when the broker cannot be reached in time.
    """
    tools = EventLoopTools()
    try:
        with anyio.fail_after(connect_timeout_ms / 1000):
            if tools.is_asyncio:
                loop = asyncio.get_running_loop()
                _, socket_layer = await loop.create_connection(_AsyncioTransport, host, port)
                transport: _AsyncioTransport | _TrioTransport = socket_layer
            else:
                transport = _TrioTransport(await anyio.connect_tcp(host, port))
    except TimeoutError:
        raise BrokerUnavailableError(
            f"broker {host}:{port} did not accept a connection within {connect_timeout_ms} ms"
        ) from None
    except OSError as error:
        raise BrokerUnavailableError(
            f"cannot connect to broker {host}:{port}: {os_error_reason(error)}"
        ) from None
    connection = BrokerConnection(
        transport,
        tools,
        host,
        port,
        request_timeout_ms=request_timeout_ms,
        inflight_requests_max=inflight_requests_max,
    )
    transport.attach(connection)
    if isinstance(transport, _TrioTransport):
        task_group.start_soon(connection.read_loop)
    task_group.start_soon(connection.watch_deadlines)
    return connection


class BrokerConnection:
    """A live connection; see the module docstring.  Create with :func:`open_connection`."""

    def __init__(
        self,
        transport: _AsyncioTransport | _TrioTransport,
        tools: EventLoopTools,
        host: str,
        port: int,
        *,
        request_timeout_ms: int,
        inflight_requests_max: int,
    ) -> None:
        assert inflight_requests_max >= 1, inflight_requests_max
        self.host = host
        self.port = port
        self.request_timeout_ms = request_timeout_ms
        self._transport = transport
        self._tools = tools
        self._clock = tools.clock
        self._protocol = ClientConnection(inflight_requests_max=inflight_requests_max * 4)
        self._waiters: dict[int, PendingResponse] = {}
        self._inflight_requests_max = inflight_requests_max
        self._slot_freed: LoopEvent | None = None
        # The watchdog sleeps until _watch_until; an earlier deadline wakes it.
        self._watch_until = math.inf
        self._watch_wake: LoopEvent | None = None
        # Read on the per-request path (Cluster.open_connection_for_node): a plain
        # attribute, set only by _mark_closed.
        self.closed = False
        self._close_reason = "connection closed"
        self._log = log.bind(broker=f"{host}:{port}")

    @property
    def inflight_count(self) -> int:
        return len(self._waiters)

    @property
    def writable_now(self) -> bool:
        """True when :meth:`send_nowait` may be called: the connection is open, an
        in-flight slot is free and the socket layer takes a whole frame at once
        (asyncio, its write buffer under the high-water mark; never on trio, where
        a write may have to wait half-way).  Callers check it once per request:
        :meth:`send_nowait` does not evaluate it again."""
        return (
            not self.closed
            and len(self._waiters) < self._inflight_requests_max
            and self._transport.writable_now
        )

    async def send(
        self,
        body: Request,
        payload: Sequence[Buffer] = (),
        *,
        wants_response: bool = True,
        timeout_ms: int | None = None,
        on_done: Callable[[PendingResponse], None] | None = None,
        on_more: Callable[[IncomingResponse], None] | None = None,
        checked: bool = True,
    ) -> PendingResponse | None:
        """Write one request (header, body, then the payload buffers in order).

        Returns the slot its response will land in (None when ``wants_response``
        is false); the slot fails with RequestTimedOutError ``timeout_ms`` (default:
        the connection's request timeout) from now.  ``on_done`` is set on the slot
        before the request leaves, so it cannot miss the response.  Waits for a
        free in-flight slot first.  ``checked=False`` skips the request checks
        (client/protocol/payload.py: check_request) for a request its caller built
        valid by construction.  Raises ConnectionClosedError if the connection
        is or becomes closed (``on_done`` is then never called).  ``on_more``:
        see :class:`PendingResponse` (a fetch with ``responses_max`` > 1).
        """
        if len(self._waiters) >= self._inflight_requests_max:
            await self._wait_for_slot()
        if self.closed:
            raise ConnectionClosedError(self._close_reason)
        pending, frame = self._start_request(
            body, payload, wants_response, timeout_ms, on_done, checked, on_more
        )
        transport = self._transport
        try:
            await transport.send_frame(frame)
        except BaseException as error:
            # Our own slot is not failed through on_done: the caller gets the error.
            if pending is not None:
                self._forget(pending)
            if isinstance(error, _SOCKET_ERRORS):
                self._mark_closed(f"write to {self.host}:{self.port} failed: {_describe(error)}")
                raise ConnectionClosedError(self._close_reason) from None
            if isinstance(error, ConnectionClosedError):
                self._mark_closed(error.message)
                raise
            if transport.frame_torn:
                # Cancelled mid-write: the byte stream is no longer framed correctly.
                self._mark_closed("a write was cancelled half-way")
            raise
        return pending

    def send_nowait(
        self,
        body: Request,
        payload: Sequence[Buffer] = (),
        *,
        wants_response: bool = True,
        timeout_ms: int | None = None,
        on_done: Callable[[PendingResponse], None] | None = None,
        on_more: Callable[[IncomingResponse], None] | None = None,
        checked: bool = True,
    ) -> PendingResponse | None:
        """:meth:`send` as a plain call, for when :attr:`writable_now` is true (a
        programmer error otherwise): the frame is handed to the socket layer at
        once, with no task switch.  ``on_more``: see :class:`PendingResponse`
        (a fetch with ``responses_max`` > 1).  Raises like :meth:`send`."""
        # The caller has just checked writable_now; of it, only what is free to
        # check is checked again (a lost socket raises in write_frame_nowait).
        if self.closed:
            raise ConnectionClosedError(self._close_reason)
        assert len(self._waiters) < self._inflight_requests_max, "send_nowait needs writable_now"
        pending, frame = self._start_request(
            body, payload, wants_response, timeout_ms, on_done, checked, on_more
        )
        try:
            self._transport.write_frame_nowait(frame)
        except ConnectionClosedError as error:
            if pending is not None:
                self._forget(pending)
            self._mark_closed(error.message)
            raise
        return pending

    def _start_request(
        self,
        body: Request,
        payload: Sequence[Buffer],
        wants_response: bool,
        timeout_ms: int | None,
        on_done: Callable[[PendingResponse], None] | None,
        checked: bool = True,
        on_more: Callable[[IncomingResponse], None] | None = None,
    ) -> tuple[PendingResponse | None, list[Buffer]]:
        """Number the request, register its slot and build the frame to write."""
        payload_length = 0
        for part in payload:
            payload_length += len(part)
        correlation_id, head = self._protocol.send_request(
            body, payload_length, wants_response=wants_response, checked=checked
        )
        pending: PendingResponse | None = None
        if wants_response:
            if timeout_ms is None:
                timeout_ms = self.request_timeout_ms
            deadline = self._clock() + timeout_ms / 1000
            pending = PendingResponse(
                correlation_id, deadline, timeout_ms, self._tools.event, on_done, on_more
            )
            self._waiters[correlation_id] = pending
            if deadline < self._watch_until:
                self._wake_watchdog()
        if not payload:
            return pending, [head]
        if payload_length < JOIN_WRITES_BELOW_BYTES:
            return pending, [b"".join([head, *payload])]
        return pending, [head, *payload]

    async def _wait_for_slot(self) -> None:
        for _ in range(1 << 30):  # bounded: every wake re-checks
            if self.closed or len(self._waiters) < self._inflight_requests_max:
                return
            if self._slot_freed is None:
                self._slot_freed = self._tools.event()
            await self._slot_freed.wait()

    def abandon(self, pending: PendingResponse) -> None:
        """Nobody wants ``pending``'s response any more: drop its slot without
        completing it (``on_done`` is not called; a late response is ignored)."""
        self._forget(pending)

    def _forget(self, pending: PendingResponse) -> None:
        """Drop a slot without completing it (a late response is then ignored)."""
        if self._waiters.pop(pending.correlation_id, None) is not None:
            self._slot_released()

    def _slot_released(self) -> None:
        slot_freed = self._slot_freed
        if slot_freed is not None:
            self._slot_freed = None
            slot_freed.set()

    async def wait(
        self, pending: PendingResponse, timeout_ms: int | None = None
    ) -> IncomingResponse:
        """The response for ``pending``.  Raises RequestTimedOutError after
        ``timeout_ms`` from now (default: the deadline set by :meth:`send`), the
        typed error of an ErrorResponse, or ConnectionClosedError / ProtocolError."""
        if not pending.done:
            if timeout_ms is not None:
                pending.timeout_ms = timeout_ms
                pending.deadline = self._clock() + timeout_ms / 1000
                if pending.deadline < self._watch_until:
                    self._wake_watchdog()
            try:
                await pending.wait_done()
            finally:
                # Cancelled: nobody wants the response any more.
                if not pending.done:
                    self._forget(pending)
        return pending.result()

    async def request(
        self,
        body: Request,
        payload: Sequence[Buffer] = (),
        *,
        timeout_ms: int | None = None,
    ) -> IncomingResponse:
        """Send and wait; see :meth:`send` and :meth:`wait` for what it raises."""
        pending = await self.send(body, payload, timeout_ms=timeout_ms)
        assert pending is not None
        return await self.wait(pending)

    # -- receiving ----------------------------------------------------------------------

    def data_received(self, data: Buffer) -> None:
        """Bytes from the socket (valid during the call only): deliver every
        complete response.  Raises ProtocolError."""
        protocol = self._protocol
        protocol.receive_data(data)
        waiters = self._waiters
        while (response := protocol.next_response()) is not None:
            if response.more:  # a fetch stream's answer: its slot stays open
                pending = waiters.get(response.correlation_id)
                if pending is not None and pending.on_more is not None:
                    pending.deadline = self._clock() + pending.timeout_ms / 1000
                    pending.on_more(response)
                continue
            pending = waiters.pop(response.correlation_id, None)
            if pending is not None:
                if self._slot_freed is not None:
                    self._slot_released()
                pending.resolve(response)

    def connection_lost(self, reason: str, error: DistributaryError | None = None) -> None:
        """The transport is gone (or broke the protocol): fail every slot."""
        self._mark_closed(reason, error)

    def protocol_error(self, error: ProtocolError) -> str:
        self._log.warning("protocol error from broker", error=str(error))
        return f"protocol error from {self.host}:{self.port}: {error}"

    def lost_reason(self, error: BaseException | None) -> str:
        if error is None:
            return f"connection to {self.host}:{self.port} lost: end of stream"
        return f"connection to {self.host}:{self.port} lost: {_describe(error)}"

    async def read_loop(self) -> None:
        """trio only: the reader task, until the connection closes."""
        transport = self._transport
        assert isinstance(transport, _TrioTransport)
        reason = "connection closed"
        error: DistributaryError | None = None
        try:
            receive = transport.receive
            data_received = self.data_received
            while data := await receive():
                data_received(data)
            reason = self.lost_reason(None)
        except _SOCKET_ERRORS as socket_error:
            reason = self.lost_reason(socket_error)
        except ProtocolError as protocol_error:
            reason = self.protocol_error(protocol_error)
            error = protocol_error
        finally:
            self._mark_closed(reason, error)
            with anyio.CancelScope(shield=True):
                await transport.aclose()

    # -- timeouts -----------------------------------------------------------------------

    def _wake_watchdog(self) -> None:
        self._watch_until = -math.inf  # until it re-arms, every new deadline wakes it
        wake = self._watch_wake
        if wake is not None:
            self._watch_wake = None
            wake.set()

    async def watch_deadlines(self) -> None:
        """The watchdog task: fails slots whose deadline passed.  Closes the
        connection when cancelled (its owner is closing)."""
        try:
            for _ in range(1 << 62):  # one pass per deadline reached or new earliest
                if self.closed:
                    return
                now = self._clock()
                earliest = math.inf
                expired: list[PendingResponse] = []
                for pending in self._waiters.values():
                    if pending.deadline <= now:
                        expired.append(pending)
                    elif pending.deadline < earliest:
                        earliest = pending.deadline
                for pending in expired:
                    self._forget(pending)
                    pending.fail(
                        RequestTimedOutError(
                            f"no response from {self.host}:{self.port} within "
                            f"{pending.timeout_ms} ms"
                        )
                    )
                if expired:
                    continue
                # With nothing earlier in flight, look again one request timeout from
                # now: a typical new deadline is later, so sends rarely wake us.
                wake_at = min(earliest, now + self.request_timeout_ms / 1000)
                self._watch_until = wake_at
                self._watch_wake = wake = self._tools.event()
                with anyio.move_on_after(wake_at - now):
                    await wake.wait()
        finally:
            self._mark_closed("connection closed")
            with anyio.CancelScope(shield=True):
                await self._transport.aclose()

    # -- closing ------------------------------------------------------------------------

    def _mark_closed(self, reason: str, error: DistributaryError | None = None) -> None:
        if not self.closed:
            self.closed = True
            self._close_reason = reason
            self._wake_watchdog()
        waiters = list(self._waiters.values())
        self._waiters.clear()
        self._slot_released()
        for pending in waiters:
            pending.fail(error if error is not None else ConnectionClosedError(self._close_reason))

    async def aclose(self) -> None:
        """Close the socket; waiters fail with ConnectionClosedError."""
        self._mark_closed("connection closed by the client")
        with anyio.CancelScope(shield=True):
            await self._transport.aclose()


class _AsyncioTransport(asyncio.BufferedProtocol):
    """asyncio: the socket as a Protocol that feeds the connection directly.
    Reads land in one reused buffer (``get_buffer`` / ``buffer_updated``)."""

    frame_torn = False  # a frame is written in one synchronous call: never torn

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._connection: BrokerConnection | None = None
        self._read_view = memoryview(bytearray(RECEIVE_BYTES))
        self._buffered: list[bytes] = []  # data that came before attach()
        self._lost: tuple[str, DistributaryError | None] | None = None
        self._drained: asyncio.Event | None = None  # set while writing may go on
        # Whether a whole frame may be written now: connected, not lost or closed by
        # us, the write buffer under its high-water mark.  Kept by the callbacks
        # below and by aclose() instead of computed per request.
        self.writable_now = False

    def attach(self, connection: BrokerConnection) -> None:
        self._connection = connection
        buffered, self._buffered = self._buffered, []
        for data in buffered:
            self.data_received(data)
        if self._lost is not None:
            connection.connection_lost(*self._lost)

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES_HIGH)
        self.writable_now = self._lost is None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        # The view is only valid until the next read: the connection copies what
        # it keeps.
        self.data_received(self._read_view[:nbytes])

    def data_received(self, data: Buffer) -> None:
        connection = self._connection
        if connection is None:
            self._buffered.append(bytes(data))
            return
        try:
            connection.data_received(data)
        except ProtocolError as error:
            self._lose(connection.protocol_error(error), error)

    def eof_received(self) -> bool:
        connection = self._connection
        self._lose(connection.lost_reason(None) if connection else "end of stream", None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        connection = self._connection
        if exc is None:
            reason = connection.lost_reason(None) if connection else "connection closed"
        else:
            reason = connection.lost_reason(exc) if connection else str(exc)
        self._lose(reason, None)
        if self._drained is not None:
            self._drained.set()

    def pause_writing(self) -> None:
        self.writable_now = False
        if self._drained is None or self._drained.is_set():
            self._drained = asyncio.Event()

    def resume_writing(self) -> None:
        transport = self._transport
        self.writable_now = (
            self._lost is None and transport is not None and not transport.is_closing()
        )
        if self._drained is not None:
            self._drained.set()

    def _lose(self, reason: str, error: DistributaryError | None) -> None:
        self.writable_now = False
        if self._lost is None:
            self._lost = (reason, error)
        if self._transport is not None:
            self._transport.abort()
        if self._connection is not None:
            self._connection.connection_lost(reason, error)

    # what the connection calls

    def write_frame_nowait(self, frame: Sequence[Buffer]) -> None:
        """Queue the whole frame (asyncio writes never wait).  Raises
        ConnectionClosedError."""
        transport = self._transport
        assert transport is not None
        # Only while writable_now (the caller checked it): that flag already says the
        # transport is neither lost nor closed by us.  A transport asyncio closed on
        # its own (a socket error) drops the write, and its connection_lost, already
        # scheduled, fails the request's slot like any other.
        if not self.writable_now and (self._lost is not None or transport.is_closing()):
            raise ConnectionClosedError(self._lost[0] if self._lost else "connection closed")
        for part in frame:
            transport.write(part)

    async def send_frame(self, frame: Sequence[Buffer]) -> None:
        """Queue the whole frame at once, then wait while the buffer is over its
        high-water mark.  Raises ConnectionClosedError."""
        transport = self._transport
        assert transport is not None
        if self._lost is not None or transport.is_closing():
            raise ConnectionClosedError(self._lost[0] if self._lost else "connection closed")
        for part in frame:
            transport.write(part)
        drained = self._drained
        if drained is not None and not drained.is_set():
            await drained.wait()
            if self._lost is not None:
                raise ConnectionClosedError(self._lost[0])

    async def aclose(self) -> None:
        self.writable_now = False
        if self._transport is not None:
            self._transport.abort()
        await anyio.lowlevel.checkpoint()


class _TrioTransport:
    """trio: the connected socket itself, non-blocking, with trio's readiness waits.

    A write goes straight to the socket when no other write is under way and the
    socket has room (the usual case): no lock, no scheduler trip.  Otherwise it
    waits its turn, then for writability.
    """

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        import trio

        self._trio = trio
        self.stream = stream
        self._socket: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self._read_view = memoryview(bytearray(RECEIVE_BYTES))
        self.frame_torn = False
        self._writing = False
        self._write_done: LoopEvent | None = None

    def attach(self, connection: BrokerConnection) -> None:
        pass

    # A write may have to wait for the socket half-way through a frame: never
    # synchronous (BrokerConnection.send_nowait is not used on trio).
    writable_now = False

    def write_frame_nowait(self, frame: Sequence[Buffer]) -> None:
        raise AssertionError("trio writes go through send_frame")

    async def receive(self) -> memoryview:
        """The next bytes (empty at end of stream), in a buffer reused by the next
        call.  Raises OSError, trio.ClosedResourceError."""
        sock = self._socket
        view = self._read_view
        try:
            size = sock.recv_into(view)
        except BlockingIOError:
            pass
        else:
            await self._trio.lowlevel.checkpoint()  # data was waiting: let others run
            return view[:size]
        for _ in range(1 << 30):  # bounded: readiness without data is rare
            await self._wait(self._trio.lowlevel.wait_readable)
            try:
                return view[: sock.recv_into(view)]
            except BlockingIOError:
                continue
        raise AssertionError("socket readable but never gave data")

    async def send_frame(self, frame: Sequence[Buffer]) -> None:
        """Send the frame's parts in order, not interleaved with another frame.
        Raises OSError; ``frame_torn`` tells whether a cancellation or an error left
        part of a frame on the wire."""
        for _ in range(1 << 30):  # bounded: every wake re-checks
            if not self._writing:
                break
            if self._write_done is None:
                self._write_done = self._trio.Event()
            await self._write_done.wait()
        if self.frame_torn:
            raise ConnectionClosedError("a write was cancelled half-way")
        self._writing = True
        self.frame_torn = True
        try:
            for part in frame:
                await self._send_all(part)
            self.frame_torn = False
        finally:
            self._writing = False
            write_done = self._write_done
            if write_done is not None:
                self._write_done = None
                write_done.set()

    async def _send_all(self, data: Buffer) -> None:
        sock = self._socket
        view = memoryview(data)
        sent = 0
        for _ in range(len(view) + 1):  # every successful send moves >= 1 byte
            if sent >= len(view):
                return
            try:
                sent += sock.send(view[sent:], socket.MSG_NOSIGNAL)
            except BlockingIOError:
                await self._wait(self._trio.lowlevel.wait_writable)
        raise AssertionError("send made no progress")

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        try:
            await wait(self._socket)
        except self._trio.ClosedResourceError:  # closed under us by aclose()
            raise anyio.ClosedResourceError from None

    async def aclose(self) -> None:
        await self.stream.aclose()


def os_error_reason(error: OSError) -> str:
    """The system's words for a failed connect ("Connection refused"): anyio wraps
    the attempts' errors in one that only says they all failed."""
    for candidate in (error, error.__cause__, error.__context__):
        if isinstance(candidate, OSError) and candidate.errno:
            return os.strerror(candidate.errno)
    return error.strerror or str(error) or type(error).__name__


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
