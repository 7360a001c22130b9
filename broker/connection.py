"""The trio shell around one client connection.

Every request read gets a response slot, in arrival order
(broker/response_slots.py); handlers complete slots whenever they are ready and
frames leave strictly in slot order.  Three tasks in one nursery:

- the *reader* receives bytes, feeds the sans-I/O ServerConnection and opens a
  slot per request.  What needs no waiting it handles on the spot -- a Produce
  through :func:`broker.produce.produce_now` (acks=all:
  :func:`broker.produce.append_produce_now`), any Fetch (answered now or
  parked) -- and, when its slot is at the front, writes the answer at once: no
  trip through the scheduler for a producer's acknowledgement, an acks=all
  append waking the followers' fetches, or a fetch that finds data.  It enforces frame_bytes_max, inflight_requests_max (the excess
  request is answered TOO_MANY_REQUESTS at once) and idle_connection_timeout_ms.
- the *handler* runs, in order, what must await (a Produce that waits for the
  append lock or a flush, topic administration, group requests) under
  request_timeout_ms.  Once a request is handed to it, the ones behind go
  through it too, so requests are always handled in arrival order.  An
  acks=all Produce whose partitions have followers is appended by the reader
  (or here, when the append must wait), then waits for them in a task of its
  own, which completes its slot: the requests behind it are handled
  meanwhile, their answers wait their turn.
- the *writer* drives the parked fetches (broker/waiting.py): a partition's
  change wakes it, it collects the answer, completes the slot and sends what is
  sendable; a fetch's max_wait_ms passing wakes it too.  It sends frames that
  must wait for the socket, and large payloads with ``os.sendfile``.

A parked Fetch never stalls the requests behind it: they are handled at once,
and any request other than a continuation fetch ends the long poll (or a fetch
stream) early, so its answer -- which must leave first -- is not held for
max_wait_ms.  Fetches are started one at a time, in order, so a continuation
(FETCH_OFFSET_CONTINUE) resolves where the fetch before it ended
(broker/fetch_session.py).  Only this connection's tasks write on its socket.

A protocol violation (garbage, a frame over the limit, a truncated frame at
EOF), a client that stops reading for request_timeout_ms, or a crash inside a
handler closes this connection, with a log line; the server keeps running.
"""

from __future__ import annotations

import math
import os
from collections import deque
from typing import Final

import trio

from broker.fetch import any_fetch_error, collect_fetch, fetch_now, fetch_partitions
from broker.fetch_session import FETCH_POSITIONS_MAX, FetchSession
from broker.handlers import handle
from broker.logging import get_logger
from broker.metrics.traffic import count_fetched
from broker.produce import (
    PendingReplication,
    append_produce,
    append_produce_now,
    produce_now,
)
from broker.request_memory import ConnectionCharge, RequestMemory
from broker.response_slots import Frame, Item, Reply, ResponseSlots, Slot
from broker.sending import ClientGone, reply_frame, send_frame, write_now
from broker.state import Broker
from broker.waiting import PendingFetch
from client.errors import (
    DistributaryError,
    ErrorCode,
    ProtocolError,
    RequestTimedOutError,
    TooManyRequestsError,
)
from client.protocol.connection import BadRequest, IncomingRequest, ServerConnection
from client.protocol.messages import (
    FETCH_OFFSET_CONTINUE,
    Acks,
    FetchRequest,
    FetchResponse,
    ProduceRequest,
    ProduceResponse,
)

__all__ = ["FETCH_POSITIONS_MAX", "ClientGone", "ConnectionHandler", "continues_fetch"]

# One receive reads at most 256 KiB: a few syscalls per MiB of produce traffic.
RECEIVE_BYTES_MAX: Final = 256 * 1024
# Reads that found bytes waiting, in a row, before the reader yields to the
# scheduler anyway (fairness towards the other connections).
RECEIVES_WITHOUT_YIELD_MAX: Final = 16

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


class ConnectionHandler:
    """One accepted connection; :meth:`run` returns when it is closed."""

    def __init__(
        self,
        broker: Broker,
        stream: trio.SocketStream,
        peer: str,
        memory: RequestMemory | None = None,
    ) -> None:
        self.broker = broker
        self.limits = broker.limits
        self.stream = stream
        self.socket = stream.socket
        self.protocol = ServerConnection(frame_bytes_max=self.limits.frame_bytes_max)
        self.peer = peer
        self.logger = get_logger(peer=peer)
        self.last_activity = trio.current_time()
        # When the last request arrived (or the connection opened): eviction at
        # connections_max closes the connection that has waited longest.
        self.last_request_time = self.last_activity
        # The broker-wide budget for unfinished and queued request bytes (a private
        # one when none is given: tests of one connection).
        self.memory = memory or RequestMemory(self.limits.queued_request_bytes_max)
        self.charge = ConnectionCharge(self.memory)
        self._connection_scope: trio.CancelScope | None = None
        self._evicted = False
        self.slots = ResponseSlots(self.limits.inflight_requests_max)
        self.session = FetchSession()
        self.fetches: deque[PendingFetch] = deque()  # in order; the first is being answered
        self._descriptor = self.socket.fileno()
        self._reader_scope = trio.CancelScope()
        self._backlog = 0  # requests given to the handler task, not yet handled
        self._reading_done = False
        self._sending = False  # the writer is waiting for the socket mid-frame
        # The writer parks itself (no Event per wake-up): ``_writer_task`` while it
        # is parked, ``_writer_woken`` when a wake-up came while it was busy.
        self._writer_task: trio.lowlevel.Task | None = None
        self._writer_woken = False
        self._writer_sleep: trio.CancelScope | None = None  # the writer's deadline scope
        # Refusals of excess requests, sent ahead of the slots (between frames).
        self._refusals: deque[bytes] = deque()
        self._refusals_sent = trio.Event()
        self._nursery: trio.Nursery | None = None  # the connection's, while it runs

    @property
    def inflight(self) -> int:
        """Requests read but not yet answered (slots open)."""
        return len(self.slots)

    def check_invariants(self) -> None:
        """Slots bounded and in order, fetches started one at a time, in order."""
        self.slots.check_invariants()
        self.session.check_invariants()
        assert self._backlog >= 0, self._backlog
        assert len(self.fetches) <= len(self.slots), (len(self.fetches), len(self.slots))
        for later in list(self.fetches)[1:]:
            assert not later.started, later.request.correlation_id

    def stop_reading(self) -> None:
        """Graceful shutdown: take no new requests, finish the ones already read."""
        self._reader_scope.cancel()

    @property
    def is_idle(self) -> bool:
        """No request in flight (a trickled, unfinished frame does not count)."""
        return not self.slots and not self._backlog

    def evict(self, reason: str) -> None:
        """Close this connection now (the server needs its slot); logged."""
        self.logger.info("connection evicted", reason=reason)
        self._evicted = True
        if self._connection_scope is not None:
            self._connection_scope.cancel()

    async def run(self) -> None:
        """Serve until the client leaves, a limit or a violation closes us, or a
        shutdown drains us.  Never raises an error of this connection's making."""
        self.logger.debug("connection opened")
        send_channel, receive_channel = trio.open_memory_channel[tuple[Item, Slot]](
            self.limits.inflight_requests_max
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._connection_scope = nursery.cancel_scope
                if self._evicted:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._read_loop, send_channel, nursery.cancel_scope)
                nursery.start_soon(self._handle_loop, receive_channel)
                nursery.start_soon(self._write_loop, nursery.cancel_scope)
        except* ClientGone:
            pass
        except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
            self.logger.info("connection lost", error=str(group.exceptions[0]))
        except* Exception as group:
            # A bug in a handler: close this connection loudly, keep the server.
            self.logger.error("connection failed", exc_info=group)
        finally:
            for pending in self.fetches:
                pending.unregister()
            self.fetches.clear()
            self.slots.release_all()
            self.charge.release()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()
            self.logger.debug("connection closed")

    # -- reader -----------------------------------------------------------------------

    async def _read_loop(
        self,
        channel: trio.MemorySendChannel[tuple[Item, Slot]],
        connection_scope: trio.CancelScope,
    ) -> None:
        try:
            async with channel:
                with self._reader_scope:
                    await self._read_requests(channel, connection_scope)
        finally:
            self._reading_done = True
            self._wake_writer()

    async def _read_requests(
        self,
        channel: trio.MemorySendChannel[tuple[Item, Slot]],
        connection_scope: trio.CancelScope,
    ) -> None:
        idle_s = self.limits.idle_connection_timeout_ms / 1000
        while True:  # one pass per idle deadline reached, until EOF, a violation or idleness
            # One cancel scope per idle window, not per receive: the deadline is not
            # moved on by traffic; when it passes, we look whether we really were idle.
            with trio.move_on_at(self.last_activity + idle_s) as idle_scope:
                await self._receive_requests(channel, connection_scope)
                return
            assert idle_scope.cancelled_caught
            if self.slots or self._backlog:  # a long poll or a slow response: busy
                self.last_activity = trio.current_time()
            elif trio.current_time() >= self.last_activity + idle_s:
                self.logger.info(
                    "idle connection closed", idle_ms=self.limits.idle_connection_timeout_ms
                )
                connection_scope.cancel()
                return
            # else: traffic or the writer moved last_activity on: wait for the new deadline

    async def _receive_requests(
        self,
        channel: trio.MemorySendChannel[tuple[Item, Slot]],
        connection_scope: trio.CancelScope,
    ) -> None:
        """Receive and take requests until EOF or a violation.  Its only
        cancellation points are the receive and (rarely) the shielded refusal of
        an excess request, so the idle deadline never interrupts a request
        half-taken."""
        descriptor = self._descriptor
        wait_readable = trio.lowlevel.wait_readable
        buffers, view = receive_buffer()
        memory = self.memory
        charge = self.charge
        frame_timeout_s = self.limits.frame_receive_timeout_ms / 1000
        ready_in_a_row = 0
        drained = False
        while True:  # until EOF, a violation or cancellation
            # A plain non-blocking read, waiting only when the socket is empty: no
            # stream wrapper, no scheduler trip when bytes are already there.  After
            # a short read the socket was empty, so we wait first rather than spend
            # a read on EAGAIN.  A started frame must finish by its deadline, also
            # while the broker-wide request memory is full.
            if drained or memory.used_bytes >= memory.limit_bytes:
                ready_in_a_row = 0
                if charge.frame_started is None and not memory.full:
                    await wait_readable(descriptor)  # the usual case: no half-received frame
                if (
                    charge.frame_started is not None or memory.full
                ) and not await charge.wait_to_read(descriptor, frame_timeout_s):
                    self.broker.metrics.connections.limit_hit("frame_receive_timeout_ms")
                    self.logger.warning(
                        "frame not received in time, closing",
                        frame_receive_timeout_ms=self.limits.frame_receive_timeout_ms,
                        buffered_bytes=self.protocol_buffered_bytes(),
                    )
                    connection_scope.cancel()
                    return
            try:
                count = os.readv(descriptor, buffers)
            except BlockingIOError:
                drained = True
                continue
            if not count:
                buffered = self.protocol_buffered_bytes()
                if buffered:
                    self.logger.warning("truncated frame at end of stream", buffered_bytes=buffered)
                    connection_scope.cancel()
                return  # EOF: the requests read are answered, then we close
            drained = count < RECEIVE_BYTES_MAX
            self.last_activity = trio.current_time()
            try:
                # Copied out of the shared buffer before anything can await.
                self.protocol.receive_data(view[:count])
                await self._take_requests(channel)
            except ProtocolError as error:
                if error.code is ErrorCode.FRAME_TOO_LARGE:
                    self.broker.metrics.connections.limit_hit("frame_bytes_max")
                self.logger.warning(
                    "protocol violation, closing", error=error.message, code=error.code.name
                )
                connection_scope.cancel()
                return
            finally:
                self.charge.recharge(self.protocol_buffered_bytes())
            # A client that always has bytes ready still lets the others run.
            ready_in_a_row += 1
            if ready_in_a_row >= RECEIVES_WITHOUT_YIELD_MAX:
                ready_in_a_row = 0
                await trio.lowlevel.checkpoint()

    async def _take_requests(self, channel: trio.MemorySendChannel[tuple[Item, Slot]]) -> None:
        """Open a slot for every complete request in the buffer and handle it now
        or hand it to the handler task.  Raises ProtocolError."""
        while True:  # bounded by the bytes received
            item = self.protocol.next_request()
            if item is None:
                return
            self.charge.taken = True
            if self.slots.full:
                await self._refuse_excess(item)
                continue
            slot = self.slots.open(item, self.last_activity)
            self.last_request_time = self.last_activity
            if self.fetches and not continues_fetch(item):
                # A long poll (or a stream) must not hold up the answer of the
                # request behind it; a pipelined continuation is the next long poll.
                for pending in self.fetches:
                    pending.interrupt()
            if self._backlog == 0 and self._handle_now(item, slot):
                continue
            self._backlog += 1
            if isinstance(item, IncomingRequest):
                self.charge.queued_bytes += item.payload.nbytes
            channel.send_nowait((item, slot))  # never blocks: capacity == slots_max

    def protocol_buffered_bytes(self) -> int:
        # Bytes of a frame not yet complete.  ServerConnection does not expose this
        # (yet); its frame decoder does.
        buffered = getattr(self.protocol, "buffered_bytes", None)
        if isinstance(buffered, int):
            return buffered
        return int(self.protocol._frames.buffered_bytes)

    def _handle_now(self, item: Item, slot: Slot) -> bool:
        """Handle ``item`` here if that needs no waiting and return True; False
        leaves it to the handler task.  Sends what is sendable."""
        if isinstance(item, BadRequest):
            self.logger.info("bad request", api_key=item.api_key, error=item.error.message)
            self._complete_with_error(slot, item.error)
        elif isinstance(item.body, FetchRequest):
            self._add_fetch(item, slot)
        elif isinstance(item.body, ProduceRequest):
            try:
                if item.body.acks == Acks.ALL:
                    appended = append_produce_now(self.broker, item.body, item.payload)
                else:
                    produced = produce_now(self.broker, item.body, item.payload)
                    appended = None if produced is None else (produced, None)
            except DistributaryError as error:
                self._complete_with_error(slot, error)
            else:
                if appended is None:
                    return False  # it would wait: the handler task's job
                response, pending = appended
                if pending is None:
                    self._complete(slot, Reply(response))
                else:
                    # Appended; the answer waits for the followers in a task of its own.
                    assert self._nursery is not None
                    self._nursery.start_soon(self._answer_when_replicated, slot, response, pending)
        else:
            return False
        self._flush_now()
        return True

    async def _refuse_excess(self, item: Item) -> None:
        error = TooManyRequestsError(
            f"more than inflight_requests_max={self.limits.inflight_requests_max} "
            "requests in flight on this connection"
        )
        self.logger.warning(
            "request refused", reason="inflight_requests_max", correlation_id=item.correlation_id
        )
        self.broker.metrics.connections.limit_hit("inflight_requests_max")
        self.broker.metrics.requests.finished(item.api_key, error.code, 0.0)
        if not item.wants_response:
            return
        # The request is taken: its answer is never lost to the idle deadline or a
        # shutdown, only to a client that does not read for request_timeout_ms.
        deadline = trio.current_time() + self.limits.request_timeout_ms / 1000
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            while len(self._refusals) >= self.limits.inflight_requests_max:
                self._refusals_sent = trio.Event()
                self._wake_writer()
                await self._refusals_sent.wait()
        if scope.cancelled_caught:
            self.logger.warning(
                "client is not reading, closing", request_timeout_ms=self.limits.request_timeout_ms
            )
            raise ClientGone()
        self._refusals.append(ServerConnection.encode_error(item, error))
        self._flush_now()

    # -- handler ----------------------------------------------------------------------

    async def _handle_loop(self, channel: trio.MemoryReceiveChannel[tuple[Item, Slot]]) -> None:
        async with channel:
            async for item, slot in channel:
                try:
                    if self._handle_now(item, slot):
                        continue
                    assert isinstance(item, IncomingRequest)
                    body = item.body
                    if isinstance(body, ProduceRequest) and body.acks == Acks.ALL:
                        await self._handle_acks_all(item, body, slot)
                        continue
                    reply = await self._run_handler(item)
                    self._complete(slot, reply)
                    self._flush_now()
                finally:
                    self._backlog -= 1
                    assert self._backlog >= 0, self._backlog
                    if isinstance(item, IncomingRequest) and item.payload.nbytes:
                        self.charge.queued_bytes -= item.payload.nbytes
                        self.charge.recharge(self.protocol_buffered_bytes())
                    if not self._backlog:
                        self._wake_writer()

    async def _run_handler(self, request: IncomingRequest) -> Reply | DistributaryError | None:
        """``request``'s reply (None: no response wanted) or the error to answer."""
        error: DistributaryError
        timeout_s = self.limits.request_timeout_ms / 1000
        with trio.move_on_after(timeout_s) as scope:
            try:
                return await handle(self.broker, request)
            except DistributaryError as raised:
                error = raised
        if scope.cancelled_caught:
            self.broker.metrics.connections.limit_hit("request_timeout_ms")
            error = RequestTimedOutError(
                f"{request.api_key.name} took longer than request_timeout_ms="
                f"{self.limits.request_timeout_ms}"
            )
        return error

    async def _handle_acks_all(
        self, request: IncomingRequest, body: ProduceRequest, slot: Slot
    ) -> None:
        """Append an acks=all Produce under request_timeout_ms; its answer waits for
        the followers in a task of its own (broker/produce.py PendingReplication)."""
        error: DistributaryError
        with trio.move_on_after(self.limits.request_timeout_ms / 1000) as scope:
            try:
                response, pending = await append_produce(self.broker, body, request.payload)
            except DistributaryError as raised:
                error = raised
            else:
                if pending is None:
                    self._complete(slot, Reply(response))
                else:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._answer_when_replicated, slot, response, pending)
                self._flush_now()
                return
        if scope.cancelled_caught:
            error = RequestTimedOutError(
                f"PRODUCE took longer than request_timeout_ms={self.limits.request_timeout_ms}"
            )
        self._complete_with_error(slot, error)
        self._flush_now()

    async def _answer_when_replicated(
        self, slot: Slot, response: ProduceResponse, pending: PendingReplication
    ) -> None:
        await pending.wait()  # bounded by the produce's timeout
        self._complete(slot, Reply(response))
        self._flush_now()

    # -- completing slots -------------------------------------------------------------

    def _complete(self, slot: Slot, reply: Reply | DistributaryError | None) -> None:
        item = slot.item
        if isinstance(reply, DistributaryError):
            self._complete_with_error(slot, reply)
            return
        self._count(slot, ErrorCode.NONE)
        if reply is None or not item.wants_response:
            if reply is not None:
                reply.release()
            self.slots.add(slot, None, last=True)
        else:
            assert isinstance(item, IncomingRequest)
            self.slots.add(slot, reply_frame(item, reply), last=True)

    def _complete_with_error(self, slot: Slot, error: DistributaryError) -> None:
        item = slot.item
        self._count(slot, error.code)
        if isinstance(item, IncomingRequest):
            self.logger.info(
                "request failed", api=item.api_key.name, error=error.message, code=error.code.name
            )
        frame = None
        if item.wants_response:
            frame = Frame(ServerConnection.encode_error(item, error), [])
        self.slots.add(slot, frame, last=True)

    def _count(self, slot: Slot, code: int) -> None:
        """The request of ``slot`` is answered with ``code``: count it once."""
        duration_s = trio.current_time() - slot.arrived
        self.broker.metrics.requests.finished(slot.item.api_key, code, duration_s)

    # -- fetches ----------------------------------------------------------------------

    def _add_fetch(self, request: IncomingRequest, slot: Slot) -> None:
        self.fetches.append(PendingFetch(request, slot, self._wake_writer))
        self._service_fetches()

    def _service_fetches(self) -> None:
        """Move the fetches on, in order: start the first (resolve its offsets),
        answer it if it is ready, woken, interrupted or expired, else leave it
        registered with its partitions; then the next.  Never awaits."""
        broker = self.broker
        session = self.session
        fetches = self.fetches
        now = trio.current_time()
        while fetches:
            pending = fetches[0]
            body = pending.body
            try:
                if not pending.started:
                    session.resolve(body, self._truncations_of)
                    session.start_stream(body.responses_max)
                    pending.started = True
                    pending.deadline = now + self._wait_s(body)
                    pending.woken = True  # look now
                if pending.interrupted or now >= pending.deadline:
                    reply: Reply | None = collect_fetch(broker, body)
                elif pending.woken:
                    reply = fetch_now(broker, body)
                else:
                    return  # still waiting
            except DistributaryError as error:
                pending.unregister()
                fetches.popleft()
                self._complete_with_error(pending.slot, error)
                continue
            if reply is None:
                # A stream waits on the same partitions again: no new lookups.
                pending.register(pending.partitions or fetch_partitions(broker, body))
                sleep = self._writer_sleep
                if sleep is not None and not self._sending and pending.deadline < sleep.deadline:
                    sleep.deadline = pending.deadline  # the writer answers it then
                return
            if self._answer_fetch(pending, reply):
                pending.deadline = now + self._wait_s(body)
                pending.woken = True  # the stream's next answer: look now
                continue
            pending.unregister()
            fetches.popleft()

    def _answer_fetch(self, pending: PendingFetch, reply: Reply) -> bool:
        """Add ``reply`` to the fetch's slot; True when the fetch is a stream that
        answers again (this answer flagged MORE), continuing after this one."""
        body = pending.body
        session = self.session
        more = session.may_continue(
            reply.payload_length,
            any_fetch_error(reply.body),
            others_waiting=pending.interrupted,
            shutting_down=self.broker.shutting_down,
        )
        next_offsets = [region.next_offset for region in reply.regions]
        response = reply.body
        assert isinstance(response, FetchResponse), response
        count_fetched(self.broker.topics, body, response, reply.regions)
        if not more:
            self._count(pending.slot, ErrorCode.NONE)
        request = pending.request
        frame = reply_frame(request, reply, more=more) if request.wants_response else None
        if frame is None:
            reply.release()
        self.slots.add(pending.slot, frame, last=not more)
        # Sent before the bookkeeping, which only concerns the next answers.
        self._flush_now()
        session.note(body, response, next_offsets, self._truncations_of)
        if more:
            session.continue_after(body)
        return more

    def _wait_s(self, body: FetchRequest) -> float:
        return min(body.max_wait_ms, self.limits.request_timeout_ms) / 1000

    def _truncations_of(self, topic: str, index: int) -> int | None:
        found = self.broker.topics.get(topic)
        if found is None or not 0 <= index < len(found.partitions):
            return None
        return found.partitions[index].truncations

    # -- writer -----------------------------------------------------------------------

    def _wake_writer(self) -> None:
        task = self._writer_task
        if task is None:
            self._writer_woken = True  # busy (or not parked yet): it looks again
        else:
            self._writer_task = None
            trio.lowlevel.reschedule(task)

    def _abort_park(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._writer_task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _write_loop(self, connection_scope: trio.CancelScope) -> None:
        # One cancel scope per fetch deadline reached, not per wake-up (a scope
        # costs about as much as the wake-up itself): its deadline is at or before
        # the first parked fetch's, moved earlier as fetches park.
        while True:  # one pass per fetch deadline reached
            with trio.CancelScope() as sleep:
                self._writer_sleep = sleep
                await self._write(sleep)
                break  # the reader is done and everything is sent
            # A fetch's max_wait_ms passed (the next pass answers it), or the
            # first fetch's deadline moved later (the next pass sleeps on).
        self._writer_sleep = None
        connection_scope.cancel()

    async def _write(self, sleep: trio.CancelScope) -> None:
        """Answer fetches and send frames, sleeping between wake-ups until
        ``sleep``'s deadline (the first parked fetch's).  Returns once the reader
        is done and every request is answered."""
        task = trio.lowlevel.current_task()
        fetches = self.fetches
        while True:  # one pass per wake-up
            self._writer_woken = False
            self._service_fetches()
            await self._send_ready()
            if self._reading_done and not self._backlog and not self.slots and not self._refusals:
                return  # EOF or shutdown, and every request is answered
            if self._writer_woken:
                continue
            # The deadline only ever moves earlier here (moving a scope's deadline
            # costs about as much as a wake-up, and a stream moves its fetch's
            # deadline on with every answer): reached early, it ends this scope
            # and the next pass finds nothing expired and sleeps on.
            if fetches and fetches[0].started and fetches[0].deadline < sleep.deadline:
                sleep.deadline = fetches[0].deadline
            self._writer_task = task
            await trio.lowlevel.wait_task_rescheduled(self._abort_park)

    def _flush_now(self) -> None:
        """Send refusals and completed frames, in order, as far as the socket
        takes them now and without reading files; wakes the writer for the rest.
        Never awaits.  Raises OSError (peer gone)."""
        if self._sending:
            return
        descriptor = self._descriptor
        refusals = self._refusals
        while True:  # bounded by the frames ready
            frame = self.slots.peek_frame()
            if refusals and (frame is None or not frame.started):
                frame = Frame(refusals.popleft(), [])
                self._refusals_sent.set()
                sent = write_now(descriptor, frame.data)
                if sent < len(frame.data):
                    # Rare: finished by the writer ahead of the slots.
                    refusals.appendleft(bytes(memoryview(frame.data)[sent:]))
                    self._wake_writer()
                    return
                continue
            if frame is None:
                return
            if frame.regions:
                self._wake_writer()  # sendfile: the writer's job
                return
            sent = write_now(descriptor, frame.data)
            if sent < len(frame.data):
                if sent:
                    frame.started = True
                    frame.data = memoryview(frame.data)[sent:]
                self._wake_writer()
                return
            self.slots.pop_frame(frame)
            self.last_activity = trio.current_time()

    async def _send_ready(self) -> None:
        """Send refusals and completed frames, in order, waiting for the socket as
        needed (each frame within request_timeout_ms).  Raises ClientGone (client
        not reading), OSError (peer gone)."""
        self._flush_now()
        while True:  # bounded by the frames ready
            frame = self.slots.peek_frame()
            refusal = bool(self._refusals) and (frame is None or not frame.started)
            if refusal:
                frame = Frame(self._refusals.popleft(), [])
                self._refusals_sent.set()
            if frame is None:
                return
            deadline = trio.current_time() + self.limits.request_timeout_ms / 1000
            self._sending = True
            if self._writer_sleep is not None:
                # No fetch deadline may cut a frame (set again before the next sleep).
                self._writer_sleep.deadline = math.inf
            try:
                with trio.CancelScope(deadline=deadline) as scope:
                    await send_frame(self.socket, frame)
            finally:
                self._sending = False
            if scope.cancelled_caught:
                self.logger.warning(
                    "client is not reading, closing",
                    request_timeout_ms=self.limits.request_timeout_ms,
                )
                raise ClientGone()
            if not refusal:
                self.slots.pop_frame(frame)
                frame.release()
            self.last_activity = trio.current_time()
            self._flush_now()


def continues_fetch(item: Item) -> bool:
    """A fetch that only continues where the connection's previous one ended."""
    if not isinstance(item, IncomingRequest) or not isinstance(item.body, FetchRequest):
        return False
    return all(
        wanted.fetch_offset == FETCH_OFFSET_CONTINUE
        for fetch_topic in item.body.topics
        for wanted in fetch_topic.partitions
    )
