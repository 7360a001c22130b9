"""Response slots: one connection's answers, in the order its requests arrived.

Each request read from a connection gets a :class:`Slot` at the back of the
connection's :class:`ResponseSlots` before it is handled.  A handler completes
its slot whenever it is ready -- a Produce at once, a long-polling Fetch when
data arrives or its max_wait_ms passes -- by adding a :class:`Frame` (an encoded
response head plus the payload's file regions) and saying whether it is the
slot's last: a fetch stream adds several frames, each but the last flagged MORE.
A request that wants no response (acks=0) completes its slot with no frame.

Frames leave strictly in slot order: :meth:`ResponseSlots.next_frame` hands
out the front slot's frames only, so an answer completed early waits for every
answer before it (the order Kafka clients rely on).  A slot is dropped once it
is complete and its frames are handed out.  Bounded: at most ``slots_max``
slots (the connection's inflight_requests_max).  Sans-I/O: no trio, no sockets.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from broker.storage.file_handle import FileRegion
from client.protocol.connection import BadRequest, IncomingRequest
from client.protocol.messages import Response

Item = IncomingRequest | BadRequest


@dataclass
class Reply:
    """A response body and the file regions that follow it as the frame payload."""

    body: Response
    regions: list[FileRegion] = field(default_factory=list)

    @property
    def payload_length(self) -> int:
        regions = self.regions
        if not regions:
            return 0
        return sum(region.length for region in regions)

    def release(self) -> None:
        if not self.regions:
            return
        for region in self.regions:
            region.release()
        self.regions = []


class Frame:
    """Bytes to send (``data``), then ``regions`` sent from their files.  Once
    sending starts, ``data`` shrinks to what is left (a frame the socket took in
    part is finished before any other)."""

    __slots__ = ("data", "regions", "started")

    def __init__(self, data: bytes | memoryview, regions: list[FileRegion]) -> None:
        self.data = data
        self.regions = regions
        self.started = False

    def release(self) -> None:
        regions, self.regions = self.regions, []
        for region in regions:
            region.release()


class Slot:
    """The answer to one request: frames ready to send, and whether it is done."""

    __slots__ = ("arrived", "done", "frames", "item")

    def __init__(self, item: Item, arrived: float = 0.0) -> None:
        self.item = item
        self.arrived = arrived  # when the request was read (for its duration metric)
        self.frames: deque[Frame] = deque()
        self.done = False


class ResponseSlots:
    """A connection's slots in request order; see the module docstring."""

    def __init__(self, slots_max: int) -> None:
        assert slots_max >= 1, slots_max
        self.slots_max = slots_max
        self._slots: deque[Slot] = deque()

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def full(self) -> bool:
        return len(self._slots) >= self.slots_max

    def open(self, item: Item, arrived: float = 0.0) -> Slot:
        """A new slot at the back for ``item``, read at time ``arrived`` (the caller
        checked ``full``)."""
        assert len(self._slots) < self.slots_max, len(self._slots)
        slot = Slot(item, arrived)
        self._slots.append(slot)
        return slot

    def add(self, slot: Slot, frame: Frame | None, *, last: bool) -> None:
        """Complete ``slot`` with ``frame`` (None: no response), or add one of
        several frames (``last`` False: more follow)."""
        assert not slot.done, slot.item
        if frame is not None:
            slot.frames.append(frame)
        slot.done = last

    def is_front(self, slot: Slot) -> bool:
        return bool(self._slots) and self._slots[0] is slot

    def peek_frame(self) -> Frame | None:
        """The next frame to send (the front slot's first), or None when the front
        slot has nothing ready yet.  Drops front slots that are done and sent."""
        slots = self._slots
        while slots:
            front = slots[0]
            if front.frames:
                return front.frames[0]
            if not front.done:
                return None
            slots.popleft()
        return None

    def pop_frame(self, frame: Frame) -> None:
        """``frame`` (from :meth:`peek_frame`) is sent."""
        front = self._slots[0]
        assert front.frames[0] is frame
        front.frames.popleft()
        if front.done and not front.frames:
            self._slots.popleft()

    def release_all(self) -> None:
        """Release every unsent frame's regions (the connection is closing)."""
        for slot in self._slots:
            for frame in slot.frames:
                frame.release()
            slot.frames.clear()
        self._slots.clear()

    def check_invariants(self) -> None:
        assert len(self._slots) <= self.slots_max, len(self._slots)
        for index, slot in enumerate(self._slots):
            for frame in list(slot.frames)[1:]:
                assert not frame.started, slot.item
            if index > 0:
                assert not any(frame.started for frame in slot.frames), slot.item
