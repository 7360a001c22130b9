"""Decoding record batches on the client: bytes -> records, the per-record work in C.

A batch's records are one msgpack array of 5-element arrays
``[offset_delta, timestamp_delta, key, value, headers]`` (docs/record-format.md).
msgspec decodes that whole array in one call straight into :class:`Record`
structs (``array_like=True`` so no field names are on the wire, ``gc=False`` so
the cycle collector never walks millions of records).

Absolute offsets and timestamps cost nothing at decode time: each record keeps
its two deltas plus a reference to one :class:`BatchInfo` (base offset, first
timestamp, producer fields) shared by every record of the batch, and
``Record.offset`` / ``Record.timestamp_ms`` add them up when read.  The
reference is filled in *by msgspec*: the struct's sixth field is absent from
the wire, so msgspec calls its ``default_factory``, which is the C method
``ContextVar.get`` of a context variable the decoder sets to the batch's info
around the one ``decode`` call.  No Python code runs per record, and the
context variable keeps concurrent decodes (threads, trio tasks) apart.
``BatchInfo`` is a plain class msgspec cannot decode, so a hostile sixth
element in a record is a decode error, never a forged offset.

Per batch the decoder parses and validates the header (header.py), checks the
CRC-32C (unless the caller opts out), decompresses with a bound
(compression.py), decodes, and checks that the number of records and their
offset deltas (0, 1, ..., count - 1) match the header.  Values may then be
decoded into a caller's msgspec type, one C call per record.

Every failure is a typed :class:`~client.errors.RecordBatchError`; bad input
never escapes as struct.error, msgspec.DecodeError or zlib.error.
"""

from __future__ import annotations

import contextvars
import dataclasses
from typing import Any, Final, Generic, Literal, TypeVar, overload

import google_crc32c
import msgspec

from client.errors import BatchTooLargeError, InvalidBatchError
from client.records.compression import decompress
from client.records.header import (
    BATCH_BYTES_MAX_DEFAULT,
    COMPRESSION_MASK,
    CONTROL_FLAG,
    CRC_FROM,
    HEADER,
    HEADER_BYTES,
    KNOWN_ATTRIBUTE_BITS,
    LENGTH_PREFIX_BYTES,
    MAGIC,
    TIMESTAMP_TYPE_LOG_APPEND,
    BatchHeader,
    batch_size_at,
    byte_view,
)

ValueT = TypeVar("ValueT")
Buffer = bytes | bytearray | memoryview
ValueFormat = Literal["json", "msgpack"]

# Default bound on a batch's decompressed records.  Four times the biggest
# batch we accept: typical codecs on typical records reach 2-4x, and the bound
# is what keeps a 16 MiB "zip bomb" from allocating gigabytes.
DECOMPRESSED_BYTES_MAX_DEFAULT: Final = 4 * BATCH_BYTES_MAX_DEFAULT


class BatchInfo:
    """The batch-level values a record needs to be read on its own.

    One per batch, shared by all its records.  Deliberately a plain class, not
    a msgspec type: msgspec must never be able to decode one from the wire.
    Treat it as immutable.
    """

    __slots__ = (
        "attributes",
        "base_offset",
        "base_sequence",
        "first_timestamp_ms",
        "leader_epoch",
        "log_append_time",
        "max_timestamp_ms",
        "producer_epoch",
        "producer_id",
    )

    def __init__(
        self,
        *,
        base_offset: int,
        first_timestamp_ms: int,
        max_timestamp_ms: int,
        leader_epoch: int = -1,
        producer_id: int = -1,
        producer_epoch: int = -1,
        base_sequence: int = -1,
        attributes: int = 0,
    ) -> None:
        self.base_offset = base_offset
        self.first_timestamp_ms = first_timestamp_ms
        self.max_timestamp_ms = max_timestamp_ms
        self.leader_epoch = leader_epoch
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self.attributes = attributes
        self.log_append_time = bool(attributes & TIMESTAMP_TYPE_LOG_APPEND)

    @classmethod
    def _from_fields(cls, fields: tuple[int, ...]) -> BatchInfo:
        """From the unpacked ``HEADER`` fields (the decoder's fast path)."""
        info = cls.__new__(cls)
        info.base_offset = fields[0]
        info.leader_epoch = fields[2]
        attributes = info.attributes = fields[5]
        info.first_timestamp_ms = fields[7]
        info.max_timestamp_ms = fields[8]
        info.producer_id = fields[9]
        info.producer_epoch = fields[10]
        info.base_sequence = fields[11]
        info.log_append_time = bool(attributes & TIMESTAMP_TYPE_LOG_APPEND)
        return info

    @classmethod
    def from_header(cls, header: BatchHeader) -> BatchInfo:
        return cls(
            base_offset=header.base_offset,
            first_timestamp_ms=header.first_timestamp,
            max_timestamp_ms=header.max_timestamp,
            leader_epoch=header.leader_epoch,
            producer_id=header.producer_id,
            producer_epoch=header.producer_epoch,
            base_sequence=header.base_sequence,
            attributes=header.attributes,
        )

    def _key(self) -> tuple[int, ...]:
        return (
            self.base_offset,
            self.first_timestamp_ms,
            self.max_timestamp_ms,
            self.leader_epoch,
            self.producer_id,
            self.producer_epoch,
            self.base_sequence,
            self.attributes,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BatchInfo):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"BatchInfo(base_offset={self.base_offset}, "
            f"first_timestamp_ms={self.first_timestamp_ms}, "
            f"max_timestamp_ms={self.max_timestamp_ms}, leader_epoch={self.leader_epoch}, "
            f"producer_id={self.producer_id}, producer_epoch={self.producer_epoch}, "
            f"base_sequence={self.base_sequence}, attributes={self.attributes:#x})"
        )


# The BatchInfo of the batch being decoded; read by msgspec (from C) once per record.
_current_batch: contextvars.ContextVar[BatchInfo] = contextvars.ContextVar(
    "distributary_current_batch"
)


class Record(msgspec.Struct, Generic[ValueT], array_like=True, gc=False):
    """One decoded record.  ``offset`` and ``timestamp_ms`` are absolute.

    The first five fields are the wire array; ``batch`` never is (records are
    made by :class:`RecordDecoder`; build one by hand only with ``batch=``).
    ``gc=False``: never make a record part of a reference cycle.
    """

    offset_delta: int
    timestamp_delta_ms: int
    key: bytes | None
    value: ValueT | None
    headers: tuple[tuple[str, bytes], ...]
    batch: BatchInfo = msgspec.field(default_factory=_current_batch.get)

    @property
    def offset(self) -> int:
        """The record's offset in its partition."""
        return self.batch.base_offset + self.offset_delta

    @property
    def timestamp_ms(self) -> int:
        """Milliseconds since the epoch: the producer's create time, or the
        broker's append time (the batch's max timestamp) for log-append-time topics."""
        batch = self.batch
        if batch.log_append_time:
            return batch.max_timestamp_ms
        return batch.first_timestamp_ms + self.timestamp_delta_ms


@dataclasses.dataclass(frozen=True, slots=True)
class FetchedRecords(Generic[ValueT]):
    """What :meth:`RecordDecoder.decode_fetch` found in a buffer of batches."""

    records: list[Record[ValueT]]
    # The offset to fetch next: after the last complete batch (or the fetch offset).
    next_offset: int
    # Bytes of complete batches, from the start of the buffer.
    bytes_consumed: int
    # Bytes of an incomplete trailing batch that were left alone (0 if none).
    partial_batch_bytes: int


_records_decoder = msgspec.msgpack.Decoder(list[Record[bytes]])


class RecordDecoder(Generic[ValueT]):
    """Turns record batches into :class:`Record` lists.  Reusable and cheap to
    keep; thread-safe (no mutable state after construction).

    ``value_type``: None keeps values as ``bytes``; a type msgspec understands
    (a ``msgspec.Struct``, ``dict[str, int]``, ...) decodes every non-None value
    with a reused msgspec decoder for ``value_format`` ("json" by default: the
    interoperable choice, readable by any tool; "msgpack" is smaller and faster).
    ``verify_crc=False`` skips the CRC-32C check (the broker checked it on
    append; a consumer on a trusted network may trade that check for speed).
    """

    __slots__ = (
        "_batch_bytes_max",
        "_decompressed_bytes_max",
        "_value_decoder",
        "_verify_crc",
        "value_format",
        "value_type",
    )

    @overload
    def __init__(
        self: RecordDecoder[bytes],
        value_type: None = None,
        *,
        value_format: ValueFormat = "json",
        verify_crc: bool = True,
        decompressed_bytes_max: int = DECOMPRESSED_BYTES_MAX_DEFAULT,
        batch_bytes_max: int = BATCH_BYTES_MAX_DEFAULT,
    ) -> None: ...

    @overload
    def __init__(
        self,
        value_type: type[ValueT],
        *,
        value_format: ValueFormat = "json",
        verify_crc: bool = True,
        decompressed_bytes_max: int = DECOMPRESSED_BYTES_MAX_DEFAULT,
        batch_bytes_max: int = BATCH_BYTES_MAX_DEFAULT,
    ) -> None: ...

    def __init__(
        self,
        value_type: Any = None,
        *,
        value_format: ValueFormat = "json",
        verify_crc: bool = True,
        decompressed_bytes_max: int = DECOMPRESSED_BYTES_MAX_DEFAULT,
        batch_bytes_max: int = BATCH_BYTES_MAX_DEFAULT,
    ) -> None:
        assert value_format in ("json", "msgpack"), value_format
        assert decompressed_bytes_max >= 0, decompressed_bytes_max
        assert batch_bytes_max >= HEADER_BYTES, batch_bytes_max
        self.value_type = value_type
        self.value_format = value_format
        self._verify_crc = verify_crc
        self._decompressed_bytes_max = decompressed_bytes_max
        self._batch_bytes_max = batch_bytes_max
        self._value_decoder: msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any] | None
        if value_type is None:
            self._value_decoder = None
        elif value_format == "json":
            self._value_decoder = msgspec.json.Decoder(value_type)
        else:
            self._value_decoder = msgspec.msgpack.Decoder(value_type)

    def decode_batch(
        self, buffer: Buffer, position: int = 0, *, fetch_offset: int = 0
    ) -> list[Record[ValueT]]:
        """The records of the one batch at ``position`` with offset >= ``fetch_offset``.

        Bytes after the batch are left alone (``batch_size_at`` tells where it ends).
        Raises CorruptBatchError (truncated, bad CRC, bad compressed data),
        BatchTooLargeError (over ``batch_bytes_max`` or ``decompressed_bytes_max``),
        InvalidBatchError (bad header, records that do not decode or do not match
        the header's count, a value that does not decode as ``value_type``),
        UnsupportedCompressionError (unknown codec).
        """
        header = BatchHeader.parse(buffer, position, batch_bytes_max=self._batch_bytes_max)
        return self._decode(header, fetch_offset)

    def decode_fetch(self, buffer: Buffer, fetch_offset: int = 0) -> FetchedRecords[ValueT]:
        """The records with offset >= ``fetch_offset`` of the complete batches in
        ``buffer`` (a fetch response's record data, batches back to back).

        A trailing incomplete batch (the broker cuts a response at its byte
        limit) is left alone and reported in ``partial_batch_bytes``.  Control
        batches are skipped (their offsets still advance ``next_offset``).
        Raises like :meth:`decode_batch`, plus InvalidBatchError if batches go
        backwards and BatchTooLargeError if the incomplete batch declares more
        than ``batch_bytes_max`` bytes (it could never be completed).
        """
        view = byte_view(buffer)
        fetched = self._decode_fetch_plain(view, fetch_offset)
        if fetched is not None:
            return fetched
        total = len(view)
        records: list[Record[ValueT]] = []
        next_offset = fetch_offset
        previous_end_offset: int | None = None
        position = 0
        # Every batch is at least HEADER_BYTES long, which bounds the loop.
        for _ in range(total // HEADER_BYTES + 1):
            remaining = total - position
            if remaining == 0:
                break
            batch_bytes = batch_size_at(view, position)
            if batch_bytes is not None:
                self._check_declared_size(batch_bytes)
            if batch_bytes is None or batch_bytes > remaining:
                return FetchedRecords(records, next_offset, position, remaining)
            header = BatchHeader.parse(view, position, batch_bytes_max=self._batch_bytes_max)
            if previous_end_offset is not None and header.base_offset < previous_end_offset:
                raise InvalidBatchError(
                    f"batch at offset {header.base_offset} follows one that ends at "
                    f"{previous_end_offset}"
                )
            if header.next_offset > fetch_offset and not header.attributes & CONTROL_FLAG:
                records.extend(self._decode(header, fetch_offset))
            previous_end_offset = header.next_offset
            next_offset = max(next_offset, header.next_offset)
            position = header.end
        assert position == total, (position, total)
        return FetchedRecords(records, next_offset, position, 0)

    def _decode_fetch_plain(
        self, view: memoryview, fetch_offset: int
    ) -> FetchedRecords[ValueT] | None:
        """:meth:`decode_fetch` for the usual buffer -- whole, sound, uncompressed,
        non-control batches -- in one tight loop; None for anything else (a
        partial batch, a codec, a failed check), which the general loop then
        handles from the start and reports precisely.  Same checks, same result."""
        total = len(view)
        records: list[Record[Any]] = []
        next_offset = fetch_offset
        previous_end_offset = -1
        position = 0
        batch_bytes_max = self._batch_bytes_max
        verify_crc = self._verify_crc
        unpack = HEADER.unpack_from
        for _ in range(total // HEADER_BYTES + 1):
            remaining = total - position
            if remaining == 0:
                break
            if remaining < HEADER_BYTES:
                return None
            fields = unpack(view, position)
            base_offset = fields[0]
            batch_bytes = fields[1] + LENGTH_PREFIX_BYTES
            attributes = fields[5]
            count = fields[12]
            if (
                not HEADER_BYTES <= batch_bytes <= batch_bytes_max
                or batch_bytes > remaining
                or fields[3] != MAGIC
                or attributes & (~KNOWN_ATTRIBUTE_BITS | COMPRESSION_MASK | CONTROL_FLAG)
                or count <= 0
                or fields[6] != count - 1
                or fields[8] < fields[7]
                or base_offset < previous_end_offset
            ):
                return None
            end = position + batch_bytes
            batch_end_offset = base_offset + count
            if batch_end_offset > fetch_offset:
                if verify_crc and fields[4] != google_crc32c.value(
                    bytes(view[position + CRC_FROM : end])
                ):
                    return None
                encoded = view[position + HEADER_BYTES : end]
                if len(encoded) > self._decompressed_bytes_max:
                    return None
                token = _current_batch.set(BatchInfo._from_fields(fields))
                try:
                    batch = _records_decoder.decode(encoded)
                except msgspec.DecodeError:
                    return None
                finally:
                    _current_batch.reset(token)
                if (
                    len(batch) != count
                    or batch[0].offset_delta != 0
                    or batch[-1].offset_delta != count - 1
                ):
                    return None
                skip = fetch_offset - base_offset
                if skip > 0:
                    del batch[:skip]
                if self._value_decoder is not None:
                    self._decode_values(batch)
                if records:
                    records.extend(batch)
                else:
                    records = batch
            previous_end_offset = batch_end_offset
            if batch_end_offset > next_offset:
                next_offset = batch_end_offset
            position = end
        # list[Record[Any]] is a list[Record[ValueT]] to the type checker: no cast()
        # call (a Python function) per fetch.
        return FetchedRecords(records, next_offset, position, 0)

    def _check_declared_size(self, batch_bytes: int) -> None:
        if batch_bytes < HEADER_BYTES:
            raise InvalidBatchError(f"batch length {batch_bytes} is shorter than the header")
        if batch_bytes > self._batch_bytes_max:
            raise BatchTooLargeError(
                f"batch of {batch_bytes} bytes exceeds batch_bytes_max {self._batch_bytes_max}"
            )

    def _decode(self, header: BatchHeader, fetch_offset: int) -> list[Record[ValueT]]:
        if self._verify_crc:
            header.verify_crc()
        payload = decompress(
            header.compression, header.records_view(), self._decompressed_bytes_max
        )
        token = _current_batch.set(BatchInfo.from_header(header))
        try:
            records = _records_decoder.decode(payload)
        except msgspec.DecodeError as error:  # ValidationError is a DecodeError too
            raise InvalidBatchError(
                f"records of the batch at offset {header.base_offset} do not decode: {error}"
            ) from error
        finally:
            _current_batch.reset(token)
        count = header.record_count
        if len(records) != count:
            raise InvalidBatchError(
                f"batch at offset {header.base_offset} holds {len(records)} records, "
                f"its header says {count}"
            )
        # Offset deltas must be 0, 1, ..., count - 1.  Checking every one would
        # cost a third of the decode (a Python-level pass), so only the ends are
        # checked; with the count that catches a short, long or shifted batch.
        if records[0].offset_delta != 0 or records[-1].offset_delta != count - 1:
            raise InvalidBatchError(
                f"offset deltas of the batch at offset {header.base_offset} "
                f"do not run from 0 to {count - 1}"
            )
        skip = fetch_offset - header.base_offset
        if skip > 0:
            del records[:skip]
        if self._value_decoder is not None:
            self._decode_values(records)
        values: list[Record[Any]] = records  # the values' type is the caller's (no cast() call)
        return values

    def _decode_values(self, records: list[Record[bytes]]) -> None:
        """Replace each non-None value by its decoded ``value_type`` (in place)."""
        assert self._value_decoder is not None
        decode = self._value_decoder.decode
        record: Record[Any]
        for record in records:
            value = record.value
            if value is not None:
                try:
                    record.value = decode(value)
                except msgspec.DecodeError as error:
                    raise InvalidBatchError(
                        f"value at offset {record.offset} does not decode as "
                        f"{self.value_format} {self.value_type!r}: {error}"
                    ) from error


def decode_batch(
    buffer: Buffer,
    position: int = 0,
    *,
    fetch_offset: int = 0,
    verify_crc: bool = True,
    decompressed_bytes_max: int = DECOMPRESSED_BYTES_MAX_DEFAULT,
    batch_bytes_max: int = BATCH_BYTES_MAX_DEFAULT,
) -> list[Record[bytes]]:
    """The records (values as bytes) of the one batch at ``position``.
    Raises like :meth:`RecordDecoder.decode_batch`."""
    decoder = RecordDecoder(
        verify_crc=verify_crc,
        decompressed_bytes_max=decompressed_bytes_max,
        batch_bytes_max=batch_bytes_max,
    )
    return decoder.decode_batch(buffer, position, fetch_offset=fetch_offset)


def decode_fetch(
    buffer: Buffer,
    fetch_offset: int = 0,
    *,
    verify_crc: bool = True,
    decompressed_bytes_max: int = DECOMPRESSED_BYTES_MAX_DEFAULT,
    batch_bytes_max: int = BATCH_BYTES_MAX_DEFAULT,
) -> FetchedRecords[bytes]:
    """The records (values as bytes) of the complete batches in ``buffer``.
    Raises like :meth:`RecordDecoder.decode_fetch`."""
    decoder = RecordDecoder(
        verify_crc=verify_crc,
        decompressed_bytes_max=decompressed_bytes_max,
        batch_bytes_max=batch_bytes_max,
    )
    return decoder.decode_fetch(buffer, fetch_offset)
