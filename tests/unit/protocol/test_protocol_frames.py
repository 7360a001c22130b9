"""Tests for client/protocol/frames.py: the frame layout and the incremental FrameDecoder."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import pytest

from client.errors import FrameTooLargeError, ProtocolError
from client.protocol.frames import (
    FLAG_NO_RESPONSE,
    FLAG_RESPONSE,
    FRAME_HEADER_BYTES,
    FrameDecoder,
    RawFrame,
    encode_head,
)

BODY = b"\x93\x01\xc0\xc2"  # any bytes: the frame layer does not decode bodies


def frame_bytes(
    body: bytes = BODY,
    payload: bytes = b"",
    *,
    api_key: int = 1,
    api_version: int = 0,
    correlation_id: int = 7,
    flags: int = 0,
) -> bytes:
    return encode_head(api_key, api_version, correlation_id, flags, body, len(payload)) + payload


def drain(decoder: FrameDecoder) -> list[RawFrame]:
    frames = []
    for _ in range(1_000_000):
        frame = decoder.next_frame()
        if frame is None:
            return frames
        frames.append(frame)
    raise AssertionError("decoder never ran dry")


def feed_whole(decoder: FrameDecoder, data: bytes) -> list[RawFrame]:
    decoder.receive_data(data)
    return drain(decoder)


def feed_bytewise(decoder: FrameDecoder, data: bytes) -> list[RawFrame]:
    frames = []
    for index in range(len(data)):
        decoder.receive_data(data[index : index + 1])
        frames.extend(drain(decoder))
    return frames


Feed = Callable[[FrameDecoder, bytes], list[RawFrame]]
FEEDS = [pytest.param(feed_whole, id="whole"), pytest.param(feed_bytewise, id="bytewise")]
PAYLOADS = [pytest.param(b"", id="no-payload"), pytest.param(b"batch-bytes" * 3, id="payload")]


def test_encode_head_layout() -> None:
    """Proves the header is the documented big-endian 18-byte layout followed by the body."""
    data = encode_head(0x0102, 3, 0xA0B0C0D0, FLAG_NO_RESPONSE, b"xyz", payload_length=5)
    assert len(data) == FRAME_HEADER_BYTES + 3
    assert data[:18] == bytes.fromhex("0000001601020003a0b0c0d0000200000003")
    assert data[18:] == b"xyz"


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("feed", FEEDS)
def test_frame_decodes_whole_and_bytewise(feed: Feed, payload: bytes) -> None:
    """Proves a frame decodes to the same head, body and payload however the bytes arrive."""
    decoder = FrameDecoder()
    frames = feed(decoder, frame_bytes(payload=payload, flags=FLAG_RESPONSE))
    assert len(frames) == 1
    frame = frames[0]
    assert (frame.head.api_key, frame.head.api_version, frame.head.correlation_id) == (1, 0, 7)
    assert frame.head.is_response
    assert frame.body == BODY
    assert bytes(frame.payload) == payload
    assert frame.head.payload_length == len(payload)
    assert decoder.buffered_bytes == 0


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("feed", FEEDS)
def test_trailing_bytes_are_left_for_the_next_frame(feed: Feed, payload: bytes) -> None:
    """Proves bytes after a frame stay buffered, untouched, and become the next frame."""
    first = frame_bytes(payload=payload, correlation_id=1)
    second = frame_bytes(body=b"\x91\x02", payload=payload[::-1], correlation_id=2)
    cut = 7  # inside the second frame's header
    decoder = FrameDecoder()
    frames = feed(decoder, first + second[:cut])
    assert [frame.head.correlation_id for frame in frames] == [1]
    assert decoder.buffered_bytes == cut
    frames = feed(decoder, second[cut:])
    assert [frame.head.correlation_id for frame in frames] == [2]
    assert frames[0].body == b"\x91\x02"
    assert bytes(frames[0].payload) == payload[::-1]
    assert decoder.buffered_bytes == 0


def test_many_frames_in_one_read() -> None:
    """Proves one read holding many frames yields them all, in order."""
    data = b"".join(frame_bytes(payload=bytes([n]) * n, correlation_id=n) for n in range(50))
    frames = feed_whole(FrameDecoder(), data)
    assert [frame.head.correlation_id for frame in frames] == list(range(50))
    assert [bytes(frame.payload) for frame in frames] == [bytes([n]) * n for n in range(50)]


def test_truncated_frame_yields_none_until_complete() -> None:
    """Proves a partial frame gives None (never an error) until its last byte arrives."""
    data = frame_bytes(payload=b"p" * 10)
    decoder = FrameDecoder()
    for index in range(len(data) - 1):
        decoder.receive_data(data[index : index + 1])
        assert decoder.next_frame() is None
    decoder.receive_data(data[-1:])
    frame = decoder.next_frame()
    assert frame is not None and bytes(frame.payload) == b"p" * 10


def test_oversized_frame_is_refused_after_four_bytes() -> None:
    """Proves a frame over frame_bytes_max raises FrameTooLargeError on its length prefix alone."""
    decoder = FrameDecoder(frame_bytes_max=1024)
    prefix = struct.pack(">I", 1024 - 4 + 1)
    decoder.receive_data(prefix[:3])
    assert decoder.next_frame() is None
    decoder.receive_data(prefix[3:])
    with pytest.raises(FrameTooLargeError):
        decoder.next_frame()


def test_frame_at_the_limit_is_accepted() -> None:
    """Proves frame_bytes_max counts the whole frame, length prefix included, inclusively."""
    payload = b"x" * (256 - FRAME_HEADER_BYTES - len(BODY))
    frames = feed_whole(FrameDecoder(frame_bytes_max=256), frame_bytes(payload=payload))
    assert len(frames) == 1


def test_oversized_body_is_refused_after_the_header() -> None:
    """Proves a body over body_bytes_max raises FrameTooLargeError before the body arrives."""
    decoder = FrameDecoder(body_bytes_max=3)
    data = frame_bytes(body=b"four")
    decoder.receive_data(data[:FRAME_HEADER_BYTES])
    with pytest.raises(FrameTooLargeError):
        decoder.next_frame()


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(struct.pack(">I", 13), id="length-shorter-than-header"),
        pytest.param(struct.pack(">IHHIHI", 20, 1, 0, 1, 0x0008, 0), id="unknown-flag"),
        pytest.param(struct.pack(">IHHIHI", 20, 1, 0, 1, 0, 7), id="body-longer-than-frame"),
    ],
)
def test_malformed_header_raises_protocol_error(header: bytes) -> None:
    """Proves each malformed header field raises ProtocolError as soon as it is readable."""
    decoder = FrameDecoder()
    decoder.receive_data(header)
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_decoder_is_dead_after_a_protocol_error() -> None:
    """Proves that after one ProtocolError every further call raises ProtocolError."""
    decoder = FrameDecoder(frame_bytes_max=64)
    decoder.receive_data(struct.pack(">I", 1000))
    with pytest.raises(FrameTooLargeError):
        decoder.next_frame()
    assert decoder.dead
    with pytest.raises(ProtocolError):
        decoder.next_frame()
    with pytest.raises(ProtocolError):
        decoder.receive_data(frame_bytes())


@pytest.mark.parametrize("payload_bytes", [10, 200_000])
def test_payload_is_writable_and_owned(payload_bytes: int) -> None:
    """Proves a frame's payload can be written in place without touching other frames
    (both the copied small-payload path and the handed-over big-payload path)."""
    payload = b"a" * payload_bytes
    decoder = FrameDecoder()
    decoder.receive_data(frame_bytes(payload=payload, correlation_id=1))
    first = decoder.next_frame()
    decoder.receive_data(frame_bytes(payload=payload, correlation_id=2))
    second = decoder.next_frame()
    assert first is not None and second is not None
    first.payload[0:1] = b"Z"
    assert bytes(first.payload[:1]) == b"Z"
    assert bytes(second.payload) == payload
    assert not first.payload.readonly


def test_big_frame_in_chunks_is_linear() -> None:
    """Proves a 16 MiB frame fed in 64 KiB chunks decodes in time linear in its size."""
    payload = bytes(16 << 20)
    data = memoryview(frame_bytes(payload=payload))
    decoder = FrameDecoder()
    chunk = 64 * 1024
    started = time.perf_counter()
    frames = []
    for index in range(0, len(data), chunk):
        decoder.receive_data(data[index : index + chunk])
        frames.extend(drain(decoder))
    elapsed = time.perf_counter() - started
    assert len(frames) == 1 and len(frames[0].payload) == len(payload)
    assert elapsed < 1.0, elapsed  # about 0.02 s; a quadratic decoder takes minutes


def test_big_frame_byte_at_a_time_is_linear() -> None:
    """Proves feeding a 256 KiB frame one byte at a time costs O(1) per call, not O(buffer)."""
    data = frame_bytes(payload=bytes(256 * 1024))
    decoder = FrameDecoder()
    started = time.perf_counter()
    frames = feed_bytewise(decoder, data)
    elapsed = time.perf_counter() - started
    assert len(frames) == 1
    assert elapsed < 3.0, elapsed  # about 0.1 s; re-scanning the buffer per byte takes ~20 s


def test_many_small_frames_are_linear_and_memory_bounded() -> None:
    """Proves 100k small frames, in reads that cut frames in half, decode in linear time
    and the buffer never holds much more than one read plus the compaction threshold."""
    one = frame_bytes()
    data = one * 100_000
    decoder = FrameDecoder()
    read_bytes = 4093  # prime: reads end mid-frame, so the buffer is never empty
    count = 0
    buffer_bytes_max = 0
    started = time.perf_counter()
    for index in range(0, len(data), read_bytes):
        decoder.receive_data(data[index : index + read_bytes])
        count += len(drain(decoder))
        buffer_bytes_max = max(buffer_bytes_max, len(decoder._buffer))
    elapsed = time.perf_counter() - started
    assert count == 100_000
    assert buffer_bytes_max <= 2 * 64 * 1024 + read_bytes
    assert elapsed < 5.0, elapsed  # about 0.2 s
