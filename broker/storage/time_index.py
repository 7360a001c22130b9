"""The sparse time index (``<base offset>.timeindex``): timestamp -> offset.

On disk, a flat array of 12-byte big-endian entries (Kafka's TimeIndex format)::

    bytes 0-7   timestamp        i64  the largest batch max_timestamp seen so far (ms)
    bytes 8-11  relative offset  u32  base offset (minus segment base) of the batch
                                      at which that maximum was reached

An entry is added at most once per ``index_interval_bytes`` and only when the
running maximum grew, so timestamps strictly increase and offsets never decrease.
Sealing a segment (roll, flush, close) appends its final maximum, so the last entry
is the segment's largest timestamp.  Meaning: every batch up to and including the
entry's batch has max_timestamp <= the entry's timestamp.  To find the first batch
with max_timestamp >= T, start at the last entry whose timestamp is < T and scan
batch headers forward.

Concurrency: owned by one LogSegment, called from the event-loop thread (a flush
fsyncs the file by path from a worker thread, see index_file).
"""

from __future__ import annotations

import struct
from array import array
from typing import Final

from broker.storage.index_file import IndexFile

SUFFIX: Final = ".timeindex"


class TimeIndex(IndexFile):
    """Sparse map from a running maximum timestamp to the batch where it was reached."""

    ENTRY = struct.Struct(">qI")
    __slots__ = ()

    def is_well_formed(self) -> bool:
        """Timestamps strictly increase and are >= 0; offsets never decrease (in C)."""
        words = array("I")
        words.frombytes(self.entries)
        if array("I", b"\x00\x00\x00\x01")[0] != 1:
            words.byteswap()
        high, low, relative = words[0::3], words[1::3], words[2::3]
        if any(word >= 1 << 31 for word in high[-1:]):  # negative: the sign bit is set
            return False
        timestamps = list(zip(high, low))
        offsets = list(relative)
        return (
            len(set(timestamps)) == len(timestamps)
            and timestamps == sorted(timestamps)
            and offsets == sorted(offsets)
        )

    @property
    def last_timestamp_ms(self) -> int:
        """The largest timestamp indexed, or -1 when empty."""
        return self.entry(self.entry_count - 1)[0] if self.entry_count else -1

    @property
    def last_offset(self) -> int:
        """The offset of the last entry, or the segment base offset when empty."""
        if not self.entry_count:
            return self.base_offset
        return self.base_offset + self.entry(self.entry_count - 1)[1]

    def maybe_append(self, timestamp_ms: int, offset: int) -> bool:
        """Add (timestamp, offset) if the timestamp is larger than the last entry's
        (memory only until ``write_pending``).  Returns whether it was added."""
        if timestamp_ms <= self.last_timestamp_ms:
            return False
        assert offset >= self.last_offset, (offset, self.last_offset)
        self._append_entry(timestamp_ms, offset - self.base_offset)
        return True

    def lookup_before(self, timestamp_ms: int) -> int | None:
        """The offset of the last entry whose timestamp is < ``timestamp_ms`` (every
        batch up to it is older), or None if there is none."""
        number = self.floor_entry_number(timestamp_ms - 1)
        if number < 0:
            return None
        return self.base_offset + self.entry(number)[1]

    def truncate_from_offset(self, offset: int) -> None:
        """Drop entries for offsets >= ``offset``.  Raises OSError."""
        self.truncate_entries(self.floor_entry_number(offset - self.base_offset - 1, field=1) + 1)

    def check_invariants(self, end_offset: int) -> None:
        """Entries increase, point below ``end_offset`` and match the file."""
        self.check_file_invariants()
        assert self.is_well_formed(), f"{self.path}: entries are not increasing"
        if self.entry_count:
            assert self.last_offset < end_offset, (self.path, self.last_offset, end_offset)
