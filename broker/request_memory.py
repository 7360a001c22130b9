"""The broker-wide budget for request bytes held in memory (Kafka's
``queued.max.request.bytes``).

Every connection charges what it holds: the bytes of a frame it has started to
receive but not finished, and the payloads of requests read but queued for its
handler task.  When the total reaches ``limit_bytes``, readers stop reading (they
wait in :meth:`RequestMemory.wait_for_room`) until memory is released; a reader
that already holds part of a frame still waits, so a frame's deadline
(``frame_receive_timeout_ms``, broker/connection.py) is what frees memory pinned by
clients that stopped half way.  One read (at most RECEIVE_BYTES_MAX) per
connection may go over the limit: a read is charged after it happened.

:class:`ConnectionCharge` is one connection's share: what it holds, and when the
frame it is receiving began (the reader's waits end at that frame's deadline).

Concurrency: event-loop thread only.
"""

from __future__ import annotations

import trio


class RequestMemory:
    """Bytes held by every connection's unfinished and queued requests."""

    __slots__ = ("_room", "limit_bytes", "peak_bytes", "used_bytes", "waits")

    def __init__(self, limit_bytes: int) -> None:
        assert limit_bytes >= 1, limit_bytes
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self.peak_bytes = 0  # the most ever held at once: for tests and operators
        self.waits = 0  # times a reader had to wait for room
        self._room = trio.Event()

    @property
    def full(self) -> bool:
        return self.used_bytes >= self.limit_bytes

    def charge(self, delta_bytes: int) -> None:
        """Add ``delta_bytes`` (negative: release) to what is held."""
        used = self.used_bytes + delta_bytes
        assert used >= 0, (self.used_bytes, delta_bytes)
        self.used_bytes = used
        if used > self.peak_bytes:
            self.peak_bytes = used
        if delta_bytes < 0 and used < self.limit_bytes:
            self._room.set()

    async def wait_for_room(self) -> None:
        """Return once less than ``limit_bytes`` is held (at once if so)."""
        while self.used_bytes >= self.limit_bytes:  # until a release makes room
            self.waits += 1
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()

    def check_invariants(self) -> None:
        assert 0 <= self.used_bytes <= self.peak_bytes, (self.used_bytes, self.peak_bytes)


async def _wait_readable_with_room(descriptor: int, memory: RequestMemory) -> None:
    await trio.lowlevel.wait_readable(descriptor)
    while memory.full:  # until a release (or the caller's deadline)
        await memory.wait_for_room()
        await trio.lowlevel.wait_readable(descriptor)


class ConnectionCharge:
    """What one connection holds in a :class:`RequestMemory`: the unfinished frame
    in its decoder plus the payloads of requests queued for its handler task."""

    __slots__ = ("frame_started", "held_bytes", "memory", "queued_bytes", "taken")

    def __init__(self, memory: RequestMemory) -> None:
        self.memory = memory
        self.held_bytes = 0  # charged to ``memory``
        self.queued_bytes = 0  # payloads of requests handed to the handler task
        # When the unfinished frame began to arrive (None: none); its deadline
        # counts from here.
        self.frame_started: float | None = None
        self.taken = False  # a request was taken since the last recharge

    def recharge(self, buffered_bytes: int) -> None:
        """Charge what the connection holds now, ``buffered_bytes`` of an unfinished
        frame included.  Once per read."""
        held = buffered_bytes + self.queued_bytes
        if held != self.held_bytes:
            self.memory.charge(held - self.held_bytes)
            self.held_bytes = held
        if not buffered_bytes:
            self.frame_started = None
        elif self.frame_started is None or self.taken:
            # The unfinished frame began in this read (an earlier one completed).
            self.frame_started = trio.current_time()
        self.taken = False

    def release(self) -> None:
        """The connection is closed: give everything back."""
        self.memory.charge(-self.held_bytes)
        self.held_bytes = self.queued_bytes = 0
        self.frame_started = None

    async def wait_to_read(self, descriptor: int, frame_timeout_s: float) -> bool:
        """Wait until ``descriptor`` is readable and the memory has room; False if
        the unfinished frame's deadline (``frame_timeout_s`` after it began) passed
        first."""
        if self.frame_started is None:
            await _wait_readable_with_room(descriptor, self.memory)
            return True
        with trio.move_on_at(self.frame_started + frame_timeout_s):
            await _wait_readable_with_room(descriptor, self.memory)
            return True
        return False
