"""Frames: the unit on the wire.  Sans-I/O: bytes in, frames out, and back.

    offset  size  field
         0     4  frame_length    u32  bytes after this field
         4     2  api_key         u16
         6     2  api_version     u16
         8     4  correlation_id  u32
        12     2  flags           u16  bit 0: response; bit 1: no response wanted
        14     4  body_length     u32  bytes of the msgpack body
        18     -  body            msgpack, one tagged Struct (client/protocol/messages.py)
         -     -  payload         frame_length - 14 - body_length raw bytes (record batches)

Every length is checked against its limit *before* anything is buffered for it:
a declared frame over ``frame_bytes_max`` raises FrameTooLargeError as soon as
its first four bytes arrive, and a body over ``body_bytes_max`` as soon as the
18 header bytes arrive.  After a ProtocolError the decoder is dead: the
connection must be closed (resynchronising a byte stream is guesswork).

Cost: the decoder keeps one ``bytearray`` and a read position.  Bytes are
appended once, each frame's body is copied out once, and its payload is copied
out once (or, for a big payload that ends the buffer, handed over with no copy
at all).  Consumed bytes are dropped when they are at least half the buffer, so
every byte is moved O(1) times: feeding many small frames, or one big frame a
few bytes at a time, costs time linear in the bytes fed.
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

from client.errors import FrameTooLargeError, ProtocolError

FRAME_HEADER: Final = struct.Struct(">IHHIHI")
FRAME_HEADER_BYTES: Final = FRAME_HEADER.size  # 18
LENGTH_PREFIX_BYTES: Final = 4
assert FRAME_HEADER_BYTES == 18
# The header bytes counted by frame_length (everything after the length prefix).
HEADER_AFTER_LENGTH_BYTES: Final = FRAME_HEADER_BYTES - LENGTH_PREFIX_BYTES  # 14

FLAG_RESPONSE: Final = 0x0001
FLAG_NO_RESPONSE: Final = 0x0002
# On a response: more responses to the same request follow (a Fetch stream).
FLAG_MORE: Final = 0x0004
KNOWN_FLAGS: Final = FLAG_RESPONSE | FLAG_NO_RESPONSE | FLAG_MORE

# 64 MiB: enough for a fetch response of several partitions at their default
# 1 MiB maxima plus a 16 MiB batch, far below what would hurt a 24 GiB machine
# even with many connections at once.  Kafka's socket.request.max.bytes is 100 MiB.
FRAME_BYTES_MAX_DEFAULT: Final = 64 * 1024 * 1024
# Bodies are metadata only (topic names, offsets): 4 MiB is generous.
BODY_BYTES_MAX_DEFAULT: Final = 4 * 1024 * 1024
CORRELATION_ID_MODULUS: Final = 1 << 32
# The wire cannot express a frame longer than this (frame_length is a u32).
FRAME_BYTES_MAX_WIRE: Final = LENGTH_PREFIX_BYTES + (1 << 32) - 1
_U16_MODULUS: Final = 1 << 16

# Consumed bytes are dropped from the front of the buffer once there are at
# least this many *and* they are at least half the buffer (amortised O(1) per
# byte); below this, dropping them is not worth a call.
_COMPACT_BYTES_MIN: Final = 64 * 1024
# A payload at least this big that ends the buffer is handed over without a
# copy (the decoder starts a fresh buffer); smaller ones are copied out.
_HANDOVER_PAYLOAD_BYTES_MIN: Final = 64 * 1024

_LENGTH: Final = struct.Struct(">I")


class FrameHead(msgspec.Struct, frozen=True):
    """The fixed fields of a frame."""

    frame_length: int
    api_key: int
    api_version: int
    correlation_id: int
    flags: int
    body_length: int

    @property
    def payload_length(self) -> int:
        return self.frame_length - HEADER_AFTER_LENGTH_BYTES - self.body_length

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)


class RawFrame(msgspec.Struct):
    """A complete frame, body still encoded; ``payload`` is a writable view over a
    buffer owned by this frame alone (the broker stamps offsets into it)."""

    head: FrameHead
    body: bytes
    payload: memoryview


def encode_head(
    api_key: int,
    api_version: int,
    correlation_id: int,
    flags: int,
    body: bytes,
    payload_length: int = 0,
) -> bytes:
    """The frame header followed by ``body``; the caller sends ``payload_length``
    bytes of payload right after (so a payload can go out by ``os.sendfile``).

    Out-of-range arguments are programmer errors (AssertionError)."""
    frame_length = HEADER_AFTER_LENGTH_BYTES + len(body) + payload_length
    assert payload_length >= 0, payload_length
    assert frame_length + LENGTH_PREFIX_BYTES <= FRAME_BYTES_MAX_WIRE, frame_length
    assert 0 <= api_key < _U16_MODULUS and 0 <= api_version < _U16_MODULUS, (api_key, api_version)
    assert 0 <= correlation_id < CORRELATION_ID_MODULUS, correlation_id
    assert flags & ~KNOWN_FLAGS == 0, flags
    return (
        FRAME_HEADER.pack(frame_length, api_key, api_version, correlation_id, flags, len(body))
        + body
    )


class FrameDecoder:
    """Accumulates bytes and cuts them into frames.

    ``receive_data(data)`` then ``next_frame()`` until it returns None.  The owner
    must drain ``next_frame()`` after each ``receive_data`` so that at most one
    frame (bounded by ``frame_bytes_max``) plus one read is ever buffered.
    Raises FrameTooLargeError / ProtocolError; after one, the decoder refuses
    further use (every call raises ProtocolError).  Not thread-safe: one owner.
    """

    __slots__ = (
        "_body_bytes_max",
        "_buffer",
        "_dead",
        "_frame_bytes_max",
        "_head",
        "_position",
    )

    def __init__(
        self,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        body_bytes_max: int = BODY_BYTES_MAX_DEFAULT,
    ) -> None:
        assert FRAME_HEADER_BYTES <= frame_bytes_max <= FRAME_BYTES_MAX_WIRE, frame_bytes_max
        assert body_bytes_max >= 0, body_bytes_max
        self._frame_bytes_max = frame_bytes_max
        self._body_bytes_max = body_bytes_max
        self._buffer = bytearray()
        self._position = 0  # start of the first unconsumed byte in _buffer
        self._head: FrameHead | None = None  # the checked head of the frame at _position
        self._dead = False

    @property
    def frame_bytes_max(self) -> int:
        return self._frame_bytes_max

    def allow_frames_up_to(self, frame_bytes_max: int) -> None:
        """Raise the frame limit (a peer announced a bigger one); bodies keep theirs.
        Lowering it is a programmer error: a frame may already be half in."""
        assert self._frame_bytes_max <= frame_bytes_max <= FRAME_BYTES_MAX_WIRE, frame_bytes_max
        self._frame_bytes_max = frame_bytes_max

    @property
    def body_bytes_max(self) -> int:
        return self._body_bytes_max

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned in a frame."""
        return len(self._buffer) - self._position

    @property
    def dead(self) -> bool:
        """True once a ProtocolError was raised: the connection must be closed."""
        return self._dead

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the peer.  Raises ProtocolError if dead."""
        if self._dead:
            raise ProtocolError("frame decoder used after a protocol error")
        if self._position and self._position == len(self._buffer):
            self._buffer.clear()
            self._position = 0
        self._buffer += data

    def next_frame(self) -> RawFrame | None:
        """The next complete frame, or None if more bytes are needed.

        Raises FrameTooLargeError (a declared length over its limit, raised before
        the bytes arrive) or ProtocolError (a length shorter than the header,
        unknown flag bits, a body longer than the frame, or the decoder is dead).
        """
        if self._dead:
            raise ProtocolError("frame decoder used after a protocol error")
        head = self._head
        if head is None:
            if len(self._buffer) - self._position < LENGTH_PREFIX_BYTES:
                return None  # the usual end of a read: nothing left
            try:
                head = self._read_head()
            except ProtocolError:
                self._dead = True
                raise
            if head is None:
                return None
            self._head = head
        buffer = self._buffer
        start = self._position
        end = start + LENGTH_PREFIX_BYTES + head.frame_length
        if len(buffer) < end:
            return None
        self._head = None
        body_start = start + FRAME_HEADER_BYTES
        body_end = body_start + head.body_length
        payload_length = end - body_end
        handover = end == len(buffer) and payload_length >= max(start, _HANDOVER_PAYLOAD_BYTES_MIN)
        with memoryview(buffer) as view:  # released before the buffer is resized
            body = bytes(view[body_start:body_end])
            copied = None if handover else bytearray(view[body_end:end])
        if copied is None:
            # A big payload that ends the buffer: give the whole buffer away, no copy.
            payload = memoryview(buffer)[body_end:end]
            self._buffer = bytearray()
            self._position = 0
        else:
            payload = memoryview(copied)
            self._consume(end)
        return RawFrame(head, body, payload)

    def _consume(self, end: int) -> None:
        buffer = self._buffer
        if end == len(buffer):
            buffer.clear()
            self._position = 0
        elif end >= _COMPACT_BYTES_MIN and end * 2 >= len(buffer):
            del buffer[:end]  # moves at most as many bytes as were consumed
            self._position = 0
        else:
            self._position = end

    def _read_head(self) -> FrameHead | None:
        buffer = self._buffer
        start = self._position
        available = len(buffer) - start
        if available < LENGTH_PREFIX_BYTES:
            return None
        (frame_length,) = _LENGTH.unpack_from(buffer, start)
        if frame_length + LENGTH_PREFIX_BYTES > self._frame_bytes_max:
            raise FrameTooLargeError(
                f"frame of {frame_length + LENGTH_PREFIX_BYTES} bytes exceeds "
                f"frame_bytes_max {self._frame_bytes_max}"
            )
        if frame_length < HEADER_AFTER_LENGTH_BYTES:
            raise ProtocolError(f"frame length {frame_length} is shorter than the frame header")
        if available < FRAME_HEADER_BYTES:
            return None
        head = FrameHead(*FRAME_HEADER.unpack_from(buffer, start))
        if head.flags & ~KNOWN_FLAGS:
            raise ProtocolError(f"unknown frame flags {head.flags:#06x}")
        if head.body_length > self._body_bytes_max:
            raise FrameTooLargeError(
                f"frame body of {head.body_length} bytes exceeds body_bytes_max "
                f"{self._body_bytes_max}"
            )
        if head.payload_length < 0:
            raise ProtocolError(
                f"body length {head.body_length} exceeds frame length {frame_length}"
            )
        return head
