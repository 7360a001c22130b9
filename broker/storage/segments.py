"""The ordered set of a log's segments: a SortedDict from base offset to segment.

Like Kafka's LogSegments: the last segment is the active one (appended to), all
others are sealed.  Lookups are O(log n) bisections of the sorted keys.

Invariants (``check_invariants``): at least one segment; keys are the segments'
base offsets, strictly increasing; segments are contiguous (each one's next offset
is the following one's base offset); only the last segment is unsealed.

Concurrency: owned by one Log, used from the event-loop thread only.
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedDict

from broker.storage.segment import LogSegment


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

    def after(self, segment: LogSegment) -> LogSegment | None:
        """The segment following ``segment``, or None if it is the active one."""
        index = self._by_base_offset.index(segment.base_offset) + 1
        if index >= len(self._by_base_offset):
            return None
        return self._by_base_offset.peekitem(index)[1]

    @property
    def size_bytes(self) -> int:
        return sum(segment.size_bytes for segment in self)

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
