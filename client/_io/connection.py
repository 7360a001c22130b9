"""One TCP connection to one broker: the I/O shell around the sans-I/O ClientConnection.

Runs on trio and on asyncio alike (anyio for everything but the socket itself,
client/_io/transports.py).  Each received chunk goes straight into
:class:`client.protocol.connection.ClientConnection`; each response it yields is
delivered, in the same call, into the :class:`PendingResponse` registered under
its correlation id (client/_io/pending_response.py).  Many requests may be in
flight (pipelining), bounded by ``inflight_requests_max``; a sender beyond it
waits for a slot.  On asyncio a request can also be sent by a plain call
(:meth:`BrokerConnection.send_nowait`, when :attr:`BrokerConnection.writable_now`),
even from an ``on_done`` callback.

Timeouts: every slot has a deadline.  One watchdog task per connection sleeps
until the earliest one and fails the expired slots with RequestTimedOutError (a
late response is then dropped); there is no cancel scope per request.  The one
exception is a Hello sent before anything was received: a peer that stays
silent past its deadline is not a broker (a broker answers Hello at once), so
that slot fails with a ProtocolError saying so, which callers do not retry.
The Hello's answer also raises the connection's frame limit to the broker's.

Failure model: every socket error, end of stream or protocol error closes the
connection and fails every slot with a typed, retriable
:class:`~client.errors.ConnectionClosedError` (or the ProtocolError itself).
Users never see ``OSError`` or anyio's exceptions.  Reconnecting is the
caller's business (:class:`client._io.cluster.Cluster` makes a new connection).

Concurrency: the watchdog (and on trio the reader) run in the owner's task
group; any number of tasks may call :meth:`send` / :meth:`request` concurrently.
``on_done`` callbacks run inside the I/O dispatch: they must be quick, must not
block and must not raise.

The event-loop tools, the response slot and the OS error wording are
re-exported from here (``EventLoopTools``, ``LoopEvent``, ``PendingResponse``,
``os_error_reason``): the rest of the SDK imports them from this module.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Callable, Sequence
from typing import Final

import anyio
import anyio.abc

from client._io.event_loop import EventLoopTools as EventLoopTools
from client._io.event_loop import LoopEvent as LoopEvent
from client._io.pending_response import PendingResponse as PendingResponse
from client._io.transports import (
    SOCKET_ERRORS,
    AsyncioTransport,
    Buffer,
    TrioTransport,
    describe_socket_error,
)
from client._io.transports import os_error_reason as os_error_reason
from client._logging import get_logger
from client.errors import (
    BrokerUnavailableError,
    ConnectionClosedError,
    DistributaryError,
    InvalidConfigError,
    ProtocolError,
    RequestTimedOutError,
)
from client.protocol.connection import ClientConnection, IncomingResponse
from client.protocol.messages import HelloRequest, HelloResponse, Request

log = get_logger("client.connection")

# getaddrinfo's "no such name" answers (not its temporary failures).
_UNKNOWN_HOST_ERRNOS: Final = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)

# Small payloads are joined with the header into one write (one syscall).
JOIN_WRITES_BELOW_BYTES: Final = 64 * 1024
# Pipelined requests per connection (the broker's own default maximum is 256).
INFLIGHT_REQUESTS_MAX_DEFAULT: Final = 64


async def open_connection(
    host: str,
    port: int,
    task_group: anyio.abc.TaskGroup,
    *,
    connect_timeout_ms: int,
    request_timeout_ms: int,
    inflight_requests_max: int = INFLIGHT_REQUESTS_MAX_DEFAULT,
    local_host: str | None = None,
) -> BrokerConnection:
    """Connect and start the connection's tasks in ``task_group``; ``local_host``
    binds the socket's own end to that address (a broker talking to its peers
    from its listen address).

    Raises BrokerUnavailableError when the broker cannot be reached in time,
    InvalidConfigError when ``host`` is a name that does not exist.
    """
    tools = EventLoopTools()
    try:
        with anyio.fail_after(connect_timeout_ms / 1000):
            if tools.is_asyncio:
                loop = asyncio.get_running_loop()
                local = None if local_host is None else (local_host, 0)
                _, socket_layer = await loop.create_connection(
                    AsyncioTransport, host, port, local_addr=local
                )
                transport: AsyncioTransport | TrioTransport = socket_layer
            else:
                transport = TrioTransport(
                    await anyio.connect_tcp(host, port, local_host=local_host),
                    write_stall_ms_max=request_timeout_ms,
                )
    except TimeoutError:
        raise BrokerUnavailableError(
            f"broker {host}:{port} did not accept a connection within {connect_timeout_ms} ms"
        ) from None
    except socket.gaierror as error:
        reason = error.strerror or str(error)
        if error.errno in _UNKNOWN_HOST_ERRNOS:
            # A name that does not exist is a wrong address, not an outage (Kafka's
            # clients refuse an unresolvable bootstrap as a config error too).
            raise InvalidConfigError(
                f"broker address {host}:{port}: unknown host name ({reason})"
            ) from None
        raise BrokerUnavailableError(f"cannot resolve broker host {host!r}: {reason}") from None
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
    if isinstance(transport, TrioTransport):
        task_group.start_soon(connection.read_loop)
    task_group.start_soon(connection.watch_deadlines)
    return connection


class BrokerConnection:
    """A live connection; see the module docstring.  Create with :func:`open_connection`."""

    def __init__(
        self,
        transport: AsyncioTransport | TrioTransport,
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
        self._protocol = ClientConnection(
            inflight_requests_max=inflight_requests_max * 4, peer=f"{host}:{port}"
        )
        # The Hello's slot while nothing has been received: its timeout means that
        # what accepted the connection is silent, not a broker (see watch_deadlines).
        self._hello_correlation_id: int | None = None
        self._received_any = False
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
            if isinstance(error, SOCKET_ERRORS):
                self._mark_closed(
                    f"write to {self.host}:{self.port} failed: {describe_socket_error(error)}"
                )
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
            if not self._received_any and isinstance(body, HelloRequest):
                self._hello_correlation_id = correlation_id
            if deadline < self._watch_until:
                self._wake_watchdog()
        if not payload:
            return pending, [head]
        if payload_length < JOIN_WRITES_BELOW_BYTES:
            return pending, [b"".join([head, *payload])]
        return pending, [head, *payload]

    async def _wait_for_slot(self) -> None:
        while True:  # every wake re-checks; a closing connection frees every slot
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
        self._received_any = True
        waiters = self._waiters
        while (response := protocol.next_response()) is not None:
            if response.more:  # a fetch stream's answer: its slot stays open
                pending = waiters.get(response.correlation_id)
                if pending is not None and pending.on_more is not None:
                    pending.deadline = self._clock() + pending.timeout_ms / 1000
                    pending.on_more(response)
                continue
            pending = waiters.pop(response.correlation_id, None)
            if response.correlation_id == self._hello_correlation_id:
                self._hello_answered(response)
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
        return f"connection to {self.host}:{self.port} lost: {describe_socket_error(error)}"

    async def read_loop(self) -> None:
        """trio only: the reader task, until the connection closes."""
        transport = self._transport
        assert isinstance(transport, TrioTransport)
        reason = "connection closed"
        error: DistributaryError | None = None
        try:
            receive = transport.receive
            data_received = self.data_received
            while data := await receive():
                data_received(data)
            reason = self.lost_reason(None)
        except SOCKET_ERRORS as socket_error:
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
            while True:  # one pass per deadline reached or new earliest, until closed
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
                    if (
                        pending.correlation_id == self._hello_correlation_id
                        and not self._received_any
                    ):
                        self._silent_peer(pending)
                        continue
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

    def _hello_answered(self, response: IncomingResponse) -> None:
        """Take the broker's frame limit from its Hello answer: responses (a fetch
        of one batch as big as the broker allows) may be that big."""
        self._hello_correlation_id = None
        body = response.body
        if isinstance(body, HelloResponse) and body.frame_bytes_max > 0:
            self._protocol.allow_frames_up_to(body.frame_bytes_max)

    def _silent_peer(self, hello: PendingResponse) -> None:
        """The peer accepted the connection but never answered the Hello: a broker
        answers it at once, so this is something else (or a broker frozen solid).
        Fails the Hello with a ProtocolError (not retried: retrying a silent
        server only multiplies the wait) and closes the connection."""
        error = ProtocolError(
            f"{self.host}:{self.port} accepted the connection but sent no answer to hello "
            f"within {hello.timeout_ms} ms: is it a Distributary broker?"
        )
        hello.fail(error)
        self._mark_closed(error.message, error)

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
