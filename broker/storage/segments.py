"""The ordered set of a log's segments: a SortedDict from base offset to segment.

Like Kafka's LogSegments: the last segment is the active one (appended to), all
others are sealed.  Lookups are O(log n) bisections of the sorted keys.  Rolling
(sealing the active segment and starting the next) and walking the headers of the
log's last bytes across segments are done here too.

Invariants (``check_invariants``): at least one segment; keys are the segments'
base offsets, strictly increasing; segments are contiguous (each one's next offset
is the following one's base offset); only the last segment is unsealed.

Concurrency: owned by one Log, used from the event-loop thread only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

from sortedcontainers import SortedDict

from broker.storage.batch_scan import walk_header_fields
from broker.storage.config import LogConfig
from broker.storage.segment import LogSegment
from client.errors import LogCorruptError, StorageError

# Offsets are stored relative to the segment's base offset in a u32 kept below 2**31.
_RELATIVE_OFFSET_MAX: Final = (1 << 31) - 1


class LogSegments:
    """Segments by base offset; the last one is active."""

    __slots__ = ("_active", "_by_base_offset", "_first")

    def __init__(self) -> None:
        self._by_base_offset: SortedDict[int, LogSegment] = SortedDict()
        # The ends, cached: every append and every fetch asks for them.
        self._first: LogSegment | None = None
        self._active: LogSegment | None = None

    def __len__(self) -> int:
        return len(self._by_base_offset)

    def __iter__(self) -> Iterator[LogSegment]:
        return iter(self._by_base_offset.values())

    def add(self, segment: LogSegment) -> None:
        assert segment.base_offset not in self._by_base_offset, segment
        self._by_base_offset[segment.base_offset] = segment
        self._cache_ends()

    def remove(self, segment: LogSegment) -> None:
        removed = self._by_base_offset.pop(segment.base_offset)
        assert removed is segment, (removed, segment)
        self._cache_ends()

    def _cache_ends(self) -> None:
        by_base_offset = self._by_base_offset
        self._first = by_base_offset.peekitem(0)[1] if by_base_offset else None
        self._active = by_base_offset.peekitem(-1)[1] if by_base_offset else None

    @property
    def first(self) -> LogSegment:
        assert self._first is not None, "a log always has a segment"
        return self._first

    @property
    def active(self) -> LogSegment:
        assert self._active is not None, "a log always has a segment"
        return self._active

    def floor(self, offset: int) -> LogSegment | None:
        """The segment with the largest base offset <= ``offset``."""
        index = self._by_base_offset.bisect_right(offset) - 1
        return self._by_base_offset.peekitem(index)[1] if index >= 0 else None

    def from_offset(self, offset: int) -> list[LogSegment]:
        """Segments that may hold ``offset`` or later ones, in order."""
        start = max(self._by_base_offset.bisect_right(offset) - 1, 0)
        return list(self._by_base_offset.values()[start:])

    @property
    def size_bytes(self) -> int:
        return sum(segment.size_bytes for segment in self)

    def roll_reason(
        self, config: LogConfig, incoming_bytes: int, incoming_offsets: int, now_ms: int
    ) -> str | None:
        """Why the active segment must roll before an append of ``incoming_bytes``
        holding ``incoming_offsets`` offsets, or None (an empty segment never rolls)."""
        active = self.active
        if active.is_empty:
            return None
        rolling_ms = active.rolling_timestamp_ms
        if active.size_bytes + incoming_bytes > config.segment_bytes:
            return "size"
        if rolling_ms is not None and now_ms - rolling_ms >= config.segment_ms:
            return "age"
        if active.next_offset + incoming_offsets - active.base_offset > _RELATIVE_OFFSET_MAX:
            return "offsets"
        return None

    def roll(self, directory: Path, config: LogConfig) -> LogSegment:
        """Seal the active segment and add a new, empty one after it; returns it.
        Raises StorageError (the log is then unchanged)."""
        old = self.active
        new = LogSegment.create(directory, old.next_offset, config)
        try:
            old.seal()
        except StorageError as error:
            for path in new.detach():
                try:
                    path.unlink()
                except OSError as cleanup_error:
                    error.add_note(f"also failed to remove {path}: {cleanup_error}")
            raise
        self.add(new)
        return new

    def tail_header_fields(self, bytes_max: int) -> Iterator[tuple[int, ...]]:
        """The header fields (client.records.header.HEADER order) of the batches in
        about the last ``bytes_max`` bytes, oldest first, from an indexed batch start
        (so a little more).  Per batch, headers only.  Raises StorageError,
        LogCorruptError (a header that is not a batch or does not follow the one
        before)."""
        assert bytes_max > 0
        chosen: list[LogSegment] = []
        remaining = bytes_max
        for segment in reversed(self._by_base_offset.values()):  # few reach the budget
            chosen.append(segment)
            remaining -= segment.size_bytes
            if remaining <= 0:
                break
        chosen.reverse()
        for index, segment in enumerate(chosen):
            start = 0
            expected = segment.base_offset
            if index == 0 and remaining < 0:
                expected, start = segment.offset_index.lookup_by_position(-remaining)
            for position, fields in walk_header_fields(
                segment.handle.descriptor, start, segment.size_bytes
            ):
                # Read from disk: a damaged header must not reach the caller.
                if fields[0] != expected or fields[6] < 0:
                    raise LogCorruptError(
                        f"{segment.path}: batch at position {position} has base offset "
                        f"{fields[0]} (expected {expected}), last offset delta {fields[6]}"
                    )
                expected = fields[0] + fields[6] + 1
                yield fields

    def check_invariants(self) -> None:
        assert self._by_base_offset, "a log always has a segment"
        previous: LogSegment | None = None
        for base_offset, segment in self._by_base_offset.items():
            assert base_offset == segment.base_offset
            if previous is not None:
                assert previous.sealed, previous
                assert previous.next_offset == base_offset, (previous, segment)
            previous = segment
        assert not self.active.sealed, self.active
        assert self._first is self._by_base_offset.peekitem(0)[1]
        assert self._active is self._by_base_offset.peekitem(-1)[1]
