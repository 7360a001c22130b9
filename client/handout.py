"""Handing fetched records to the application: ``getmany`` and ``async for``.

:class:`RecordHandout` is the part of the Consumer that reads the chunks a
:class:`~client.fetcher.Fetcher` buffered per partition (lists of decoded
records) and hands them out: ``getmany`` returns whole chunks (or slices, under
``max_records``) per partition, starting from a rotating partition so none
starves; ``async for`` walks one chunk at a time, so the per-record cost of
iterating is one list index.  A reader with nothing to take parks on an event
that the fetch loop's ``on_data`` sets (or a timer, for ``getmany``'s timeout).

Taking records makes room in a buffer, which wakes the fetch loop.  Errors
come out here: one a background task reported (``report_error``), or a
partition's own once its buffered records are taken.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any

from client._io.connection import EventLoopTools, LoopEvent
from client._logging import get_logger
from client.errors import ConnectionClosedError, DistributaryError
from client.fetch_loop import FetchLoop
from client.fetcher import Fetcher, PartitionFetchState
from client.records.decoder import Record
from client.types import TopicPartition

log = get_logger("client.consumer")


class RecordHandout:
    """Hands out what the Fetcher buffered (see the module docstring).  The
    Consumer subclasses it and sets the attributes below."""

    _fetcher: Fetcher
    _fetch_loop: FetchLoop | None
    _tools: EventLoopTools | None
    _closed: bool
    _group: object | None  # the group membership, if any (see _before_poll)

    def __init__(self) -> None:
        self._data_ready: LoopEvent | None = None
        self._data_timer: asyncio.TimerHandle | None = None  # see _wait_for_data
        self._data_timer_at = math.inf  # when _data_timer fires (loop clock)
        self._pending_errors: list[DistributaryError] = []
        # The chunk ``async for`` is walking: its partition, list and next index.
        self._iter_tp: TopicPartition | None = None
        self._iter_records: list[Record[Any]] = []
        self._iter_index = 0
        self._rotation = 0
        # True from handing records out until the application asks for more: it
        # may be processing them, so a group revocation waits (see client/group.py).
        self._busy = False

    def _require_open(self) -> None:
        """Raises ConnectionClosedError once closed."""
        raise NotImplementedError

    async def _before_poll(self) -> None:
        """The application asks for more: what it had is processed."""
        self._busy = False

    # -- getmany ------------------------------------------------------------------------

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record[Any]]]:
        """Records fetched so far, per partition, in offset order; waits up to
        ``timeout_ms`` for the first to arrive (an empty dict after that).

        Raises OffsetOutOfRangeError (a position out of range with
        ``auto_offset_reset="none"``), the typed error of a partition that failed
        for good, or BrokerUnavailableError when the broker could not be reached
        for a while (fetching goes on).
        """
        assert max_records is None or max_records > 0
        self._require_open()
        if self._iter_tp is not None:
            # Hand back what ``async for`` had not reached yet, in order.
            self._return_iterator_chunk()
        if self._group is None:
            self._busy = False  # all _before_poll does without a group
        else:
            await self._before_poll()
        limit = max_records if max_records is not None else math.inf
        tools = self._tools
        assert tools is not None
        deadline = tools.clock() + timeout_ms / 1000
        while True:
            self._raise_pending()
            result = self._take(limit)
            if result:
                return result
            if self._closed:
                raise ConnectionClosedError("the consumer is closed")
            if tools.clock() >= deadline:
                return {}
            await self._wait_for_data(tools, deadline)

    async def _wait_for_data(self, tools: EventLoopTools, deadline: float) -> None:
        """Park until data (or an error) may be there, or ``deadline`` (on the
        ``tools.clock`` scale) passed; waking early is allowed."""
        event = self._data_ready
        if event is None:
            event = self._data_ready = tools.event()
        call_at = tools.call_at
        if call_at is None:  # trio: its cancel scopes are cheap
            await tools.wait_or_timeout(event, deadline - tools.clock())
            if self._data_ready is event:  # set by the timeout, not by _signal_data
                self._data_ready = None
            return
        # asyncio: one timer serves the waits of successive getmany calls (a poll
        # loop), as long as it fires no later than their deadlines; it may fire
        # early, and the caller then waits again.
        timer = self._data_timer
        if timer is None or self._data_timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self._data_timer = call_at(deadline, self._data_timer_fired)
            self._data_timer_at = deadline
        await event.wait()

    def _data_timer_fired(self) -> None:
        self._data_timer = None
        self._signal_data()

    def _cancel_data_timer(self) -> None:
        if self._data_timer is not None:
            self._data_timer.cancel()
            self._data_timer = None

    def _signal_data(self) -> None:
        """Wake a parked reader: records or an error may be there."""
        event = self._data_ready
        if event is not None:
            self._data_ready = None
            event.set()

    def _signal_room(self) -> None:
        """Wake the fetch loop: a buffer has room, or partitions moved."""
        loop = self._fetch_loop
        if loop is not None and loop.room is not None:
            loop.wake()

    def _take(self, max_records: float) -> dict[TopicPartition, list[Record[Any]]]:
        result: dict[TopicPartition, list[Record[Any]]] = {}
        taken = 0
        states = self._fetcher.states
        items: Iterable[tuple[TopicPartition, PartitionFetchState]]
        if len(states) <= 1:
            items = states.items()
        else:
            # Start from a rotating partition so none starves under max_records.
            rotated = list(states.items())
            self._rotation = (self._rotation + 1) % len(rotated)
            items = rotated[self._rotation :] + rotated[: self._rotation]
        for tp, state in items:
            if state.paused:
                continue
            chunks = state.chunks
            head = state.head
            while chunks and taken < max_records:
                chunk = chunks[0]
                available = len(chunk) - head
                if available <= max_records - taken:  # the rest of the chunk
                    part = chunk[head:] if head else chunk
                    chunks.popleft()
                    head = 0
                    count = available
                else:
                    count = int(max_records - taken)
                    part = chunk[head : head + count]
                    head += count
                existing = result.get(tp)
                if existing is None:
                    result[tp] = part
                else:
                    existing.extend(part)
                taken += count
            state.head = head
            if taken >= max_records:
                break
        if taken:
            self._busy = True
            self._signal_room()
        return result

    def _raise_pending(self) -> None:
        if self._pending_errors:
            raise self._pending_errors.pop(0)
        for tp, state in self._fetcher.states.items():
            if state.error is not None and not state.chunks:
                error, state.error = state.error, None
                log.info("partition error", partition=str(tp), error=str(error))
                raise error

    def report_error(self, error: BaseException) -> None:
        """Hand an error from a background task to the next getmany / iteration."""
        if isinstance(error, DistributaryError):
            self._pending_errors.append(error)
        else:
            self._pending_errors.append(DistributaryError(f"callback failed: {error!r}"))
        self._signal_data()

    # -- async iteration ----------------------------------------------------------------

    def __aiter__(self) -> RecordHandout:
        return self

    async def __anext__(self) -> Record[Any]:
        """The next record of any assigned partition (waits as long as needed)."""
        index = self._iter_index
        records = self._iter_records
        if index < len(records):
            self._iter_index = index + 1
            return records[index]
        self._drop_iterator_chunk()
        self._require_open()
        await self._before_poll()
        while True:
            self._raise_pending()
            taken = self._take_chunk()
            if taken is not None:
                self._iter_tp, self._iter_records = taken
                self._iter_index = 1
                return self._iter_records[0]
            if self._closed:
                raise StopAsyncIteration
            if self._data_ready is None:
                assert self._tools is not None
                self._data_ready = self._tools.event()
            await self._data_ready.wait()

    def _take_chunk(self) -> tuple[TopicPartition, list[Record[Any]]] | None:
        """The rest of the first buffered chunk of the next partition that has one."""
        items = list(self._fetcher.states.items())
        count = len(items)
        for step in range(count):
            tp, state = items[(self._rotation + step) % count]
            if state.chunks and not state.paused:
                self._busy = True
                self._rotation = (self._rotation + step + 1) % count
                chunk = state.chunks.popleft()
                if state.head:
                    chunk = chunk[state.head :]
                    state.head = 0
                self._signal_room()
                return tp, chunk
        return None

    def _iterator_position(self, tp: TopicPartition) -> int | None:
        """The offset of the next record ``async for`` hands out of ``tp``'s chunk
        (None: it walks no chunk of ``tp``, or is at its end)."""
        if self._iter_tp == tp and self._iter_index < len(self._iter_records):
            return int(self._iter_records[self._iter_index].offset)
        return None

    def _return_iterator_chunk(self) -> None:
        tp = self._iter_tp
        assert tp is not None
        state = self._fetcher.states.get(tp)
        rest = self._iter_records[self._iter_index :]
        if state is not None and rest:
            if state.chunks:
                rest.extend(state.chunks[0][state.head :])
                state.chunks[0] = rest
            else:
                state.chunks.append(rest)
            state.head = 0
        self._drop_iterator_chunk()

    def _drop_iterator_chunk(self) -> None:
        self._iter_tp = None
        self._iter_records = []
        self._iter_index = 0
