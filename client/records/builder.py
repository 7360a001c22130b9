"""Building a record batch: one cheap Python call per record, the rest in C.

``BatchBuilder.append`` stores one compact tuple per record
``(offset_delta, timestamp_delta, key, value, headers)`` and updates two
counters; nothing is encoded yet.  ``build`` then encodes the whole list with
msgspec in one call (a msgpack array of 5-element arrays), compresses it once,
packs the 61-byte header in front and stamps the CRC-32C of
``[attributes, end)`` (docs/record-format.md).

Timestamp deltas are relative to the first record's timestamp (the header's
``first_timestamp``); a later record may carry an earlier timestamp, so deltas
may be negative.  Keys and values must be ``bytes`` (or another bytes-like
object msgspec encodes as msgpack ``bin``) or None; header names are ``str``.
These are not checked per record (that would double the cost of ``append``):
the static types say so, and a consumer rejects anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from time import time_ns
from typing import Final

import google_crc32c
import msgspec

from client.errors import BatchTooLargeError
from client.records.compression import compress
from client.records.header import (
    CRC_AT,
    CRC_FROM,
    HEADER,
    HEADER_BYTES,
    LENGTH_PREFIX_BYTES,
    MAGIC,
    Compression,
    crc32c,
)

# Per-record framing bytes in the msgpack encoding, used to estimate a batch's
# size before it is encoded: array header (1), offset delta (<= 5), timestamp
# delta (<= 9 but usually <= 3), two nil/bin headers (<= 5 each at 64 KiB+),
# empty headers array (1).  16 is a good upper bound for typical records.
RECORD_OVERHEAD_BYTES: Final = 16
# Per-header framing bytes: array header, str header, bin header.
HEADER_OVERHEAD_BYTES: Final = 8

Header = tuple[str, bytes]
_INT16_MAX: Final = (1 << 15) - 1
_INT32_MAX: Final = (1 << 31) - 1
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1

_encoder = msgspec.msgpack.Encoder()
_CRC_PACK = struct.Struct(">I")


def now_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch (the default record timestamp)."""
    return time_ns() // 1_000_000


class BatchBuilder:
    """Accumulates records for one batch.  Not thread-safe; one owner.

    ``append`` costs one tuple, one list append and a few attribute updates.
    ``estimated_bytes`` is an upper-bound-ish guess of the uncompressed batch
    size, to decide when a batch is full before encoding it.

    Invariants: ``len(self) == len(self._records)``; record ``i`` has offset
    delta ``i``; ``_max_timestamp_ms >= _first_timestamp_ms`` once non-empty.
    """

    __slots__ = (
        "_first_timestamp_ms",
        "_max_timestamp_ms",
        "_records",
        "base_sequence",
        "compression",
        "producer_epoch",
        "producer_id",
    )

    def __init__(
        self,
        compression: Compression = Compression.NONE,
        *,
        producer_id: int = -1,
        producer_epoch: int = -1,
        base_sequence: int = -1,
    ) -> None:
        assert -1 <= producer_id <= _INT64_MAX, producer_id
        assert -1 <= producer_epoch <= _INT16_MAX, producer_epoch
        assert -1 <= base_sequence <= _INT32_MAX, base_sequence
        # Compression(...) is an enum lookup in Python: skip it for a member (the
        # producer makes a builder per batch).
        self.compression = (
            compression if type(compression) is Compression else Compression(compression)
        )
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self._records: list[tuple[int, int, bytes | None, bytes | None, Sequence[Header]]] = []
        # Both are set by the first append; build() refuses an empty builder.
        self._first_timestamp_ms = 0
        self._max_timestamp_ms = 0

    def __len__(self) -> int:
        return len(self._records)

    @property
    def estimated_bytes(self) -> int:
        """Header + records, uncompressed, as an upper-bound-ish estimate.

        Computed on demand (a walk over the records), so ``append`` stays
        minimal; producers keep their own running size instead of calling this.
        """
        payload_bytes = sum(
            (len(value) if value is not None else 0)
            + (len(key) if key is not None else 0)
            + (_headers_bytes(headers) if headers else 0)
            for _, _, key, value, headers in self._records
        )
        return HEADER_BYTES + len(self._records) * RECORD_OVERHEAD_BYTES + payload_bytes

    def append(
        self,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[Header] = (),
        timestamp_ms: int | None = None,
    ) -> int:
        """Add one record; returns its offset delta within the batch.

        ``timestamp_ms`` defaults to the wall clock.  Raises nothing.  This is
        the per-record hot path of every producer: one tuple, one list append.
        """
        if timestamp_ms is None:
            timestamp_ms = time_ns() // 1_000_000
        records = self._records
        delta = len(records)
        if delta:
            if timestamp_ms > self._max_timestamp_ms:
                self._max_timestamp_ms = timestamp_ms
            records.append((delta, timestamp_ms - self._first_timestamp_ms, key, value, headers))
        else:
            self._first_timestamp_ms = self._max_timestamp_ms = timestamp_ms
            records.append((0, 0, key, value, headers))
        return delta

    def timestamp_ms_of(self, offset_delta: int) -> int:
        """The timestamp of the record appended with ``offset_delta``."""
        return self._first_timestamp_ms + self._records[offset_delta][1]

    def build(self, batch_bytes_max: int | None = None) -> bytearray:
        """Encode, compress and frame the batch; the builder must not be empty.

        The result has base_offset 0 and leader_epoch -1 (the broker stamps
        both).  Raises BatchTooLargeError when the result exceeds
        ``batch_bytes_max``; UnsupportedCompressionError for an unknown codec.
        """
        records = self._records
        count = len(records)
        assert count > 0, "cannot build an empty batch"
        assert count <= _INT32_MAX, count
        first_timestamp_ms = self._first_timestamp_ms
        assert _INT64_MIN <= first_timestamp_ms <= self._max_timestamp_ms <= _INT64_MAX
        encoded = _encoder.encode(records)
        compression = self.compression
        payload = encoded if compression is Compression.NONE else compress(compression, encoded)
        if batch_bytes_max is not None and HEADER_BYTES + len(payload) > batch_bytes_max:
            raise BatchTooLargeError(
                f"batch of {HEADER_BYTES + len(payload)} bytes exceeds "
                f"batch_bytes_max {batch_bytes_max}"
            )
        return frame_batch(
            payload,
            attributes=int(self.compression),
            record_count=count,
            first_timestamp_ms=first_timestamp_ms,
            max_timestamp_ms=self._max_timestamp_ms,
            producer_id=self.producer_id,
            producer_epoch=self.producer_epoch,
            base_sequence=self.base_sequence,
        )


def frame_batch(
    payload: bytes,
    *,
    attributes: int,
    record_count: int,
    first_timestamp_ms: int,
    max_timestamp_ms: int,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytearray:
    """Pack the header in front of already encoded (and compressed) records and
    stamp the CRC-32C.  Validates nothing about ``payload``: tools and tests use
    it to frame hand-made records.  base_offset is 0 and leader_epoch -1 (the
    broker stamps both)."""
    header = HEADER.pack(
        0,  # base_offset: stamped by the broker
        HEADER_BYTES + len(payload) - LENGTH_PREFIX_BYTES,
        -1,  # leader_epoch: stamped by the broker
        MAGIC,
        0,  # crc: stamped below, once the checksummed range is known
        attributes,
        record_count - 1,
        first_timestamp_ms,
        max_timestamp_ms,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
    )
    if type(payload) is bytes:  # the builder's case: checksum with the C functions directly
        crc = google_crc32c.extend(google_crc32c.value(header[CRC_FROM:]), payload)
    else:
        crc = crc32c(payload, crc32c(header[CRC_FROM:]))
    buffer = bytearray(header)
    buffer += payload
    _CRC_PACK.pack_into(buffer, CRC_AT, crc)
    return buffer


def _headers_bytes(headers: Sequence[Header]) -> int:
    """Estimated encoded size of a record's headers (cold path: most have none)."""
    return sum(len(name) + len(value) + HEADER_OVERHEAD_BYTES for name, value in headers)


def build_batch(
    values: Sequence[bytes | None],
    *,
    keys: Sequence[bytes | None] | None = None,
    compression: Compression = Compression.NONE,
    timestamp_ms: int | None = None,
) -> bytearray:
    """Convenience for tests and tools: one batch from a list of values, all
    with the same timestamp (now by default).  Raises like :meth:`BatchBuilder.build`."""
    assert keys is None or len(keys) == len(values), "one key per value"
    builder = BatchBuilder(compression)
    stamp = now_ms() if timestamp_ms is None else timestamp_ms
    append = builder.append
    if keys is None:
        for value in values:
            append(value, None, (), stamp)
    else:
        for key, value in zip(keys, values, strict=True):
            append(value, key, (), stamp)
    return builder.build()
