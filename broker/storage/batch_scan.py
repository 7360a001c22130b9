"""Walking the batches of a segment file, per batch, never per record.

Two walks exist:

* :func:`scan_batches` reads the file in large chunks and validates every batch
  (header shape, CRC-32C, contiguous offsets).  Recovery and index rebuilds use it;
  it stops with :class:`BadBatch` at the first batch that does not pass.
* :func:`walk_headers` reads only the 61-byte headers of batches already known to
  be valid (lookups, reads, timestamp searches), from small chunks.

Both are plain functions over a file descriptor and touch no log state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, NamedTuple

from broker.storage.file_handle import read_exactly
from client.errors import LogCorruptError, RecordBatchError
from client.records.header import HEADER, HEADER_BYTES, BatchHeader, batch_size_at

# Recovery reads 8 MiB at a time: few syscalls per GiB, modest memory.
SCAN_CHUNK_BYTES: Final = 8 * 1024 * 1024
# Header walks read 16 KiB: several small batches' headers per read, little waste
# for big batches.
HEADER_CHUNK_BYTES: Final = 16 * 1024


class ScannedBatch(NamedTuple):
    """What the storage layer needs from one batch header, with its file position."""

    position: int
    base_offset: int
    next_offset: int
    batch_bytes: int
    first_timestamp_ms: int
    max_timestamp_ms: int

    @property
    def end(self) -> int:
        return self.position + self.batch_bytes


class BadBatch(Exception):
    """Internal: the scan stopped at ``position`` because of ``reason``."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"bad batch at position {position}: {reason}")
        self.position = position
        self.reason = reason


def scan_batches(
    descriptor: int,
    start_position: int,
    end_position: int,
    *,
    expected_offset: int | None,
    batch_bytes_max: int,
    verify_crc: bool = True,
) -> Iterator[ScannedBatch]:
    """Yield every valid batch in ``[start_position, end_position)``.

    Raises BadBatch at the first batch that is truncated, malformed, fails its CRC
    or does not start at the offset the previous one ended at (``expected_offset``
    for the first).  Raises StorageError on an I/O error.
    """
    position = start_position
    next_offset = expected_offset
    # Every chunk yields at least one batch or stops, so the file size bounds the loop.
    for _ in range(end_position - start_position + 1):
        if position >= end_position:
            return
        chunk = read_exactly(descriptor, position, min(SCAN_CHUNK_BYTES, end_position - position))
        view = memoryview(chunk)
        size = batch_size_at(view, 0)
        if size is not None and size > len(view) and size <= batch_bytes_max:
            # One batch bigger than a chunk: read exactly that batch.
            chunk = read_exactly(descriptor, position, min(size, end_position - position))
            view = memoryview(chunk)
        offset_in_chunk = 0
        for _ in range(len(view) // HEADER_BYTES + 1):
            size = batch_size_at(view, offset_in_chunk)
            if offset_in_chunk == len(view) or (
                offset_in_chunk > 0 and (size is None or offset_in_chunk + size > len(view))
            ):
                break  # continue with the next chunk at this batch
            try:
                header = BatchHeader.parse(view, offset_in_chunk, batch_bytes_max=batch_bytes_max)
                if verify_crc:
                    header.verify_crc()
            except RecordBatchError as error:
                raise BadBatch(position + offset_in_chunk, str(error)) from error
            if next_offset is not None and header.base_offset != next_offset:
                raise BadBatch(
                    position + offset_in_chunk,
                    f"base offset {header.base_offset}, expected {next_offset}",
                )
            next_offset = header.next_offset
            yield ScannedBatch(
                position + offset_in_chunk,
                header.base_offset,
                header.next_offset,
                header.batch_bytes,
                header.first_timestamp,
                header.max_timestamp,
            )
            offset_in_chunk = header.end
        position += offset_in_chunk
    raise AssertionError("scan_batches did not make progress")  # pragma: no cover


def walk_headers(descriptor: int, start_position: int, end_position: int) -> Iterator[ScannedBatch]:
    """Yield the headers of batches from ``start_position`` (a batch start) up to
    ``end_position``, without checking CRCs.  Raises StorageError on an I/O error,
    LogCorruptError where the bytes do not look like a batch header (the file
    changed since it was validated, or an index pointed off a batch start)."""
    for position, fields in walk_header_fields(descriptor, start_position, end_position):
        yield ScannedBatch(
            position, fields[0], fields[0] + fields[6] + 1, fields[1] + 12, fields[7], fields[8]
        )


def walk_header_fields(
    descriptor: int, start_position: int, end_position: int
) -> Iterator[tuple[int, tuple[int, ...]]]:
    """Like :func:`walk_headers`, but ``(position, all header fields)`` in
    client.records.header.HEADER order.  Raises StorageError on an I/O error,
    LogCorruptError (naming the position) where there is no batch header."""
    position = start_position
    chunk = b""
    chunk_start = position
    for _ in range((end_position - start_position) // HEADER_BYTES + 1):
        if position >= end_position:
            return
        if position + HEADER_BYTES > chunk_start + len(chunk):
            chunk_start = position
            # A header may straddle end_position (a byte limit, not the file end).
            chunk_bytes = max(HEADER_BYTES, min(HEADER_CHUNK_BYTES, end_position - position))
            chunk = read_exactly(descriptor, position, chunk_bytes)
            if len(chunk) < HEADER_BYTES:
                raise LogCorruptError(f"short batch header at position {position}")
        fields = HEADER.unpack_from(chunk, position - chunk_start)
        batch_bytes = fields[1] + 12
        if batch_bytes < HEADER_BYTES or fields[3] != 2:
            raise LogCorruptError(
                f"no batch header at position {position} (length {fields[1]}, magic {fields[3]})"
            )
        yield position, fields
        position += batch_bytes
