"""The socket layer of a broker connection, one per event loop.

It is the per-request cost, so it differs per loop:

- asyncio (:class:`AsyncioTransport`): a plain ``asyncio.BufferedProtocol``
  reading into one reused buffer.  ``buffer_updated`` hands the bytes to the
  connection directly (no reader task to wake, no pause/resume of reading per
  chunk), and a write is one ``transport.write`` that never interleaves with
  another frame (it is synchronous); only a full write buffer makes it wait.
- trio (:class:`TrioTransport`): the socket with one reader task (non-blocking
  ``recv``, trio's ``wait_readable``).  A write goes straight to the socket when
  no other write is under way and it has room; otherwise it waits its turn (a
  write may suspend half-way through a frame, and frames must not interleave).
  A write that can make no progress (the socket never takes another byte) is
  bounded in time and in readiness wake-ups, never in total attempts, so a large
  frame to a slow reader always completes.

A transport feeds a :class:`TransportOwner` (the BrokerConnection): bytes in,
and the reason the transport went away.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

import anyio
import anyio.abc

from client._io.event_loop import LoopEvent
from client.errors import ConnectionClosedError, DistributaryError, ProtocolError

Buffer = bytes | bytearray | memoryview

# Bytes asked of the socket per read.  Large enough that a fast fetch stream
# needs few wakeups.  Reads go into one buffer per connection, reused: a fresh
# 256 KiB bytes object per read would be mmap'ed, shrunk and unmapped by malloc
# (three system calls per read).
RECEIVE_BYTES: Final = 256 * 1024
# asyncio: bytes queued in the transport before a writer waits for the socket to
# drain.  A few produce requests' worth, so pipelining never waits on the
# kernel; large enough that a 1 MiB batch is handed over in one call.
WRITE_BUFFER_BYTES_HIGH: Final = 4 * 1024 * 1024
# trio: readiness wake-ups in a row after which the socket still takes no byte.
# The kernel reports a socket writable only when it has room, so even one such
# wake-up is rare; this many in a row means the socket is broken, not slow.
SEND_WAKEUPS_WITHOUT_PROGRESS_MAX: Final = 1_000
# trio: readiness waits on a socket that reports readable but gives no data.
RECEIVE_WAKEUPS_WITHOUT_DATA_MAX: Final = 1_000
# What a socket may raise (the connection turns each into ConnectionClosedError).
SOCKET_ERRORS: Final = (
    OSError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


class TransportOwner(Protocol):
    """What a transport calls on its connection (client/_io/connection.py)."""

    def data_received(self, data: Buffer) -> None: ...

    def connection_lost(self, reason: str, error: DistributaryError | None = None) -> None: ...

    def protocol_error(self, error: ProtocolError) -> str: ...

    def lost_reason(self, error: BaseException | None) -> str: ...


class AsyncioTransport(asyncio.BufferedProtocol):
    """asyncio: the socket as a Protocol that feeds the connection directly.
    Reads land in one reused buffer (``get_buffer`` / ``buffer_updated``)."""

    frame_torn = False  # a frame is written in one synchronous call: never torn

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._connection: TransportOwner | None = None
        self._read_view = memoryview(bytearray(RECEIVE_BYTES))
        self._buffered: list[bytes] = []  # data that came before attach()
        self._lost: tuple[str, DistributaryError | None] | None = None
        self._drained: asyncio.Event | None = None  # set while writing may go on
        # Whether a whole frame may be written now: connected, not lost or closed by
        # us, the write buffer under its high-water mark.  Kept by the callbacks
        # below and by aclose() instead of computed per request.
        self.writable_now = False

    def attach(self, connection: TransportOwner) -> None:
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


class TrioTransport:
    """trio: the connected socket itself, non-blocking, with trio's readiness waits.

    A write goes straight to the socket when no other write is under way and the
    socket has room (the usual case): no lock, no scheduler trip.  Otherwise it
    waits its turn, then for writability.  A write that makes progress may take
    any number of waits; one that makes none fails (OSError) after
    ``write_stall_ms_max`` or :data:`SEND_WAKEUPS_WITHOUT_PROGRESS_MAX` wake-ups.
    """

    def __init__(self, stream: anyio.abc.SocketStream, *, write_stall_ms_max: int) -> None:
        import trio

        assert write_stall_ms_max > 0, write_stall_ms_max
        self._trio = trio
        self.stream = stream
        self._socket: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self._read_view = memoryview(bytearray(RECEIVE_BYTES))
        self.frame_torn = False
        self._writing = False
        self._write_done: LoopEvent | None = None
        self.write_stall_ms_max = write_stall_ms_max

    def attach(self, connection: TransportOwner) -> None:
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
        for _ in range(RECEIVE_WAKEUPS_WITHOUT_DATA_MAX):
            await self._wait(self._trio.lowlevel.wait_readable)
            try:
                return view[: sock.recv_into(view)]
            except BlockingIOError:
                continue
        raise OSError(
            f"the socket was readable {RECEIVE_WAKEUPS_WITHOUT_DATA_MAX} times without data"
        )

    async def send_frame(self, frame: Sequence[Buffer]) -> None:
        """Send the frame's parts in order, not interleaved with another frame.
        Raises OSError (TimeoutError when the socket took nothing for
        ``write_stall_ms_max``), ConnectionClosedError (an earlier write was torn);
        ``frame_torn`` tells whether a cancellation or an error left part of a
        frame on the wire."""
        while self._writing:  # every wake re-checks: another write may have begun
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
        """Write all of ``data``.  Each pass either moves at least one byte or
        counts a wake-up without progress; the count restarts with every byte
        sent, so only a socket that stops taking bytes is given up on."""
        sock = self._socket
        view = memoryview(data)
        total = len(view)
        sent = 0
        wakeups_without_progress = 0
        while sent < total:
            try:
                moved = sock.send(view[sent:], socket.MSG_NOSIGNAL)
            except BlockingIOError:
                moved = 0
            if moved:
                sent += moved
                wakeups_without_progress = 0
                continue
            wakeups_without_progress += 1
            if wakeups_without_progress > SEND_WAKEUPS_WITHOUT_PROGRESS_MAX:
                raise OSError(
                    f"the socket took no byte in {SEND_WAKEUPS_WITHOUT_PROGRESS_MAX} "
                    "wake-ups for writing"
                )
            with self._trio.move_on_after(self.write_stall_ms_max / 1000) as scope:
                await self._wait(self._trio.lowlevel.wait_writable)
            if scope.cancelled_caught:
                raise TimeoutError(f"the broker took no byte for {self.write_stall_ms_max} ms")

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


def describe_socket_error(error: BaseException) -> str:
    """A socket error in a few words, for a connection's close reason."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
