"""The record-batch header: its byte layout and a zero-copy view for the broker.

A batch is a fixed 61-byte big-endian header followed by the encoded records
(docs/record-format.md).  The broker never decodes records: it only needs
this module to validate a batch (sizes, magic, CRC-32C) and to stamp the base
offset and leader epoch in place.  Both stamped fields lie *before* the CRC'd
range, so stamping never re-checksums the records.

    offset  size  field
         0     8  base_offset         i64
         8     4  batch_length        i32   bytes after this field (total - 12)
        12     4  leader_epoch        i32
        16     1  magic               i8    always 2
        17     4  crc                 u32   CRC-32C of bytes [21, end)
        21     2  attributes          i16   bits 0-2 codec, bit 3 timestamp type,
                                             bit 4 transactional, bit 5 control
        23     4  last_offset_delta   i32
        27     8  first_timestamp     i64   ms since the epoch
        35     8  max_timestamp       i64
        43     8  producer_id         i64
        51     2  producer_epoch      i16
        53     4  base_sequence       i32
        57     4  record_count        i32
        61     -  records

This module imports no I/O library (see tests/test_layering.py).
"""

from __future__ import annotations

import enum
import struct
from typing import Final

import google_crc32c

from client.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    UnsupportedCompressionError,
)

HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_BYTES: Final = HEADER.size  # 61
assert HEADER_BYTES == 61

# Byte positions of the fields the broker reads or writes.
BASE_OFFSET_AT: Final = 0
BATCH_LENGTH_AT: Final = 8
LEADER_EPOCH_AT: Final = 12
MAGIC_AT: Final = 16
CRC_AT: Final = 17
ATTRIBUTES_AT: Final = 21
CRC_FROM: Final = ATTRIBUTES_AT
LAST_OFFSET_DELTA_AT: Final = 23
FIRST_TIMESTAMP_AT: Final = 27
MAX_TIMESTAMP_AT: Final = 35
RECORD_COUNT_AT: Final = 57
# batch_length counts the bytes after the batch_length field.
LENGTH_PREFIX_BYTES: Final = 12

MAGIC: Final = 2

# Default for the biggest batch accepted anywhere (client or broker).  Kafka's
# message.max.bytes is ~1 MiB; we allow more because a batch is our unit of
# throughput, and the broker may lower it per topic.
BATCH_BYTES_MAX_DEFAULT: Final = 16 * 1024 * 1024
# The largest batch any limit may allow: what a log segment can index (2 GiB - 1,
# broker/storage/config.py SEGMENT_BYTES_LIMIT).  A producer's batch_bytes_max
# may be up to this; a topic's is bounded by its broker's frame_bytes_max.
BATCH_BYTES_LIMIT: Final = (1 << 31) - 1

_OFFSET_PACK = struct.Struct(">q")
_EPOCH_PACK = struct.Struct(">i")
_LENGTH_PACK = struct.Struct(">i")


class Compression(enum.IntEnum):
    """Codec ids stored in bits 0-2 of ``attributes``."""

    NONE = 0
    GZIP = 1
    LZ4 = 2
    ZSTD = 3


COMPRESSION_MASK: Final = 0x07
TIMESTAMP_TYPE_LOG_APPEND: Final = 0x08
TRANSACTIONAL_FLAG: Final = 0x10
CONTROL_FLAG: Final = 0x20
KNOWN_ATTRIBUTE_BITS: Final = (
    COMPRESSION_MASK | TIMESTAMP_TYPE_LOG_APPEND | TRANSACTIONAL_FLAG | CONTROL_FLAG
)


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, computed in C; pass the ``crc`` of the
    preceding bytes to checksum a range in pieces.

    google-crc32c only accepts ``bytes``, so a view is copied first (a memcpy,
    about a third of the cost of the checksum itself on this machine).
    """
    return int(google_crc32c.extend(crc, data if type(data) is bytes else bytes(data)))


def batch_size_at(buffer: bytes | bytearray | memoryview, position: int = 0) -> int | None:
    """The total size of the batch starting at ``position``, or None if the length
    prefix itself is not complete yet.  The size is not validated here (it may
    even be negative): :meth:`BatchHeader.parse` does that."""
    assert position >= 0, position
    if len(buffer) - position < LENGTH_PREFIX_BYTES:
        return None
    (length,) = _LENGTH_PACK.unpack_from(buffer, position + BATCH_LENGTH_AT)
    return int(length) + LENGTH_PREFIX_BYTES


def byte_view(buffer: bytes | bytearray | memoryview) -> memoryview:
    """A flat, zero-copy view of ``buffer`` whose ``len`` counts bytes (even when
    ``buffer`` is a memoryview of wider items)."""
    view = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class BatchHeader:
    """A view of one batch's header over a buffer, without copying it.

    ``BatchHeader.parse(buffer, position)`` checks the header's shape (length,
    magic, attributes, counts); :meth:`verify_crc` checks the records.  The
    broker calls both before it appends, then :meth:`stamp` to assign offsets.
    The buffer must stay alive and unchanged (except through ``stamp``) while
    the view is used.
    """

    __slots__ = (
        "attributes",
        "base_offset",
        "base_sequence",
        "batch_bytes",
        "buffer",
        "crc",
        "first_timestamp",
        "last_offset_delta",
        "leader_epoch",
        "max_timestamp",
        "position",
        "producer_epoch",
        "producer_id",
        "record_count",
    )

    def __init__(self, buffer: memoryview, position: int, fields: tuple[int, ...]) -> None:
        self.buffer = buffer
        self.position = position
        (
            self.base_offset,
            batch_length,
            self.leader_epoch,
            _magic,
            self.crc,
            self.attributes,
            self.last_offset_delta,
            self.first_timestamp,
            self.max_timestamp,
            self.producer_id,
            self.producer_epoch,
            self.base_sequence,
            self.record_count,
        ) = fields
        self.batch_bytes = batch_length + LENGTH_PREFIX_BYTES

    @classmethod
    def parse(
        cls,
        buffer: bytes | bytearray | memoryview,
        position: int = 0,
        *,
        batch_bytes_max: int = BATCH_BYTES_MAX_DEFAULT,
    ) -> BatchHeader:
        """Validate the header of the batch at ``position``.

        Raises CorruptBatchError (truncated), BatchTooLargeError (over
        ``batch_bytes_max``), InvalidBatchError (bad magic, length, counts or
        attribute bits), UnsupportedCompressionError (unknown codec).
        """
        assert position >= 0, position  # struct would count a negative one from the end
        view = byte_view(buffer)
        available = len(view) - position
        if available < HEADER_BYTES:
            raise CorruptBatchError(
                f"truncated batch header: {available} bytes, need {HEADER_BYTES}"
            )
        fields = HEADER.unpack_from(view, position)
        batch_length, magic, attributes = fields[1], fields[3], fields[5]
        batch_bytes = batch_length + LENGTH_PREFIX_BYTES
        if batch_bytes < HEADER_BYTES:
            raise InvalidBatchError(f"batch length {batch_length} is shorter than the header")
        if batch_bytes > batch_bytes_max:
            raise BatchTooLargeError(
                f"batch of {batch_bytes} bytes exceeds batch_bytes_max {batch_bytes_max}"
            )
        if batch_bytes > available:
            raise CorruptBatchError(
                f"truncated batch: header says {batch_bytes} bytes, {available} present"
            )
        if magic != MAGIC:
            raise InvalidBatchError(f"unknown batch magic {magic} (expected {MAGIC})")
        if attributes & ~KNOWN_ATTRIBUTE_BITS:
            raise InvalidBatchError(f"unknown attribute bits {attributes:#06x}")
        codec = attributes & COMPRESSION_MASK
        if codec > Compression.ZSTD:
            raise UnsupportedCompressionError(f"unknown compression codec {codec}")
        record_count, last_offset_delta = fields[12], fields[6]
        if record_count <= 0:
            raise InvalidBatchError(f"record count {record_count} must be positive")
        if last_offset_delta != record_count - 1:
            raise InvalidBatchError(
                f"last offset delta {last_offset_delta} does not match record count {record_count}"
            )
        if fields[8] < fields[7]:
            raise InvalidBatchError("max timestamp is before first timestamp")
        return cls(view, position, fields)

    @property
    def compression(self) -> Compression:
        return Compression(self.attributes & COMPRESSION_MASK)

    @property
    def last_offset(self) -> int:
        return int(self.base_offset + self.last_offset_delta)

    @property
    def next_offset(self) -> int:
        return int(self.base_offset + self.last_offset_delta + 1)

    @property
    def end(self) -> int:
        """Position just after this batch in the buffer."""
        return int(self.position + self.batch_bytes)

    def records_view(self) -> memoryview:
        """The (possibly compressed) encoded records, without copying."""
        return self.buffer[self.position + HEADER_BYTES : self.end]

    def computed_crc(self) -> int:
        return crc32c(self.buffer[self.position + CRC_FROM : self.end])

    def verify_crc(self) -> None:
        """Raise CorruptBatchError if the stored CRC does not match the bytes."""
        actual = self.computed_crc()
        if actual != self.crc:
            raise CorruptBatchError(
                f"batch CRC mismatch: stored {self.crc:#010x}, computed {actual:#010x}"
            )

    def stamp(self, base_offset: int, leader_epoch: int | None = None) -> None:
        """Write the base offset (and leader epoch) into the buffer in place.

        The buffer must be writable (a bytearray or a writable memoryview).
        """
        assert base_offset >= 0, base_offset
        _OFFSET_PACK.pack_into(self.buffer, self.position + BASE_OFFSET_AT, base_offset)
        self.base_offset = base_offset
        if leader_epoch is not None:
            _EPOCH_PACK.pack_into(self.buffer, self.position + LEADER_EPOCH_AT, leader_epoch)
            self.leader_epoch = leader_epoch

    def __repr__(self) -> str:
        return (
            f"BatchHeader(base_offset={self.base_offset}, records={self.record_count}, "
            f"bytes={self.batch_bytes}, codec={self.compression.name})"
        )


def iter_batches(
    buffer: bytes | bytearray | memoryview,
    *,
    batch_bytes_max: int = BATCH_BYTES_MAX_DEFAULT,
    verify_crc: bool = True,
    batches_max: int = 1 << 20,
) -> list[BatchHeader]:
    """Validate a buffer that must hold whole batches back to back (a Produce
    payload).  Per-batch work only.  Raises like :meth:`BatchHeader.parse`,
    CorruptBatchError on a bad CRC or trailing partial batch, and
    InvalidBatchError past ``batches_max`` batches."""
    view = byte_view(buffer)
    headers: list[BatchHeader] = []
    position = 0
    total = len(view)
    for _ in range(batches_max):
        if position >= total:
            return headers
        header = BatchHeader.parse(view, position, batch_bytes_max=batch_bytes_max)
        if verify_crc:
            header.verify_crc()
        headers.append(header)
        position = header.end
    if position < total:
        raise InvalidBatchError(f"more than {batches_max} batches in one buffer")
    return headers
