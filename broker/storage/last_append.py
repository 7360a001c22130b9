"""The last-append cache: the bytes of a log's latest small append, kept in memory so
a live consumer's next fetch is answered without reading the file.

``Log.append`` remembers an append of at most :data:`LAST_APPEND_BYTES_MAX` bytes as
a :class:`LastAppend` (the stamped bytes, a copy taken once).  ``Log.read`` answers a
read from it when the read starts exactly at its base offset, the append lies wholly
below the read's limit (the log end or ``end_offset_max``) and fits ``max_bytes``:
it hands out a :class:`~broker.storage.file_handle.CachedRegion` over the bytes, with
no system call.  Any other read goes to the file.

Invariants: ``data`` is byte for byte what the active segment's file holds for
offsets ``[base_offset, next_offset)``, as long as ``handle.truncations ==
truncations`` (the entry watches the segment file it was written to).  The log drops
the entry whenever that could stop being true or the entry stops being the latest:
on a roll (only the active segment's latest append is kept), a truncation, a close,
and on every append (replaced, or dropped when the new append is too big).  A region
handed out earlier notices a later truncation itself (``CachedRegion.is_intact``).

Concurrency: the log's owner thread only (the event loop), like the Log.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from broker.storage.file_handle import FileHandle

# Appends of at most this many bytes (a live producer's) are kept in memory until the
# next one, for the live consumers' next read; the size of a fetch answer the broker
# sends in one write.
LAST_APPEND_BYTES_MAX: Final = 16 * 1024


class LastAppend(NamedTuple):
    """The latest append's stamped bytes and the offsets they cover.  A NamedTuple:
    built once per small append and read by field on every live fetch, both at the
    cost of a tuple."""

    base_offset: int  # offset of the first record appended
    next_offset: int  # offset just after the last record appended
    data: bytes  # the stamped batches, as the file holds them
    handle: FileHandle  # the segment file they were written to
    truncations: int  # that file's truncation count when they were written
