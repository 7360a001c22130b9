"""A follower's progress on one partition: truncate to where its log and its
leader's diverge, then fetch (replication.md 1.6, KIP-101 and KIP-279).

Two phases.  TRUNCATING: ask the leader (OffsetsForLeaderEpoch) where the epoch of
our last record ends in its log.  The answer ``(e, end)`` names the largest epoch
<= ours that the leader has.  When we have ``e`` too, truncate to
min(end, where ``e`` ends in our log, our LEO) and start fetching.  When we lack
``e`` (a fast double failover), truncate to where our largest epoch below ``e``
ends and ask again (the epoch we ask with strictly decreases, so this ends).
FETCHING: fetch from our LEO carrying the epoch of our last record
(``last_fetched_epoch``); an answer with a diverging epoch is handled like an
OffsetsForLeaderEpoch answer.  Every new leader epoch, even with the same
leader, starts over at TRUNCATING (KAFKA-7164).  The follower's HW is
min(the leader's HW, our LEO).

Pure: the methods return what the shell must do (:class:`FollowerStep`: truncate
the log and its epoch cache, set the HW) and what to send next
(:meth:`FollowerState.next_request`); the shell does the I/O.  The epoch cache is
the partition's own, read here and only changed by the shell's truncation.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from broker.replication.epochs import UNDEFINED_EPOCH, UNDEFINED_OFFSET, LeaderEpochCache


class FollowerPhase(enum.Enum):
    TRUNCATING = "truncating"
    FETCHING = "fetching"


class AskLeaderEpoch(NamedTuple):
    """Send OffsetsForLeaderEpoch(current_leader_epoch, leader_epoch)."""

    current_leader_epoch: int
    leader_epoch: int


class FetchFrom(NamedTuple):
    """Send a replica Fetch from ``fetch_offset``."""

    current_leader_epoch: int
    fetch_offset: int
    last_fetched_epoch: int


class FollowerStep(NamedTuple):
    """What the shell does after an answer, in this order.

    ``truncate_to``: truncate the log *and its epoch cache* to end there (even when
    it is the LEO: the cache may hold an empty epoch starting there).
    ``restart_at``: the leader's log starts after ours ends: drop our whole log and
    start it empty at this offset.  ``high_watermark``: set the follower's HW.
    """

    truncate_to: int | None = None
    restart_at: int | None = None
    high_watermark: int | None = None


NOTHING = FollowerStep()


class FollowerState:
    """One partition followed from ``leader_id`` in ``leader_epoch`` (module docstring)."""

    def __init__(self, *, leader_id: int, leader_epoch: int, epochs: LeaderEpochCache) -> None:
        self.leader_id = leader_id
        self.leader_epoch = leader_epoch
        self.epochs = epochs
        self.phase = FollowerPhase.TRUNCATING

    def new_leader(self, leader_id: int, leader_epoch: int) -> bool:
        """The metadata names a leader in ``leader_epoch``.  A newer epoch (same leader
        or not) starts over at truncation; True then.  An older or equal one changes
        nothing (stale metadata)."""
        if leader_epoch <= self.leader_epoch:
            return False
        self.leader_id = leader_id
        self.leader_epoch = leader_epoch
        self.phase = FollowerPhase.TRUNCATING
        return True

    def last_epoch(self, log_end_offset: int) -> int:
        """The epoch of our last record; UNDEFINED_EPOCH for an empty log."""
        if log_end_offset <= 0:
            return UNDEFINED_EPOCH
        return self.epochs.epoch_for_offset(log_end_offset - 1)

    def next_request(self, log_end_offset: int) -> AskLeaderEpoch | FetchFrom:
        """What to send the leader next, for our log ending at ``log_end_offset``.  A
        log with no epoch to ask about (empty) has nothing to truncate: it fetches."""
        last_epoch = self.last_epoch(log_end_offset)
        if self.phase is FollowerPhase.TRUNCATING:
            if last_epoch != UNDEFINED_EPOCH:
                return AskLeaderEpoch(self.leader_epoch, last_epoch)
            self.phase = FollowerPhase.FETCHING
        return FetchFrom(self.leader_epoch, log_end_offset, last_epoch)

    def on_leader_epoch_answer(
        self, leader_epoch: int, end_offset: int, log_end_offset: int, high_watermark: int
    ) -> FollowerStep:
        """The leader's OffsetsForLeaderEpoch answer ``(leader_epoch, end_offset)`` for
        the epoch we asked about; our log ends at ``log_end_offset`` with HW
        ``high_watermark``.  Errors are the shell's (back off, wait for metadata)."""
        if self.phase is not FollowerPhase.TRUNCATING:
            return NOTHING  # a late or duplicated answer
        return self._truncation(leader_epoch, end_offset, log_end_offset, high_watermark)

    def on_diverging_epoch(
        self, leader_epoch: int, end_offset: int, log_end_offset: int, high_watermark: int
    ) -> FollowerStep:
        """A fetch answer saying our log diverges after ``leader_epoch`` ends at
        ``end_offset`` in the leader's log (no records came with it)."""
        if self.phase is not FollowerPhase.FETCHING:
            return NOTHING
        return self._truncation(leader_epoch, end_offset, log_end_offset, high_watermark)

    def on_fetch_answer(self, leader_high_watermark: int, log_end_offset: int) -> FollowerStep:
        """A fetch answer's records are appended and our log now ends at
        ``log_end_offset``: the follower HW to set."""
        return FollowerStep(high_watermark=min(leader_high_watermark, log_end_offset))

    def on_offset_out_of_range(
        self, leader_log_start_offset: int, leader_log_end_offset: int, log_end_offset: int
    ) -> FollowerStep:
        """The leader answered OFFSET_OUT_OF_RANGE to a fetch from ``log_end_offset``.
        Below the leader's log start (retention ran ahead of us): drop our log and
        restart at the leader's start.  Past the leader's end: find the divergence by
        epoch again."""
        if log_end_offset < leader_log_start_offset:
            self.phase = FollowerPhase.FETCHING
            return FollowerStep(
                restart_at=leader_log_start_offset, high_watermark=leader_log_start_offset
            )
        if log_end_offset > leader_log_end_offset:
            self.phase = FollowerPhase.TRUNCATING
        return NOTHING

    def _truncation(
        self, leader_epoch: int, end_offset: int, log_end_offset: int, high_watermark: int
    ) -> FollowerStep:
        if leader_epoch == UNDEFINED_EPOCH or end_offset == UNDEFINED_OFFSET:
            # The leader has no epoch at or below ours (replication.md 1.6): our HW is
            # the one offset known to be committed.
            self.phase = FollowerPhase.FETCHING
            return FollowerStep(truncate_to=min(high_watermark, log_end_offset))
        our_epoch, our_end = self.epochs.end_offset_for(leader_epoch, log_end_offset)
        if our_epoch == UNDEFINED_EPOCH:
            # Every epoch of ours is above the leader's: keep what is below its end.
            self.phase = FollowerPhase.FETCHING
            return FollowerStep(truncate_to=min(end_offset, log_end_offset))
        if our_epoch != leader_epoch:
            # We lack the leader's epoch: cut back to our largest epoch below it and
            # ask again (KIP-279).
            self.phase = FollowerPhase.TRUNCATING
            return FollowerStep(truncate_to=min(our_end, log_end_offset))
        self.phase = FollowerPhase.FETCHING
        return FollowerStep(truncate_to=min(end_offset, our_end, log_end_offset))

    def check_invariants(self) -> None:
        assert self.leader_epoch >= 0
        assert isinstance(self.phase, FollowerPhase)
        self.epochs.check_invariants()
