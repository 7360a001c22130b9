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
its first four bytes arrive.  After a ProtocolError the decoder is dead: the
connection must be closed (resynchronising a byte stream is guesswork).
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

FLAG_RESPONSE: Final = 0x0001
FLAG_NO_RESPONSE: Final = 0x0002
KNOWN_FLAGS: Final = FLAG_RESPONSE | FLAG_NO_RESPONSE

# 64 MiB: enough for a fetch response of several partitions at their default
# 1 MiB maxima plus a 16 MiB batch, far below what would hurt a 24 GiB machine
# even with many connections at once.  Kafka's socket.request.max.bytes is 100 MiB.
FRAME_BYTES_MAX_DEFAULT: Final = 64 * 1024 * 1024
# Bodies are metadata only (topic names, offsets): 4 MiB is generous.
BODY_BYTES_MAX_DEFAULT: Final = 4 * 1024 * 1024
CORRELATION_ID_MODULUS: Final = 1 << 32


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
        return self.frame_length - (FRAME_HEADER_BYTES - LENGTH_PREFIX_BYTES) - self.body_length

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
    bytes of payload right after (so a payload can go out by ``os.sendfile``)."""
    frame_length = FRAME_HEADER_BYTES - LENGTH_PREFIX_BYTES + len(body) + payload_length
    return (
        FRAME_HEADER.pack(frame_length, api_key, api_version, correlation_id, flags, len(body))
        + body
    )


class FrameDecoder:
    """Accumulates bytes and cuts them into frames.

    ``receive_data(data)`` then ``next_frame()`` until it returns None.  Raises
    FrameTooLargeError / ProtocolError; after one, the decoder refuses further use.
    Not thread-safe: one owner.
    """

    __slots__ = ("_body_bytes_max", "_buffer", "_dead", "_frame_bytes_max", "_position")

    def __init__(
        self,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        body_bytes_max: int = BODY_BYTES_MAX_DEFAULT,
    ) -> None:
        assert frame_bytes_max >= FRAME_HEADER_BYTES
        self._frame_bytes_max = frame_bytes_max
        self._body_bytes_max = body_bytes_max
        self._buffer = bytearray()
        self._position = 0
        self._dead = False

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._position

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._dead:
            raise ProtocolError("frame decoder used after a protocol error")
        if self._position and self._position == len(self._buffer):
            self._buffer.clear()
            self._position = 0
        self._buffer += data

    def next_frame(self) -> RawFrame | None:
        """The next complete frame, or None if more bytes are needed."""
        if self._dead:
            raise ProtocolError("frame decoder used after a protocol error")
        buffer = self._buffer
        start = self._position
        available = len(buffer) - start
        if available < LENGTH_PREFIX_BYTES:
            return None
        try:
            head = self._check_head(buffer, start, available)
        except ProtocolError:
            self._dead = True
            raise
        if head is None:
            return None
        end = start + LENGTH_PREFIX_BYTES + head.frame_length
        if len(buffer) < end:
            return None
        body_start = start + FRAME_HEADER_BYTES
        body_end = body_start + head.body_length
        body = bytes(buffer[body_start:body_end])
        payload = memoryview(bytearray(buffer[body_end:end]))
        self._position = end
        if end == len(buffer):
            buffer.clear()
            self._position = 0
        elif end > (1 << 20) and end * 2 > len(buffer):
            del buffer[:end]  # compact: keep the buffer from growing without bound
            self._position = 0
        return RawFrame(head, body, payload)

    def _check_head(self, buffer: bytearray, start: int, available: int) -> FrameHead | None:
        (frame_length,) = struct.unpack_from(">I", buffer, start)
        if frame_length + LENGTH_PREFIX_BYTES > self._frame_bytes_max:
            raise FrameTooLargeError(
                f"frame of {frame_length + LENGTH_PREFIX_BYTES} bytes exceeds "
                f"frame_bytes_max {self._frame_bytes_max}"
            )
        if frame_length < FRAME_HEADER_BYTES - LENGTH_PREFIX_BYTES:
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
