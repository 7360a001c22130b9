"""Building a record batch: one cheap Python call per record, the rest in C.

``BatchBuilder.append`` stores a compact tuple per record and nothing else.
``build`` encodes every record with msgspec in one call (a msgpack array of
``[offset_delta, timestamp_delta, key, value, headers]``), compresses the whole
array once, and packs the 61-byte header around it with its CRC-32C.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

import msgspec

from client.errors import BatchTooLargeError
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
from client.records.compression import compress

# Per-record framing bytes in the msgpack encoding, used to estimate a batch's
# size before it is encoded (array header, two ints, nil/bin headers).
RECORD_OVERHEAD_BYTES: Final = 16

Header = tuple[str, bytes]
_encoder = msgspec.msgpack.Encoder()
_pack_crc = HEADER  # documented for readers: the CRC is written with struct below
import struct as _struct  # noqa: E402

_CRC_PACK = _struct.Struct(">I")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class BatchBuilder:
    """Accumulates records for one batch.  Not thread-safe; one owner.

    ``append`` costs one tuple and one list append.  ``estimated_bytes`` is an
    upper-bound-ish guess of the uncompressed batch size, for ``batch_bytes_max``.
    """

    __slots__ = (
        "_estimated_bytes",
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
        self.compression = compression
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self._records: list[tuple[int, int, bytes | None, bytes | None, Sequence[Header]]] = []
        self._first_timestamp_ms = -1
        self._max_timestamp_ms = -1
        self._estimated_bytes = HEADER_BYTES

    def __len__(self) -> int:
        return len(self._records)

    @property
    def estimated_bytes(self) -> int:
        return self._estimated_bytes

    def append(
        self,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[Header] = (),
        timestamp_ms: int | None = None,
    ) -> int:
        """Add one record; returns its offset delta within the batch."""
        records = self._records
        delta = len(records)
        if timestamp_ms is None:
            timestamp_ms = time.time_ns() // 1_000_000
        if delta == 0:
            self._first_timestamp_ms = self._max_timestamp_ms = timestamp_ms
        elif timestamp_ms > self._max_timestamp_ms:
            self._max_timestamp_ms = timestamp_ms
        records.append((delta, timestamp_ms - self._first_timestamp_ms, key, value, headers))
        self._estimated_bytes += (
            RECORD_OVERHEAD_BYTES + (len(value) if value else 0) + (len(key) if key else 0)
        )
        return delta

    def build(self, batch_bytes_max: int | None = None) -> bytearray:
        """Encode, compress and frame the batch.  Raises BatchTooLargeError when
        the result exceeds ``batch_bytes_max``.  The builder must not be empty."""
        count = len(self._records)
        assert count > 0, "cannot build an empty batch"
        payload = compress(self.compression, _encoder.encode(self._records))
        total = HEADER_BYTES + len(payload)
        if batch_bytes_max is not None and total > batch_bytes_max:
            raise BatchTooLargeError(
                f"batch of {total} bytes exceeds batch_bytes_max {batch_bytes_max}"
            )
        min_ts = self._first_timestamp_ms
        # Timestamps may go backwards inside a batch; the header keeps the first one
        # (deltas are relative to it) and the max.  Deltas may then be negative.
        buffer = bytearray(total)
        HEADER.pack_into(
            buffer,
            0,
            0,  # base_offset: stamped by the broker
            total - LENGTH_PREFIX_BYTES,
            -1,  # leader_epoch: stamped by the broker
            MAGIC,
            0,  # crc: below
            int(self.compression),
            count - 1,
            min_ts,
            self._max_timestamp_ms,
            self.producer_id,
            self.producer_epoch,
            self.base_sequence,
            count,
        )
        buffer[HEADER_BYTES:] = payload
        _CRC_PACK.pack_into(buffer, CRC_AT, crc32c(memoryview(buffer)[CRC_FROM:]))
        return buffer


def build_batch(
    values: Sequence[bytes | None],
    *,
    keys: Sequence[bytes | None] | None = None,
    compression: Compression = Compression.NONE,
    timestamp_ms: int | None = None,
) -> bytearray:
    """Convenience for tests and tools: one batch from a list of values."""
    builder = BatchBuilder(compression)
    stamp = now_ms() if timestamp_ms is None else timestamp_ms
    for index, value in enumerate(values):
        builder.append(value, keys[index] if keys is not None else None, (), stamp)
    return builder.build()
