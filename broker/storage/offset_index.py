"""The sparse offset index (``<base offset>.index``): offset -> position in the .log.

On disk, a flat array of 8-byte big-endian entries, one per ``index_interval_bytes``
of log (the same format as Kafka's OffsetIndex)::

    bytes 0-3  relative offset  u32  batch base offset - segment base offset
    bytes 4-7  position         u32  byte position of that batch in the .log file

Invariants: relative offsets and positions both strictly increase; every entry
points at the start of a batch whose base offset is the entry's offset; the last
position is below the .log size.  A lookup finds the last entry at or before the
target and the segment scans batch headers forward from there (at most about one
index interval of bytes).

Concurrency: owned by one LogSegment, called from the event-loop thread (a flush
fsyncs the file by path from a worker thread, see index_file).
"""

from __future__ import annotations

import struct
from array import array
from typing import Final

from broker.storage.index_file import IndexFile

SUFFIX: Final = ".index"
_RELATIVE_MAX: Final = (1 << 31) - 1


class OffsetIndex(IndexFile):
    """Sparse map from a batch's base offset to its position in the segment file."""

    ENTRY = struct.Struct(">II")
    __slots__ = ()

    def is_well_formed(self) -> bool:
        """Both fields strictly increase (checked in C: array, set and sort)."""
        words = array("I")
        words.frombytes(self.entries)
        if words.itemsize != 4:
            return False
        if array("I", b"\x00\x00\x00\x01")[0] != 1:  # little-endian host: file is big-endian
            words.byteswap()
        relative_offsets, positions = list(words[0::2]), list(words[1::2])
        return all(
            len(set(column)) == len(column) and column == sorted(column)
            for column in (relative_offsets, positions)
        )

    def append(self, offset: int, position: int) -> None:
        """Index the batch whose base offset is ``offset`` at ``position`` (memory only
        until ``write_pending``)."""
        relative = offset - self.base_offset
        assert 0 <= relative <= _RELATIVE_MAX, (offset, self.base_offset)
        if self.entry_count:
            last_relative, last_position = self.entry(self.entry_count - 1)
            assert relative > last_relative and position > last_position, (offset, position)
        self._append_entry(relative, position)

    def lookup(self, offset: int) -> tuple[int, int]:
        """(offset, position) of the last indexed batch starting at or before
        ``offset``; (base offset, 0) if there is none."""
        number = self.floor_entry_number(offset - self.base_offset)
        if number < 0:
            return self.base_offset, 0
        relative, position = self.entry(number)
        return self.base_offset + relative, position

    def last_entry(self) -> tuple[int, int]:
        """(offset, position) of the last indexed batch; (base offset, 0) if none."""
        if not self.entry_count:
            return self.base_offset, 0
        relative, position = self.entry(self.entry_count - 1)
        return self.base_offset + relative, position

    def lookup_by_position(self, position: int) -> tuple[int, int]:
        """(offset, position) of the last indexed batch starting at or before
        ``position``; (base offset, 0) if there is none."""
        number = self.floor_entry_number(position, field=1)
        if number < 0:
            return self.base_offset, 0
        relative, found_position = self.entry(number)
        return self.base_offset + relative, found_position

    def truncate_from_offset(self, offset: int) -> None:
        """Drop entries for offsets >= ``offset``.  Raises OSError."""
        self.truncate_entries(self.floor_entry_number(offset - self.base_offset - 1) + 1)

    def truncate_from_position(self, position: int) -> None:
        """Drop entries at positions >= ``position``.  Raises OSError."""
        self.truncate_entries(self.floor_entry_number(position - 1, field=1) + 1)

    def check_invariants(self, log_bytes: int) -> None:
        """Entries strictly increase, sit below the log size and match the file."""
        self.check_file_invariants()
        assert self.is_well_formed(), f"{self.path}: entries do not strictly increase"
        if self.entry_count:
            _, last_position = self.entry(self.entry_count - 1)
            assert last_position < log_bytes, (self.path, last_position, log_bytes)
