"""The leader-epoch cache of one replica's log: which leader epoch starts at which
offset (Kafka's LeaderEpochFileCache).

Every batch carries the epoch of the leader that wrote it.  The cache keeps one
entry per epoch present in the log, ``(epoch, start_offset)``, with epochs and
start offsets both strictly increasing.  A new leader assigns ``(its epoch, its
LEO)`` before appending; a follower assigns the epoch of each batch it appends.
Assigning an epoch whose start offset is at or below an existing later entry drops
that entry (the log was truncated under it); truncating the log from either end
truncates the cache too.  :meth:`LeaderEpochCache.end_offset_for` answers
OffsetsForLeaderEpoch: where a given epoch ends in this log, which is how a
follower finds the point where its log and its leader's diverge.

Pure: no I/O.  The caller persists :meth:`entries` whenever a method returns True.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Final, NamedTuple

UNDEFINED_EPOCH: Final = -1
UNDEFINED_OFFSET: Final = -1


class EpochEntry(NamedTuple):
    epoch: int
    start_offset: int


UNDEFINED_ENTRY: Final = EpochEntry(UNDEFINED_EPOCH, UNDEFINED_OFFSET)


class LeaderEpochCache:
    """Epoch -> start offset, both strictly increasing (module docstring)."""

    __slots__ = ("_epochs", "_starts")

    def __init__(self, entries: Iterable[EpochEntry] = ()) -> None:
        """Raises ValueError when ``entries`` are not strictly increasing in both epoch
        and start offset, or hold a negative value (a checkpoint read from disk may be
        wrong: the caller rebuilds the cache from the log then)."""
        self._epochs: list[int] = []
        self._starts: list[int] = []
        for epoch, start_offset in entries:
            if epoch < 0 or start_offset < 0:
                raise ValueError(f"negative leader epoch entry ({epoch}, {start_offset})")
            if self._epochs and (epoch <= self._epochs[-1] or start_offset <= self._starts[-1]):
                raise ValueError(
                    f"leader epoch entry ({epoch}, {start_offset}) does not follow "
                    f"({self._epochs[-1]}, {self._starts[-1]})"
                )
            self._epochs.append(epoch)
            self._starts.append(start_offset)

    def entries(self) -> list[EpochEntry]:
        return [EpochEntry(e, s) for e, s in zip(self._epochs, self._starts, strict=True)]

    def __len__(self) -> int:
        return len(self._epochs)

    def __repr__(self) -> str:
        return f"LeaderEpochCache({self.entries()!r})"

    @property
    def latest_epoch(self) -> int:
        """The newest epoch in the log; UNDEFINED_EPOCH when the cache is empty."""
        return self._epochs[-1] if self._epochs else UNDEFINED_EPOCH

    @property
    def earliest_epoch(self) -> int:
        return self._epochs[0] if self._epochs else UNDEFINED_EPOCH

    def start_offset_of(self, epoch: int) -> int:
        """Where ``epoch`` starts; UNDEFINED_OFFSET when it is not in the cache."""
        index = bisect.bisect_left(self._epochs, epoch)
        if index < len(self._epochs) and self._epochs[index] == epoch:
            return self._starts[index]
        return UNDEFINED_OFFSET

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that ``epoch`` starts at ``start_offset``; True when the cache changed
        (persist it then).  An epoch below the latest is ignored (False); the latest
        epoch again at or after its start changes nothing.  Otherwise every entry
        whose epoch is >= ``epoch`` or whose start offset is >= ``start_offset`` is
        dropped (it conflicts) before the new entry goes last."""
        assert epoch >= 0 and start_offset >= 0, (epoch, start_offset)
        if self._epochs:
            latest = self._epochs[-1]
            if epoch < latest or (epoch == latest and start_offset >= self._starts[-1]):
                return False
        keep = bisect.bisect_left(self._starts, start_offset)
        keep = min(keep, bisect.bisect_left(self._epochs, epoch))
        del self._epochs[keep:]
        del self._starts[keep:]
        self._epochs.append(epoch)
        self._starts.append(start_offset)
        return True

    def end_offset_for(self, epoch: int, log_end_offset: int) -> EpochEntry:
        """OffsetsForLeaderEpoch (Kafka's endOffsetFor): ``(e, end)`` where ``e`` is the
        largest epoch in the cache <= ``epoch`` and ``end`` the start offset of the
        epoch after it, or ``log_end_offset`` when ``e`` is the latest epoch.  An
        ``epoch`` below the first entry gives ``(epoch, first start offset)``; an
        undefined epoch, an empty cache or an epoch above the latest gives
        (UNDEFINED_EPOCH, UNDEFINED_OFFSET)."""
        if epoch == UNDEFINED_EPOCH or not self._epochs:
            return UNDEFINED_ENTRY
        if epoch == self._epochs[-1]:
            return EpochEntry(epoch, log_end_offset)
        higher = bisect.bisect_right(self._epochs, epoch)
        if higher == len(self._epochs):
            return UNDEFINED_ENTRY
        if higher == 0:
            return EpochEntry(epoch, self._starts[0])
        return EpochEntry(self._epochs[higher - 1], self._starts[higher])

    def epoch_for_offset(self, offset: int) -> int:
        """The epoch of the record at ``offset`` (the entry starting at or before it);
        UNDEFINED_EPOCH when ``offset`` precedes every entry."""
        index = bisect.bisect_right(self._starts, offset)
        return self._epochs[index - 1] if index else UNDEFINED_EPOCH

    def truncate_from_end(self, end_offset: int) -> bool:
        """The log now ends at ``end_offset``: drop every entry starting at or after it.
        True when the cache changed."""
        keep = bisect.bisect_left(self._starts, end_offset)
        if keep == len(self._starts):
            return False
        del self._epochs[keep:]
        del self._starts[keep:]
        return True

    def truncate_from_start(self, start_offset: int) -> bool:
        """The log now starts at ``start_offset``: drop the entries wholly before it and
        move the entry covering it to start there.  True when the cache changed."""
        covering = bisect.bisect_right(self._starts, start_offset) - 1
        if covering < 0:
            return False
        changed = covering > 0 or self._starts[covering] != start_offset
        del self._epochs[:covering]
        del self._starts[:covering]
        self._starts[0] = start_offset
        return changed

    def check_invariants(self) -> None:
        assert len(self._epochs) == len(self._starts)
        for index in range(1, len(self._epochs)):
            assert self._epochs[index - 1] < self._epochs[index], self.entries()
            assert self._starts[index - 1] < self._starts[index], self.entries()
        assert all(epoch >= 0 for epoch in self._epochs)
        assert all(start >= 0 for start in self._starts)
