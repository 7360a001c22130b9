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
