"""Whole-batch compression (client/records/compression.py): round trips, framing, bounds."""

from __future__ import annotations

import random
import tracemalloc
import zlib
from typing import cast

import lz4.frame
import pytest
import zstandard

from client.errors import BatchTooLargeError, CorruptBatchError, UnsupportedCompressionError
from client.records.compression import compress, decompress
from client.records.header import Compression

CODECS = list(Compression)
COMPRESSED = [c for c in Compression if c is not Compression.NONE]
SAMPLE = b"".join(random.Random(3).randbytes(16) * 4 for _ in range(300))
BOMB_BYTES = 64 * 1024 * 1024
LIMIT_BYTES = 1024 * 1024


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("data", [b"", b"x", SAMPLE, bytes(range(256)) * 50])
def test_round_trip(codec: Compression, data: bytes) -> None:
    """Proves decompress(compress(x)) == x for every codec, including empty input."""
    assert bytes(decompress(codec, compress(codec, data), len(data))) == data


@pytest.mark.parametrize("codec", CODECS)
def test_accepts_every_buffer_type(codec: Compression) -> None:
    """Proves bytes, bytearray and memoryview inputs all decompress."""
    packed = compress(codec, SAMPLE)
    for buffer in (packed, bytearray(packed), memoryview(packed)):
        assert bytes(decompress(codec, buffer, len(SAMPLE))) == SAMPLE


@pytest.mark.parametrize(
    ("codec", "magic"),
    [
        (Compression.GZIP, b"\x1f\x8b"),  # RFC 1952 member
        (Compression.LZ4, b"\x04\x22\x4d\x18"),  # LZ4 frame magic, little-endian
        (Compression.ZSTD, b"\x28\xb5\x2f\xfd"),  # zstd frame magic, little-endian
    ],
)
def test_standard_containers(codec: Compression, magic: bytes) -> None:
    """Proves each codec emits its standard container, readable by the reference library."""
    packed = compress(codec, SAMPLE)
    assert packed.startswith(magic)
    if codec is Compression.GZIP:
        assert zlib.decompress(packed, 31) == SAMPLE
    elif codec is Compression.LZ4:
        assert lz4.frame.decompress(packed) == SAMPLE
    else:
        assert zstandard.ZstdDecompressor().decompress(packed) == SAMPLE


@pytest.mark.parametrize("codec", CODECS)
def test_limit_is_inclusive(codec: Compression) -> None:
    """Proves exactly output_bytes_max bytes pass and one more raises BatchTooLargeError."""
    packed = compress(codec, SAMPLE)
    assert len(decompress(codec, packed, len(SAMPLE))) == len(SAMPLE)
    with pytest.raises(BatchTooLargeError):
        decompress(codec, packed, len(SAMPLE) - 1)


def make_bomb(codec: Compression, *, declare_size: bool = True) -> bytes:
    zeros = bytes(1 << 22)
    repeats = BOMB_BYTES // len(zeros)
    if codec is Compression.GZIP:
        gzip = zlib.compressobj(9, zlib.DEFLATED, 31)
        return b"".join(gzip.compress(zeros) for _ in range(repeats)) + gzip.flush()
    if codec is Compression.LZ4:
        context = lz4.frame.create_compression_context()
        head = lz4.frame.compress_begin(context, source_size=BOMB_BYTES if declare_size else 0)
        body = b"".join(lz4.frame.compress_chunk(context, zeros) for _ in range(repeats))
        return bytes(head + body + lz4.frame.compress_flush(context))
    compressor = zstandard.ZstdCompressor(write_content_size=declare_size)
    stream = compressor.compressobj(size=BOMB_BYTES if declare_size else -1)
    return b"".join(stream.compress(zeros) for _ in range(repeats)) + stream.flush()


@pytest.mark.parametrize(
    ("codec", "declare_size"),
    [
        (Compression.GZIP, True),
        (Compression.LZ4, True),
        (Compression.LZ4, False),
        (Compression.ZSTD, True),
        (Compression.ZSTD, False),
    ],
)
def test_bomb_is_refused_without_allocating_it(codec: Compression, declare_size: bool) -> None:
    """Proves a 64 MiB bomb with a 1 MiB limit raises BatchTooLargeError and the
    Python-visible allocation stays near the limit, not near 64 MiB."""
    bomb = make_bomb(codec, declare_size=declare_size)
    tracemalloc.start()
    try:
        with pytest.raises(BatchTooLargeError):
            decompress(codec, bomb, LIMIT_BYTES)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 4 * LIMIT_BYTES + len(bomb)


def test_zstd_frame_lying_about_its_size_is_corrupt() -> None:
    """Proves a zstd frame declaring fewer bytes than it holds cannot overflow its buffer."""
    packed = compress(Compression.ZSTD, SAMPLE)
    honest = zstandard.frame_content_size(packed)
    # The content size is the last field of the frame header; patch it down.
    frame_header_bytes = zstandard.frame_header_size(packed)
    size_field = packed[frame_header_bytes - 2 : frame_header_bytes]
    assert int.from_bytes(size_field, "little") + 256 == honest  # 2-byte field stores size - 256
    lying = (
        packed[: frame_header_bytes - 2] + (1).to_bytes(2, "little") + packed[frame_header_bytes:]
    )
    with pytest.raises(CorruptBatchError):
        decompress(Compression.ZSTD, lying, len(SAMPLE) * 2)


@pytest.mark.parametrize("codec", COMPRESSED)
def test_every_truncation_is_corrupt(codec: Compression) -> None:
    """Proves every proper prefix of a compressed payload raises CorruptBatchError."""
    packed = compress(codec, SAMPLE)
    for length in range(len(packed)):
        with pytest.raises(CorruptBatchError):
            decompress(codec, packed[:length], len(SAMPLE))


@pytest.mark.parametrize("codec", COMPRESSED)
def test_trailing_bytes_are_corrupt(codec: Compression) -> None:
    """Proves bytes after the one container (garbage or a second frame) are refused."""
    packed = compress(codec, SAMPLE)
    for trailing in (b"\x00", b"garbage", packed):
        with pytest.raises(CorruptBatchError):
            decompress(codec, packed + trailing, 4 * len(SAMPLE))


@pytest.mark.parametrize("codec", COMPRESSED)
def test_garbage_and_mutations_raise_only_typed_errors(codec: Compression) -> None:
    """Proves random bytes raise typed errors, and a flipped bit either raises one or
    lands in a field that does not change the output (checksums are on: it never
    decodes to different data)."""
    rng = random.Random(11)
    packed = compress(codec, SAMPLE)
    for _ in range(300):
        with pytest.raises((CorruptBatchError, BatchTooLargeError)):
            decompress(codec, rng.randbytes(rng.randint(0, 64)), len(SAMPLE))
        mutated = bytearray(packed)
        mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        try:
            assert bytes(decompress(codec, bytes(mutated), len(SAMPLE))) == SAMPLE
        except (CorruptBatchError, BatchTooLargeError):
            pass


def test_none_codec_is_bounded_and_zero_copy() -> None:
    """Proves NONE returns a view of the input and still enforces the limit."""
    data = bytearray(b"abc")
    view = decompress(Compression.NONE, data, 3)
    assert isinstance(view, memoryview) and view.obj is data
    with pytest.raises(BatchTooLargeError):
        decompress(Compression.NONE, data, 2)


def test_unknown_codec_is_unsupported() -> None:
    """Proves an unknown codec id raises UnsupportedCompressionError both ways."""
    unknown = cast("Compression", 6)
    with pytest.raises(UnsupportedCompressionError):
        compress(unknown, b"x")
    with pytest.raises(UnsupportedCompressionError):
        decompress(unknown, b"x", 10)
