"""Whole-batch compression: none, gzip, lz4 (frame format), zstd.

Compression is per batch, never per record: the encoded records of a batch are
compressed in one C call.  Decompression is bounded by ``output_bytes_max`` so
a hostile batch cannot make us allocate without limit (a "zip bomb").
"""

from __future__ import annotations

import zlib

import lz4.frame
import zstandard

from client.errors import BatchTooLargeError, CorruptBatchError, UnsupportedCompressionError
from client.records.header import Compression

# gzip container (wbits 16+15); level 6 is zlib's own default trade-off.
_GZIP_WBITS = 31
_GZIP_LEVEL = 6
_ZSTD_LEVEL = 3  # zstd's default: fast, still a good ratio
_zstd_compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
_zstd_decompressor = zstandard.ZstdDecompressor()


def compress(codec: Compression, data: bytes) -> bytes:
    """Compress ``data`` with ``codec`` (NONE returns it unchanged)."""
    if codec == Compression.NONE:
        return data
    if codec == Compression.ZSTD:
        return bytes(_zstd_compressor.compress(data))
    if codec == Compression.LZ4:
        return bytes(lz4.frame.compress(data))
    if codec == Compression.GZIP:
        compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
        return compressor.compress(data) + compressor.flush()
    raise UnsupportedCompressionError(f"unknown compression codec {int(codec)}")


def decompress(
    codec: Compression, data: bytes | bytearray | memoryview, output_bytes_max: int
) -> bytes | memoryview:
    """Decompress ``data``; never produce more than ``output_bytes_max`` bytes.

    Raises BatchTooLargeError past the limit, CorruptBatchError on bad input,
    UnsupportedCompressionError on an unknown codec.
    """
    if codec == Compression.NONE:
        return data if isinstance(data, memoryview) else memoryview(data)
    try:
        if codec == Compression.ZSTD:
            # The streaming reader never produces more than we ask for.
            with _zstd_decompressor.stream_reader(bytes(data)) as reader:
                out = reader.read(output_bytes_max + 1)
            if len(out) > output_bytes_max:
                raise BatchTooLargeError(
                    f"decompressed records exceed {output_bytes_max} bytes"
                )
            return bytes(out)
        if codec == Compression.LZ4:
            lz4_decompressor = lz4.frame.LZ4FrameDecompressor()
            out = lz4_decompressor.decompress(bytes(data), max_length=output_bytes_max + 1)
            if len(out) > output_bytes_max:
                raise BatchTooLargeError(
                    f"decompressed records exceed {output_bytes_max} bytes"
                )
            if not lz4_decompressor.eof:
                raise CorruptBatchError("lz4 frame is truncated")
            return bytes(out)
        if codec == Compression.GZIP:
            decompressor = zlib.decompressobj(_GZIP_WBITS)
            out = decompressor.decompress(bytes(data), output_bytes_max + 1)
            if len(out) > output_bytes_max:
                raise BatchTooLargeError(
                    f"decompressed records exceed {output_bytes_max} bytes"
                )
            if not decompressor.eof:
                raise CorruptBatchError("gzip stream is truncated")
            return out
    except (zlib.error, zstandard.ZstdError, RuntimeError) as error:
        raise CorruptBatchError(f"cannot decompress {codec.name} records: {error}") from error
    raise UnsupportedCompressionError(f"unknown compression codec {int(codec)}")

