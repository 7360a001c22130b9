"""Index entries are hints: header walks that check them, and rebuilding a
segment's offset index when a lookup finds an entry wrong.

An offset index entry names a batch (its base offset) and where it starts.  A
trusted segment's index is checked at open only at its last entry, so an entry in
the middle may point a few bytes off (a damaged file).  The lookups of
broker/storage/segment.py walk headers from an entry with :func:`find_batch` /
:func:`walk_checked`, which check that the walk starts at the batch named and
that base offsets follow each other; when they do not,
:func:`rebuild_after_bad_entry` logs it and rebuilds the segment's offset index
from its headers (the same interval rule appends use), and the lookup walks from
the segment start.  A damaged header found then is a LogCorruptError naming its
position.

Plain functions over a segment on the event-loop thread (a rebuild reads every
header of the segment: rare, and logged).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from broker.storage.batch_scan import ScannedBatch, walk_headers
from broker.storage.offset_index import OffsetIndex
from client.errors import LogCorruptError, StorageError

if TYPE_CHECKING:
    from broker.storage.segment import LogSegment

_logger = structlog.get_logger("distributary.storage.segment")


def find_batch(
    descriptor: int, offset: int, start_offset: int, start_position: int, end_position: int
) -> ScannedBatch | None:
    """The batch containing ``offset``, walking headers from a batch that should
    start at ``start_position`` with ``start_offset``; None when a header on the
    way is not the batch expected there.  Raises StorageError."""
    expected = start_offset
    try:
        for batch in walk_headers(descriptor, start_position, end_position):
            if batch.base_offset != expected:
                return None
            if batch.next_offset > offset:
                return batch
            expected = batch.next_offset
    except LogCorruptError:
        return None
    return None


def walk_checked(
    descriptor: int, start_offset: int, start_position: int, end_position: int
) -> list[ScannedBatch] | None:
    """The headers from ``start_position`` up to ``end_position`` if the first is
    the batch at ``start_offset`` (None if not, or if a header is damaged).
    Raises StorageError."""
    try:
        batches = list(walk_headers(descriptor, start_position, end_position))
    except LogCorruptError:
        return None
    if batches and batches[0].base_offset != start_offset:
        return None
    return batches


def index_entries(
    descriptor: int,
    size_bytes: int,
    base_offset: int,
    next_offset: int,
    interval_bytes: int,
    name: str,
) -> list[tuple[int, int]]:
    """The (offset, position) entries an offset index of the segment in
    ``descriptor`` gets when appends index every ``interval_bytes``, from its
    headers.  Raises LogCorruptError (naming ``name`` and the position) when a
    header is damaged or out of order, StorageError."""
    entries: list[tuple[int, int]] = []
    expected = base_offset
    since_entry = 0
    for batch in walk_headers(descriptor, 0, size_bytes):
        if batch.base_offset != expected:
            raise LogCorruptError(
                f"{name}: batch at position {batch.position} has base offset "
                f"{batch.base_offset}, expected {expected}"
            )
        if since_entry >= interval_bytes:
            entries.append((batch.base_offset, batch.position))
            since_entry = 0
        since_entry += batch.batch_bytes
        expected = batch.next_offset
    if expected != next_offset:
        raise LogCorruptError(f"{name}: batches end at offset {expected}, expected {next_offset}")
    return entries


def rebuild_after_bad_entry(segment: LogSegment, entry_offset: int, entry_position: int) -> None:
    """Log that an index entry of ``segment`` did not lead to its batch and
    rebuild the segment's offset index.  Raises like :func:`rebuild_offset_index`."""
    _logger.warning(
        "offset index entry does not point at a batch, rebuilding the index",
        file=str(segment.path),
        offset=entry_offset,
        position=entry_position,
    )
    rebuild_offset_index(segment)


def rebuild_offset_index(segment: LogSegment) -> None:
    """Rebuild ``segment``'s offset index from its batch headers and rewrite the
    file.  Reads every header of the segment.  Raises LogCorruptError (naming the
    position) when a header is damaged or out of order, StorageError."""
    rebuilt = OffsetIndex(segment.offset_index.path, segment.base_offset, bytearray())
    for entry_offset, entry_position in index_entries(
        segment.handle.descriptor,
        segment.size_bytes,
        segment.base_offset,
        segment.next_offset,
        segment.config.index_interval_bytes,
        str(segment.path),
    ):
        rebuilt.append(entry_offset, entry_position)
    segment.offset_index.close()
    try:
        rebuilt.rewrite()
    except OSError as error:
        raise StorageError(f"cannot rewrite {rebuilt.path}: {error}") from error
    if segment.sealed:
        rebuilt.close()
    segment.offset_index = rebuilt
    _, indexed_position = rebuilt.last_entry()
    segment.bytes_since_index_entry = segment.size_bytes - indexed_position
    segment.tail = None
    segment.index_rebuilds += 1
