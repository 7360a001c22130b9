"""Whole-batch compression: none, gzip, lz4 (frame format), zstd.

Compression is per batch, never per record: the encoded records of a batch are
compressed in one C call and decompressed in one C call.  Each codec's output
is one standard, self-describing container (docs/record-format.md):

- gzip: one RFC 1952 gzip member (zlib ``wbits=31``);
- lz4: one LZ4 *frame* (not a raw block), with the content size and content
  checksum stored;
- zstd: one zstd frame, with the content size and content checksum stored.

Decompression is bounded by ``output_bytes_max`` so a hostile batch cannot make
us allocate without limit (a "zip bomb"): gzip and lz4 decompress with a
``max_length`` of ``output_bytes_max + 1`` (one extra byte tells "too large"
apart from "exactly at the limit"); zstd checks the content size the frame
header declares *before* decompressing into a buffer of that size, and a frame
without a declared size is decompressed into a buffer of ``output_bytes_max``
bytes at most.  Exactly one container per batch: trailing bytes after it are
corruption.  Every failure is a typed error from client/errors.py.
"""

from __future__ import annotations

import zlib
from typing import Final

import lz4.frame
import zstandard

from client.errors import BatchTooLargeError, CorruptBatchError, UnsupportedCompressionError
from client.records.header import Compression

Buffer = bytes | bytearray | memoryview

# gzip container (wbits 16+15); level 6 is zlib's own default trade-off.
_GZIP_WBITS: Final = 31
_GZIP_LEVEL: Final = 6
_ZSTD_LEVEL: Final = 3  # zstd's default: fast, still a good ratio
# The content checksum (xxhash, several GB/s) catches corruption even when a
# caller opts out of the batch CRC; the content size lets the decoder bound
# its allocation before it decompresses.
_zstd_compressor = zstandard.ZstdCompressor(
    level=_ZSTD_LEVEL, write_checksum=True, write_content_size=True
)
_zstd_decompressor = zstandard.ZstdDecompressor()
# zstandard.frame_content_size() returns this when the header has no size.
_ZSTD_SIZE_UNKNOWN: Final = -1


def compress(codec: Compression, data: bytes) -> bytes:
    """Compress ``data`` with ``codec`` (NONE returns it unchanged).

    Raises UnsupportedCompressionError on an unknown codec.
    """
    if codec == Compression.NONE:
        return data
    if codec == Compression.ZSTD:
        return bytes(_zstd_compressor.compress(data))
    if codec == Compression.LZ4:
        return bytes(lz4.frame.compress(data, store_size=True, content_checksum=True))
    if codec == Compression.GZIP:
        compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
        return compressor.compress(data) + compressor.flush()
    raise UnsupportedCompressionError(f"unknown compression codec {int(codec)}")


def decompress(codec: Compression, data: Buffer, output_bytes_max: int) -> bytes | memoryview:
    """Decompress ``data``; never produce more than ``output_bytes_max`` bytes.

    NONE returns a view of ``data`` (no copy), still checked against the limit.
    Raises BatchTooLargeError past the limit, CorruptBatchError on bad,
    truncated or trailing input, UnsupportedCompressionError on an unknown codec.
    """
    assert output_bytes_max >= 0, output_bytes_max
    if codec == Compression.NONE:
        view = data if isinstance(data, memoryview) else memoryview(data)
        _check_size(len(view), output_bytes_max)
        return view
    if codec == Compression.ZSTD:
        return _decompress_zstd(data, output_bytes_max)
    if codec == Compression.LZ4:
        return _decompress_lz4(data, output_bytes_max)
    if codec == Compression.GZIP:
        return _decompress_gzip(data, output_bytes_max)
    raise UnsupportedCompressionError(f"unknown compression codec {int(codec)}")


def _check_size(size: int, output_bytes_max: int) -> None:
    if size > output_bytes_max:
        raise BatchTooLargeError(
            f"decompressed records exceed decompressed_bytes_max {output_bytes_max}"
        )


def _decompress_gzip(data: Buffer, output_bytes_max: int) -> bytes:
    decompressor = zlib.decompressobj(_GZIP_WBITS)
    try:
        out = decompressor.decompress(data, output_bytes_max + 1)
    except zlib.error as error:
        raise CorruptBatchError(f"cannot decompress gzip records: {error}") from error
    _check_size(len(out), output_bytes_max)
    if not decompressor.eof:
        raise CorruptBatchError("gzip stream is truncated")
    if decompressor.unused_data:
        raise CorruptBatchError(f"{len(decompressor.unused_data)} bytes follow the gzip member")
    return out


def _decompress_lz4(data: Buffer, output_bytes_max: int) -> bytes:
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        out = decompressor.decompress(data, max_length=output_bytes_max + 1)
    except RuntimeError as error:  # the lz4 binding reports every frame error this way
        raise CorruptBatchError(f"cannot decompress lz4 records: {error}") from error
    _check_size(len(out), output_bytes_max)
    if not decompressor.eof:
        raise CorruptBatchError("lz4 frame is truncated")
    if decompressor.unused_data:
        raise CorruptBatchError(f"{len(decompressor.unused_data)} bytes follow the lz4 frame")
    return bytes(out)


def _decompress_zstd(data: Buffer, output_bytes_max: int) -> bytes:
    try:
        declared_bytes = zstandard.frame_content_size(data)
    except zstandard.ZstdError as error:
        raise CorruptBatchError(f"bad zstd frame header: {error}") from error
    if declared_bytes != _ZSTD_SIZE_UNKNOWN:
        # zstandard allocates exactly the declared size and refuses to write past it.
        _check_size(declared_bytes, output_bytes_max)
    try:
        out = _zstd_decompressor.decompress(
            data, max_output_size=output_bytes_max, allow_extra_data=False
        )
    except zstandard.ZstdError as error:
        if declared_bytes == _ZSTD_SIZE_UNKNOWN and _zstd_exceeds(data, output_bytes_max):
            raise BatchTooLargeError(
                f"decompressed records exceed decompressed_bytes_max {output_bytes_max}"
            ) from error
        raise CorruptBatchError(f"cannot decompress zstd records: {error}") from error
    _check_size(len(out), output_bytes_max)
    return bytes(out)


def _zstd_exceeds(data: Buffer, output_bytes_max: int) -> bool:
    """On the error path only: does a frame without a declared size decompress
    past the limit (too large) rather than fail on its own (corrupt)?"""
    try:
        with _zstd_decompressor.stream_reader(data) as reader:
            return len(reader.read(output_bytes_max + 1)) > output_bytes_max
    except zstandard.ZstdError:
        return False
