"""ResponseSlots without sockets: frames leave in request order, whatever the
order in which slots complete."""

from __future__ import annotations

from broker.response_slots import Frame, ResponseSlots
from client.protocol.connection import IncomingRequest
from client.protocol.messages import ApiKey, HelloRequest


def item(correlation_id: int) -> IncomingRequest:
    return IncomingRequest(ApiKey.HELLO, 0, correlation_id, True, HelloRequest(), memoryview(b""))


def drain(slots: ResponseSlots) -> list[bytes]:
    sent: list[bytes] = []
    while True:  # bounded by the frames added
        frame = slots.peek_frame()
        if frame is None:
            return sent
        sent.append(bytes(frame.data))
        slots.pop_frame(frame)
        slots.check_invariants()


def test_a_later_answer_completed_first_waits_for_the_earlier_one() -> None:
    """Slot 2 completes before slot 1: nothing leaves until slot 1 does, then both
    in request order."""
    slots = ResponseSlots(4)
    first, second = slots.open(item(1)), slots.open(item(2))
    slots.add(second, Frame(b"second", []), last=True)
    assert drain(slots) == []
    slots.add(first, Frame(b"first", []), last=True)
    assert drain(slots) == [b"first", b"second"]
    assert len(slots) == 0


def test_a_stream_sends_its_frames_as_they_come_and_holds_the_slots_behind() -> None:
    """A slot with several frames (a fetch stream) sends each at once; the slot
    behind it waits for its last frame."""
    slots = ResponseSlots(4)
    stream, after = slots.open(item(1)), slots.open(item(2))
    slots.add(after, Frame(b"after", []), last=True)
    slots.add(stream, Frame(b"more-1", []), last=False)
    assert drain(slots) == [b"more-1"]
    slots.add(stream, Frame(b"last", []), last=True)
    assert drain(slots) == [b"last", b"after"]


def test_a_slot_without_a_response_is_skipped_and_the_bound_holds() -> None:
    """A request that wants no answer completes with no frame; slots_max bounds
    the open slots."""
    slots = ResponseSlots(2)
    silent, answered = slots.open(item(1)), slots.open(item(2))
    assert slots.full
    slots.add(answered, Frame(b"answer", []), last=True)
    slots.add(silent, None, last=True)
    assert drain(slots) == [b"answer"]
    assert not slots.full and len(slots) == 0
