"""A partition replica's offsets, leader epoch and producer state, without I/O.

:class:`PartitionState` holds the numbers replication reasons about; the trio
shell (broker/partition.py) does the I/O and reports to it what the log did:

- ``log_start_offset`` and ``log_end_offset``: the log's, as of its last append,
  retention pass or truncation (the log is the truth; the shell updates these
  right after each change and its ``check_invariants`` compares them);
- ``high_watermark``: consumers see the offsets below it.  It moves forward only
  through :meth:`advance_high_watermark` and back only when a truncation cuts
  the log below it.  Who advances it is the shell's policy: with one replica,
  everything appended is committed, so the shell advances it to the log end
  after each append;
- ``leader_epoch``: stamped into every appended batch; it never goes back;
- ``epochs``: the leader-epoch cache (broker/replication/epochs.py: which epoch
  starts at which offset), truncated with the log from either end;
  ``epochs_dirty`` says it changed since the shell last persisted it;
- ``truncations``: how many truncations this replica went through, so a position
  remembered before one (a connection's fetch position) can be recognized as
  stale;
- ``producers``: the idempotent-produce table (broker/producer_state.py); after
  a truncation (:meth:`truncated`) the shell rebuilds the producers it names
  from the log.

Invariants (:meth:`check_invariants`): 0 <= log start <= high watermark <= log
end; every remembered producer batch lies below the log end; the epoch cache is
monotonic and no entry starts past the log end.  One owner: the
partition, on the event-loop thread.
"""

from __future__ import annotations

from broker.producer_state import ProducerStateTable
from broker.replication.epochs import LeaderEpochCache


class PartitionState:
    """See the module docstring."""

    __slots__ = (
        "epochs",
        "epochs_dirty",
        "high_watermark",
        "leader_epoch",
        "log_end_offset",
        "log_start_offset",
        "producers",
        "truncations",
    )

    def __init__(self, log_start_offset: int, log_end_offset: int, leader_epoch: int = 0) -> None:
        """A replica whose log spans ``[log_start_offset, log_end_offset)``; the
        high watermark starts at the log start (nothing is known committed until
        the shell advances it)."""
        assert 0 <= log_start_offset <= log_end_offset and leader_epoch >= 0
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset
        self.high_watermark = log_start_offset
        self.leader_epoch = leader_epoch
        self.truncations = 0
        self.producers = ProducerStateTable()
        self.epochs = LeaderEpochCache()
        self.epochs_dirty = False

    def advance_high_watermark(self, offset: int) -> None:
        """Move the high watermark up to ``offset`` (at most the log end; an
        offset at or below it changes nothing)."""
        assert offset <= self.log_end_offset, (offset, self.log_end_offset)
        if offset > self.high_watermark:
            self.high_watermark = offset

    def set_high_watermark(self, offset: int) -> None:
        """A follower's high watermark, learnt from its leader (min of the leader's
        and its own log end): it may go back across a leader change.  Clamped into
        [log start, log end]."""
        self.high_watermark = min(max(offset, self.log_start_offset), self.log_end_offset)

    def assign_epoch(self, epoch: int, start_offset: int) -> bool:
        """Record in the epoch cache that ``epoch`` starts at ``start_offset`` (at most
        the log end: a new leader's epoch starts at its log end).  True when the
        cache changed (then ``epochs_dirty``)."""
        assert start_offset <= self.log_end_offset, (start_offset, self.log_end_offset)
        changed = self.epochs.assign(epoch, start_offset)
        self.epochs_dirty = self.epochs_dirty or changed
        return changed

    def set_leader_epoch(self, leader_epoch: int) -> None:
        """Adopt a leader epoch; epochs never go back (the caller refuses a stale
        one before it gets here)."""
        assert leader_epoch >= self.leader_epoch, (leader_epoch, self.leader_epoch)
        self.leader_epoch = leader_epoch

    def log_start_advanced(self, log_start_offset: int) -> None:
        """Retention dropped the log's oldest segments: it now starts at
        ``log_start_offset`` (the high watermark moves up with it if it lagged, and
        the producers whose records all went are forgotten)."""
        assert self.log_start_offset <= log_start_offset <= self.log_end_offset, (
            self.log_start_offset,
            log_start_offset,
            self.log_end_offset,
        )
        self.log_start_offset = log_start_offset
        self.high_watermark = max(self.high_watermark, log_start_offset)
        self.producers.forget_before(log_start_offset)
        if self.epochs.truncate_from_start(log_start_offset):
            self.epochs_dirty = True

    def truncated(self, log_end_offset: int) -> list[int]:
        """The log was cut to end at ``log_end_offset``: clamp the high watermark,
        drop the epochs starting at or past the new end, forget the producers with
        a batch past it and count the truncation.  Returns the forgotten producer ids, for the shell to rebuild
        from the log (see ProducerStateTable.truncate)."""
        assert self.log_start_offset <= log_end_offset <= self.log_end_offset, (
            self.log_start_offset,
            log_end_offset,
            self.log_end_offset,
        )
        self.log_end_offset = log_end_offset
        self.high_watermark = min(self.high_watermark, log_end_offset)
        self.truncations += 1
        if self.epochs.truncate_from_end(log_end_offset):
            self.epochs_dirty = True
        return self.producers.truncate(log_end_offset)

    def restarted(self, offset: int) -> None:
        """The log was emptied and starts at ``offset`` now (a follower behind its
        leader's log start): every offset, the producers and the epochs start over;
        the truncation is counted."""
        assert offset >= 0, offset
        self.log_start_offset = self.log_end_offset = self.high_watermark = offset
        self.producers = ProducerStateTable()
        self.epochs = LeaderEpochCache()
        self.epochs_dirty = True
        self.truncations += 1

    def check_invariants(self) -> None:
        """See the module docstring (walks the producer table: for tests)."""
        assert 0 <= self.log_start_offset <= self.high_watermark <= self.log_end_offset, (
            self.log_start_offset,
            self.high_watermark,
            self.log_end_offset,
        )
        assert self.leader_epoch >= 0 and self.truncations >= 0
        self.producers.check_invariants(self.log_end_offset)
        self.epochs.check_invariants()
        entries = self.epochs.entries()
        assert not entries or entries[-1].start_offset <= self.log_end_offset, (
            entries,
            self.log_end_offset,
        )
