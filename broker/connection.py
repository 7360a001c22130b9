"""The trio shell around one client connection.

Two tasks in one nursery, joined by a bounded channel:

- the *reader* receives bytes, feeds the sans-I/O ServerConnection and puts each
  request on the channel.  It enforces frame_bytes_max (the decoder refuses a
  declared length above it), inflight_requests_max (the excess request is
  answered at once with TOO_MANY_REQUESTS) and idle_connection_timeout_ms.
- the *writer* takes requests in order, runs each handler under
  request_timeout_ms (plus a Fetch's own max_wait_ms) and sends the response:
  header and body with ``send``, then the payload's file regions with
  ``os.sendfile`` straight from the segment files, all while holding the send
  lock so no other bytes interleave.

Requests on one connection are answered in order, one at a time, like Kafka: a
long-polling Fetch delays the requests behind it *on the same connection*
(clients that fetch and produce at once use two connections).  Other
connections are never affected.

A protocol violation (garbage, a frame over the limit, a truncated frame at
EOF), a client that stops reading for request_timeout_ms, or a crash inside a
handler closes this connection, with a log line; the server keeps running.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from functools import partial
from typing import Final

import trio

from broker.handlers import (
    Answered,
    FetchWaker,
    Reply,
    answer_ready_fetches,
    any_fetch_error,
    fetch_now,
    handle,
    handle_fetch,
    produce_now,
)
from broker.logging import get_logger
from broker.state import Broker
from broker.storage.file_handle import CachedRegion, FileRegion
from client.errors import (
    DistributaryError,
    InvalidRequestError,
    ProtocolError,
    RequestTimedOutError,
    StorageError,
    TooManyRequestsError,
)
from client.protocol.connection import BadRequest, IncomingRequest, ServerConnection
from client.protocol.messages import (
    FETCH_OFFSET_CONTINUE,
    FetchRequest,
    FetchResponse,
    ProduceRequest,
)

# One receive reads at most 256 KiB: a few syscalls per MiB of produce traffic.
RECEIVE_BYTES_MAX: Final = 256 * 1024
# Reads that found bytes waiting, in a row, before the reader yields to the
# scheduler anyway (fairness towards the other connections).
RECEIVES_WITHOUT_YIELD_MAX: Final = 16
# os.sendfile calls per region; each sends >= 1 byte or waits for writability, so
# this is a safety bound far above need (1 GiB at one page per call).
SENDFILE_CALLS_MAX: Final = 1 << 18
# Fetch responses with at most this many record bytes are read into Python and
# sent with their head in one send() (one segment, one wake-up on the client);
# larger ones go out by os.sendfile.  16 KiB: a copy that small costs less than
# the second system call and the second wake-up it saves.
INLINE_REGION_BYTES_MAX: Final = 16 * 1024
# Partitions whose fetch position one connection remembers (for continuations);
# far more than a consumer assigns, a bound on what a client can make us keep.
FETCH_POSITIONS_MAX: Final = 10_000

Item = IncomingRequest | BadRequest

# One receive buffer per event loop, shared by every connection's reader: each
# read's bytes are copied into that connection's frame decoder before the reader
# can await, so no two reads ever overlap in it.  A fresh ``os.read`` result
# would be allocated (for 256 KiB: mmap'ed and unmapped) on every read; a buffer
# per connection would cost 256 KiB each.
_RECEIVE_BUFFER: Final = trio.lowlevel.RunVar[tuple[list[bytearray], memoryview]]("receive_buffer")


def receive_buffer() -> tuple[list[bytearray], memoryview]:
    """This event loop's receive buffer: ``[buffer]`` for ``os.readv`` and a view."""
    try:
        return _RECEIVE_BUFFER.get()
    except LookupError:
        buffer = bytearray(RECEIVE_BYTES_MAX)
        shared = ([buffer], memoryview(buffer))
        _RECEIVE_BUFFER.set(shared)
        return shared


class ClientGone(Exception):
    """Internal: the connection must close now (logged where raised)."""


class ConnectionHandler:
    """One accepted connection; :meth:`run` returns when it is closed."""

    def __init__(self, broker: Broker, stream: trio.SocketStream, peer: str) -> None:
        self.broker = broker
        self.limits = broker.limits
        self.stream = stream
        self.socket = stream.socket
        self.protocol = ServerConnection(frame_bytes_max=self.limits.frame_bytes_max)
        self.logger = get_logger(peer=peer)
        self.inflight = 0
        self.last_activity = trio.current_time()
        self._descriptor = self.socket.fileno()
        # Held while a frame is being written.  A semaphore, not a Lock: a parked
        # fetch answered from another connection's append takes it in that task
        # and, if the write stops half-way, this connection's writer releases it.
        self._send_lock = trio.Semaphore(1, max_value=1)
        self._unsent: memoryview | None = None  # such an answer's tail, for the writer
        self._frame_torn = False
        self._reader_scope = trio.CancelScope()
        # Where each partition's last fetch on this connection ended (continuations).
        self._fetch_positions: dict[tuple[str, int], int] = {}
        self._parked_fetch: FetchWaker | None = None  # the writer's long poll, if any
        # For each queued request, in order: whether it is anything but a
        # continuation fetch.  While one such waits, a long poll or a fetch
        # stream ends at its next answer (requests are answered in order).
        self._queued_kinds: deque[bool] = deque()
        # The fetch being answered may answer this many more times (a stream).
        self._stream_left = 0
        self._sent_more = False  # the parked fetch's answer was flagged MORE

    def stop_reading(self) -> None:
        """Graceful shutdown: take no new requests, finish the ones already read."""
        self._reader_scope.cancel()

    async def run(self) -> None:
        """Serve until the client leaves, a limit or a violation closes us, or a
        shutdown drains us.  Never raises an error of this connection's making."""
        self.logger.debug("connection opened")
        send_channel, receive_channel = trio.open_memory_channel[Item](
            self.limits.inflight_requests_max
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_loop, send_channel, nursery.cancel_scope)
                nursery.start_soon(self._write_loop, receive_channel, nursery.cancel_scope)
        except* ClientGone:
            pass
        except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
            self.logger.info("connection lost", error=str(group.exceptions[0]))
        except* Exception as group:
            # A bug in a handler: close this connection loudly, keep the server.
            self.logger.error("connection failed", exc_info=group)
        finally:
            with trio.CancelScope(shield=True):
                await self.stream.aclose()
            self.logger.debug("connection closed")

    # -- reader -----------------------------------------------------------------------

    async def _read_loop(
        self, channel: trio.MemorySendChannel[Item], connection_scope: trio.CancelScope
    ) -> None:
        async with channel:
            with self._reader_scope:
                await self._read_requests(channel, connection_scope)

    async def _read_requests(
        self, channel: trio.MemorySendChannel[Item], connection_scope: trio.CancelScope
    ) -> None:
        idle_s = self.limits.idle_connection_timeout_ms / 1000
        while True:  # one pass per idle deadline reached, until EOF, a violation or idleness
            # One cancel scope per idle window, not per receive: the deadline is not
            # moved on by traffic; when it passes, we look whether we really were idle.
            with trio.move_on_at(self.last_activity + idle_s) as idle_scope:
                await self._receive_requests(channel, connection_scope)
                return
            assert idle_scope.cancelled_caught
            if self.inflight > 0:  # a long poll or a slow response: busy, not idle
                self.last_activity = trio.current_time()
            elif trio.current_time() >= self.last_activity + idle_s:
                self.logger.info(
                    "idle connection closed", idle_ms=self.limits.idle_connection_timeout_ms
                )
                connection_scope.cancel()
                return
            # else: traffic or the writer moved last_activity on: wait for the new deadline

    async def _receive_requests(
        self, channel: trio.MemorySendChannel[Item], connection_scope: trio.CancelScope
    ) -> None:
        """Receive and queue requests until EOF or a violation.  Its only cancellation
        points are the receive and (rarely) the shielded refusal of an excess request,
        so the idle deadline never interrupts a request half-taken."""
        descriptor = self._descriptor
        wait_readable = trio.lowlevel.wait_readable
        buffers, view = receive_buffer()
        ready_in_a_row = 0
        drained = False
        while True:  # until EOF, a violation or cancellation
            # A plain non-blocking read, waiting only when the socket is empty: no
            # stream wrapper, no scheduler trip when bytes are already there.  After
            # a short read the socket was empty, so we wait first rather than spend
            # a read on EAGAIN.
            if drained:
                ready_in_a_row = 0
                await wait_readable(descriptor)
            try:
                count = os.readv(descriptor, buffers)
            except BlockingIOError:
                drained = True
                continue
            if not count:
                if self.protocol_buffered_bytes():
                    self.logger.warning(
                        "truncated frame at end of stream",
                        buffered_bytes=self.protocol_buffered_bytes(),
                    )
                    connection_scope.cancel()
                return  # EOF: the writer answers what was read, then we close
            drained = count < RECEIVE_BYTES_MAX
            self.last_activity = trio.current_time()
            try:
                # Copied out of the shared buffer before anything can await.
                self.protocol.receive_data(view[:count])
                await self._take_requests(channel)
            except ProtocolError as error:
                self.logger.warning(
                    "protocol violation, closing", error=error.message, code=error.code.name
                )
                connection_scope.cancel()
                return
            # A client that always has bytes ready still lets the others run.
            ready_in_a_row += 1
            if ready_in_a_row >= RECEIVES_WITHOUT_YIELD_MAX:
                ready_in_a_row = 0
                await trio.lowlevel.checkpoint()

    def protocol_buffered_bytes(self) -> int:
        # Bytes of a frame not yet complete.  ServerConnection does not expose this
        # (yet); its frame decoder does.
        buffered = getattr(self.protocol, "buffered_bytes", None)
        if isinstance(buffered, int):
            return buffered
        return int(self.protocol._frames.buffered_bytes)

    async def _take_requests(self, channel: trio.MemorySendChannel[Item]) -> None:
        """Queue every complete request in the buffer.  Raises ProtocolError."""
        while True:  # bounded by the bytes received
            item = self.protocol.next_request()
            if item is None:
                return
            if self.inflight >= self.limits.inflight_requests_max:
                await self._refuse_excess(item)
                continue
            self.inflight += 1
            if self.inflight == 1 and await self._answer_at_once(item):
                continue
            other = not continues_fetch(item)
            if other and self._parked_fetch is not None:
                # A long poll (or a fetch stream) must not hold up the request
                # behind it.  A pipelined continuation fetch is the exception: it
                # is the next long poll.
                self._parked_fetch.interrupt()
            self._queued_kinds.append(other)
            channel.send_nowait(item)  # never blocks: capacity == inflight_requests_max

    async def _answer_at_once(self, item: Item) -> bool:
        """Answer ``item`` here in the reader when that needs no waiting, and
        return True; False leaves it to the writer (a Fetch that must long-poll).

        Only called when nothing is queued or being answered (``inflight`` is 1:
        this item), so the order of responses holds.  It saves the hop to the
        writer task: a scheduler pass per request.  The handler runs shielded
        from the reader's idle deadline and from a graceful shutdown (which stops
        the reader): only request_timeout_ms cuts it short."""
        ready: Reply | None = None
        error: DistributaryError | None = None
        if isinstance(item, IncomingRequest):
            body = item.body
            try:
                if isinstance(body, FetchRequest):
                    if body.responses_max > 1:
                        return False  # a stream: the writer's job
                    self._resolve_fetch_offsets(body)
                    ready = fetch_now(self.broker, body)
                    if ready is None:
                        return False  # it must long-poll: the writer's job
                    self._note_fetch_positions(body, ready)
                elif isinstance(body, ProduceRequest):
                    # Nothing to wait for (the usual case): no cancel scope needed.
                    produced = produce_now(self.broker, body, item.payload)
                    if produced is not None:
                        ready = Reply(produced)
            except DistributaryError as raised:
                error = raised
        try:
            if error is not None:
                assert isinstance(item, IncomingRequest)
                await self._refuse(item, error)
            elif ready is None:
                await self._answer(item, shield=True)
            elif isinstance(item, IncomingRequest) and item.wants_response:
                await self._send_reply(item, ready, shield=True)
        finally:
            # Consumers waiting for what it appended (their long polls sleep on
            # until this: see FetchWaker), even when this response failed.
            answer_ready_fetches()
            self.inflight -= 1
            self.last_activity = trio.current_time()
        return True

    async def _refuse_excess(self, item: Item) -> None:
        error = TooManyRequestsError(
            f"more than inflight_requests_max={self.limits.inflight_requests_max} "
            "requests in flight on this connection"
        )
        self.logger.warning(
            "request refused", reason="inflight_requests_max", correlation_id=item.correlation_id
        )
        if item.wants_response:
            # Shielded from the reader's idle deadline (a half-sent frame would be
            # fatal); _send bounds its own wait by request_timeout_ms.
            with trio.CancelScope(shield=True):
                await self._send(ServerConnection.encode_error(item, error), [])

    # -- writer -----------------------------------------------------------------------

    async def _write_loop(
        self, channel: trio.MemoryReceiveChannel[Item], connection_scope: trio.CancelScope
    ) -> None:
        async with channel:
            async for item in channel:
                self._queued_kinds.popleft()
                try:
                    await self._answer(item)
                    answer_ready_fetches()  # consumers waiting for what it appended
                finally:
                    self.inflight -= 1
                    assert self.inflight >= 0, self.inflight
                    self.last_activity = trio.current_time()
        # The reader is done (EOF or shutdown) and every request is answered.
        connection_scope.cancel()

    async def _answer(self, item: Item, *, shield: bool = False) -> None:
        """Run ``item``'s handler and send its response.  ``shield``: the reader
        answers, so neither its idle deadline nor a graceful shutdown (which stops
        the reader) may cut the request short; only request_timeout_ms can."""
        if isinstance(item, BadRequest):
            self.logger.info("bad request", api_key=item.api_key, error=item.error.message)
            if item.wants_response:
                await self._send(ServerConnection.encode_error(item, item.error), [])
            return
        if isinstance(item.body, FetchRequest):
            await self._answer_fetch(item, item.body)
            return
        reply = await self._run_handler(item, shield)
        if reply is not None:
            await self._send_reply(item, reply, shield=shield)

    async def _send_reply(
        self, request: IncomingRequest, reply: Reply, *, shield: bool, more: bool = False
    ) -> None:
        try:
            await self._send(response_head(request, reply, more), reply.regions, shield=shield)
        finally:
            reply.release()

    async def _answer_fetch(self, request: IncomingRequest, body: FetchRequest) -> None:
        """Answer a Fetch: once, or -- a stream, ``responses_max`` > 1 -- again
        and again, each answer flagged MORE and continuing where the previous one
        ended, while they are small live answers (see :meth:`_may_continue`).

        No scope of its own: each long poll ends by its own deadline
        (max_wait_ms, at most request_timeout_ms) and collecting never blocks."""
        self._stream_left = body.responses_max - 1  # answers allowed after the next one
        for _ in range(body.responses_max):  # each pass sends at least one answer
            self._sent_more = False
            waker = FetchWaker(self.broker, body, partial(self._answer_parked, request, body))
            if True in self._queued_kinds:
                # A request other than a continuation waits behind this one (it
                # interrupted the fetch before it): answer with what is there.
                waker.interrupt()
            try:
                self._resolve_fetch_offsets(body)
                self._parked_fetch = waker
                try:
                    reply = await handle_fetch(self.broker, body, waker)
                finally:
                    self._parked_fetch = None
            except DistributaryError as raised:
                await self._refuse(request, raised)
                return
            if reply is None:  # answered from an append (see _answer_parked)
                await self._finish_unsent()
                more = self._sent_more
            else:
                more = self._may_continue(reply)
                if more:
                    self._stream_left -= 1
                self._note_fetch_positions(body, reply)
                await self._send_reply(request, reply, shield=False, more=more)
            if not more:
                return
            for fetch_topic in body.topics:  # the next answer continues this one
                for wanted in fetch_topic.partitions:
                    wanted.fetch_offset = FETCH_OFFSET_CONTINUE

    def _may_continue(self, reply: Reply) -> bool:
        """Whether the fetch being answered with ``reply`` keeps streaming: it may
        answer again, nothing but continuations waits behind it, the broker is
        not shutting down, and this is a small live answer without errors (a
        consumer catching up fetches with single answers, each bounded by what
        it asked for, so a stream never piles up big answers it did not want)."""
        return (
            self._stream_left > 0
            and True not in self._queued_kinds
            and not self.broker.shutting_down
            and 0 < reply.payload_length <= INLINE_REGION_BYTES_MAX
            and not any_fetch_error(reply.body)
        )

    async def _run_handler(self, request: IncomingRequest, shield: bool) -> Reply | None:
        error: DistributaryError
        timeout_s = self.limits.request_timeout_ms / 1000
        with trio.CancelScope(deadline=trio.current_time() + timeout_s, shield=shield) as scope:
            try:
                return await handle(self.broker, request)
            except DistributaryError as raised:
                error = raised
        if scope.cancelled_caught:
            error = RequestTimedOutError(
                f"{request.api_key.name} took longer than request_timeout_ms="
                f"{self.limits.request_timeout_ms}"
            )
        await self._refuse(request, error)
        return None

    def _answer_parked(
        self, request: IncomingRequest, body: FetchRequest, reply: Reply
    ) -> Answered:
        """Send a parked fetch's answer now, synchronously, right after the
        response of the append that made it ready (see FetchWaker).  Only a small
        answer, only when no frame is being written; NOT_SENT leaves it to the
        fetch's task.  SENT_MORE: a stream's answer flagged MORE, sent whole; the
        fetch now continues after it (its offsets moved on) and its task sleeps
        on.  SENT: the task takes over -- the fetch is answered, or a stream
        continues after the task has written what the socket did not take
        (:meth:`_finish_unsent`).  Never raises."""
        lock = self._send_lock
        if reply.payload_length > INLINE_REGION_BYTES_MAX or lock.value == 0 or self._frame_torn:
            return Answered.NOT_SENT
        more = self._may_continue(reply)
        try:
            head = response_head(request, reply, more)
            data = b"".join([head, *(region.read_bytes() for region in reply.regions)])
        except StorageError:
            return Answered.NOT_SENT  # the task tries again (and closes if the file was cut)
        self._sent_more = more
        if more:
            self._stream_left -= 1
        lock.acquire_nowait()
        self._frame_torn = True
        try:
            sent = write_now(self._descriptor, data)
        except OSError:
            sent = 0  # the peer is gone: the task's write fails and closes
        self._note_fetch_positions(body, reply)
        reply.release()
        if sent != len(data):
            self._unsent = memoryview(data)[sent:]
            return Answered.SENT
        self._frame_torn = False
        lock.release()
        if not more:
            return Answered.SENT
        positions = self._fetch_positions
        for fetch_topic in body.topics:  # the stream's next answer continues this one
            for wanted in fetch_topic.partitions:
                wanted.fetch_offset = positions[(fetch_topic.name, wanted.partition)]
        return Answered.SENT_MORE

    async def _finish_unsent(self) -> None:
        """Write what :meth:`_answer_parked` could not, then release the send lock
        it holds.  Raises ClientGone (client not reading), OSError (peer gone)."""
        unsent = self._unsent
        if unsent is None:
            return
        self._unsent = None
        try:
            deadline = trio.current_time() + self.limits.request_timeout_ms / 1000
            with trio.CancelScope(deadline=deadline) as scope:
                await send_all(self.socket, unsent)
                self._frame_torn = False
        finally:
            self._send_lock.release()
        if scope.cancelled_caught:
            self.logger.warning(
                "client is not reading, closing", request_timeout_ms=self.limits.request_timeout_ms
            )
            raise ClientGone()

    # -- fetch positions (FETCH_OFFSET_CONTINUE) ----------------------------------------

    def _resolve_fetch_offsets(self, body: FetchRequest) -> None:
        """Replace each FETCH_OFFSET_CONTINUE in ``body`` (in place) by where this
        connection's previous fetch of that partition ended.  Called when the
        request's turn comes, so every earlier response is already decided.
        Raises InvalidRequestError for a partition this connection has not fetched
        (or whose last fetch failed)."""
        positions = self._fetch_positions
        for fetch_topic in body.topics:
            for wanted in fetch_topic.partitions:
                if wanted.fetch_offset != FETCH_OFFSET_CONTINUE:
                    continue
                position = positions.get((fetch_topic.name, wanted.partition))
                if position is None:
                    raise InvalidRequestError(
                        f"{fetch_topic.name}/{wanted.partition}: fetch_offset "
                        f"{FETCH_OFFSET_CONTINUE} (continue) needs an earlier successful "
                        "fetch of it on this connection"
                    )
                wanted.fetch_offset = position

    def _note_fetch_positions(self, body: FetchRequest, reply: Reply) -> None:
        """Remember where each partition of an answered fetch ends: after the last
        batch sent, or where it started when nothing was; forgotten on an error."""
        positions = self._fetch_positions
        for fetch_topic in body.topics:
            for wanted in fetch_topic.partitions:
                positions[(fetch_topic.name, wanted.partition)] = wanted.fetch_offset
        response = reply.body
        assert isinstance(response, FetchResponse)
        regions = iter(reply.regions)
        for topic in response.topics:
            for result in topic.partitions:
                key = (topic.name, result.partition)
                if result.error_code:
                    positions.pop(key, None)
                elif result.records_bytes:
                    positions[key] = next(regions).next_offset
        if len(positions) > FETCH_POSITIONS_MAX:
            # A client cycling through more partitions than that on one connection:
            # it keeps what it fetched last (insertion order), and a continuation of
            # a forgotten one is refused (it then fetches from an offset).
            for key in list(positions)[: len(positions) - FETCH_POSITIONS_MAX]:
                del positions[key]

    async def _refuse(self, request: IncomingRequest, error: DistributaryError) -> None:
        """Answer ``request`` with ``error`` (an ErrorResponse), logged."""
        self.logger.info(
            "request failed", api=request.api_key.name, error=error.message, code=error.code.name
        )
        if request.wants_response:
            await self._send(ServerConnection.encode_error(request, error), [])

    # -- sending ----------------------------------------------------------------------

    async def _send(self, head: bytes, regions: list[FileRegion], *, shield: bool = False) -> None:
        """Send a frame: ``head`` then each region, none interleaved with another
        frame.  Raises ClientGone when the client does not take it within
        request_timeout_ms, OSError when the peer is gone.  ``shield``: only that
        timeout may interrupt a send that has to wait (the reader's idle deadline
        and a graceful shutdown may not).

        Fast path (an uncontended lock, a socket with room, a response without file
        regions or a small one): one non-blocking write and no await at all, so an
        answer costs no extra trip through the scheduler.
        """
        lock = self._send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self._frame_torn:
                raise ClientGone()
            data = head
            if regions and sum([region.length for region in regions]) <= INLINE_REGION_BYTES_MAX:
                # A small response (a live consumer's usual fetch): read the record
                # bytes and send one buffer, so it leaves as one segment and the
                # client wakes once.  (Corking the head with MSG_MORE before
                # sendfile stalled large responses by 200 ms.)
                data = b"".join([head, *(read_region(region) for region in regions)])
                regions = []
            # Until the frame is complete, a cancellation or an error would leave a
            # partial frame on the stream: the connection is then unusable.
            self._frame_torn = True
            sent = write_now(self._descriptor, data)
            if sent == len(data) and not regions:
                self._frame_torn = False
                return
            deadline = trio.current_time() + self.limits.request_timeout_ms / 1000
            with trio.CancelScope(deadline=deadline, shield=shield) as scope:
                await send_all(self.socket, memoryview(data)[sent:])
                for region in regions:
                    if isinstance(region, CachedRegion):  # in memory, no file to send from
                        await send_all(self.socket, read_region(region))
                    else:
                        await sendfile_all(self.socket, region)
                self._frame_torn = False
        finally:
            lock.release()
        if scope.cancelled_caught:
            self.logger.warning(
                "client is not reading, closing", request_timeout_ms=self.limits.request_timeout_ms
            )
            raise ClientGone()


def response_head(request: IncomingRequest, reply: Reply, more: bool = False) -> bytes:
    """The frame header and body answering ``request``; the payload follows.
    ``more``: another answer to the same request follows (a fetch stream)."""
    return ServerConnection.encode_response(
        int(request.api_key),
        request.api_version,
        request.correlation_id,
        reply.body,
        reply.payload_length,
        more=more,
    )


def continues_fetch(item: Item) -> bool:
    """A fetch that only continues where the connection's previous one ended."""
    if not isinstance(item, IncomingRequest) or not isinstance(item.body, FetchRequest):
        return False
    return all(
        wanted.fetch_offset == FETCH_OFFSET_CONTINUE
        for fetch_topic in item.body.topics
        for wanted in fetch_topic.partitions
    )


def read_region(region: FileRegion) -> bytes:
    """A small region's bytes (from the page cache).  Raises ClientGone when the
    file was truncated under it (the frame can no longer be completed)."""
    try:
        return region.read_bytes()
    except StorageError as error:
        raise ClientGone(str(error)) from error


def write_now(descriptor: int, data: bytes) -> int:
    """Write what the socket takes without waiting: the bytes written (0 when its
    buffer is full).  Raises OSError (peer gone)."""
    try:
        return os.write(descriptor, data)
    except BlockingIOError:
        return 0


async def send_all(sock: trio.socket.SocketType, data: bytes | memoryview) -> None:
    """Send every byte of ``data``.  Raises OSError (peer gone)."""
    view = memoryview(data)
    sent = 0
    for _ in range(len(view) + 1):  # every send moves >= 1 byte
        if sent >= len(view):
            return
        sent += await sock.send(view[sent:])
    raise AssertionError("send made no progress")


async def sendfile_all(sock: trio.socket.SocketType, region: FileRegion) -> None:
    """``os.sendfile`` a file region to a non-blocking socket, waiting for
    writability on EAGAIN.  Raises OSError (peer gone), ClientGone when the file
    was truncated under the region (the frame can no longer be completed)."""
    sent = 0
    out_descriptor = sock.fileno()
    for _ in range(SENDFILE_CALLS_MAX):
        if sent >= region.length:
            return
        try:
            count = os.sendfile(
                out_descriptor, region.descriptor, region.position + sent, region.length - sent
            )
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as error:
            if error.errno == errno.EINTR:
                continue
            raise
        if count == 0:
            raise ClientGone(f"segment file ended {region.length - sent} bytes early")
        sent += count
        await trio.lowlevel.checkpoint()
    raise AssertionError("sendfile made no progress")
