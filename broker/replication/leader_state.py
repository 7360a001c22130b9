"""What a partition's leader knows of its followers, and what follows from it: the
high watermark, ISR changes to propose, and the outcome of an ``acks=all`` write.

Follower progress (replication.md 1.2 step 4).  A follower's fetch at
``fetch_offset`` says its log ends there (its LEO).  Its *last caught-up time* is
the time of this fetch when ``fetch_offset`` reached the leader's LEO, else the
time of its previous fetch when ``fetch_offset`` reached the leader's LEO as it
was at that previous fetch (it was caught up then), else it stays.

High watermark (1.3).  The smallest LEO over the leader, the followers in the
*maximal* ISR, and the followers that are caught up but not yet in it (so a
catching-up follower does not chase the HW forever).  It does not move at all
while the committed ISR is smaller than the effective min ISR (strict min ISR,
KIP-966), and never decreases.  An ISR follower's LEO is unknown until its first
fetch in this epoch, which holds the HW where it is.

ISR changes (1.4).  The leader proposes at most one change at a time; the shell
writes it to the metadata store (a CAS) and reports :meth:`LeaderState.isr_committed`
or :meth:`LeaderState.isr_rejected`.  A shrink removes a follower whose LEO differs
from the leader's and that has not caught up for ``lag_time_max_ms``; an expansion
adds a follower whose LEO reached the HW and the epoch's start (LESO) and that has
fetched in this epoch.  Until committed, an expansion counts in the maximal ISR at
once and a shrink does not: the HW never advances on a set smaller than what the
controller may elect from.

Pure: no I/O; the clock comes in as ``now_ms`` arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Literal

from client.errors import ErrorCode

WAIT: Final[Literal["wait"]] = "wait"
DEFAULT_LAG_TIME_MAX_MS: Final = 10_000
# A follower whose LEO is not known yet (no fetch in this epoch).
UNKNOWN_OFFSET: Final = -1
# A fetch that does not say which incarnation of its broker sent it.
UNKNOWN_BROKER_EPOCH: Final = -1


class _Follower:
    __slots__ = (
        "broker_epoch",
        "fetched_in_epoch",
        "last_caught_up_ms",
        "last_fetch_leader_end_offset",
        "last_fetch_ms",
        "log_end_offset",
    )

    def __init__(self, last_caught_up_ms: int | None) -> None:
        self.log_end_offset = UNKNOWN_OFFSET
        self.last_caught_up_ms = last_caught_up_ms
        self.last_fetch_ms: int | None = None
        self.last_fetch_leader_end_offset = UNKNOWN_OFFSET
        self.fetched_in_epoch = False
        self.broker_epoch = UNKNOWN_BROKER_EPOCH


class LeaderState:
    """The leader's side of one partition in one leader epoch (module docstring)."""

    def __init__(
        self,
        *,
        node_id: int,
        leader_epoch: int,
        replicas: Sequence[int],
        isr: Sequence[int],
        log_end_offset: int,
        high_watermark: int,
        epoch_start_offset: int,
        now_ms: int,
        lag_time_max_ms: int = DEFAULT_LAG_TIME_MAX_MS,
        min_insync_replicas: int = 1,
    ) -> None:
        assert node_id in replicas and node_id in isr, (node_id, replicas, isr)
        assert 0 <= high_watermark <= log_end_offset, (high_watermark, log_end_offset)
        assert lag_time_max_ms > 0 and min_insync_replicas >= 1
        self.node_id = node_id
        self.leader_epoch = leader_epoch
        self.replicas = tuple(replicas)
        self.isr = tuple(isr)
        self.log_end_offset = log_end_offset
        self.high_watermark = high_watermark
        self.epoch_start_offset = epoch_start_offset
        self.lag_time_max_ms = lag_time_max_ms
        # KIP-966's effective min ISR: a topic asking for more than it has replicas
        # would never commit anything.
        self.min_insync_replicas = min(min_insync_replicas, len(self.replicas))
        self.pending_isr: tuple[int, ...] | None = None
        self._followers = {
            replica: _Follower(now_ms if replica in self.isr else None)
            for replica in self.replicas
            if replica != node_id
        }

    # -- what the shell reads ---------------------------------------------------------

    def maximal_isr(self) -> tuple[int, ...]:
        """The committed ISR plus the members of an expansion in flight."""
        pending = self.pending_isr
        if pending is None or len(pending) < len(self.isr):
            return self.isr
        return tuple(r for r in self.replicas if r in self.isr or r in pending)

    def follower_log_end_offset(self, replica: int) -> int:
        """A follower's LEO as last fetched in this epoch; UNKNOWN_OFFSET before that."""
        return self._followers[replica].log_end_offset

    @property
    def high_watermark_known(self) -> bool:
        """Whether the HW reached this epoch's start: before that it may be stale (a new
        leader's), and ListOffsets answers OFFSET_NOT_AVAILABLE."""
        return self.high_watermark >= self.epoch_start_offset

    # -- events -----------------------------------------------------------------------

    def on_append(self, log_end_offset: int) -> bool:
        """The leader's log now ends at ``log_end_offset``.  True when the HW advanced."""
        assert log_end_offset >= self.log_end_offset, (log_end_offset, self.log_end_offset)
        self.log_end_offset = log_end_offset
        return self._maybe_advance_high_watermark(None)

    def on_follower_fetch(
        self,
        replica: int,
        fetch_offset: int,
        now_ms: int,
        broker_epoch: int = UNKNOWN_BROKER_EPOCH,
    ) -> bool:
        """A valid fetch from follower ``replica`` at ``fetch_offset`` (the shell has
        already answered a stale epoch, a non-replica, a diverging epoch and an
        offset out of range), sent by the incarnation ``broker_epoch`` of its broker
        (its registration's revision).  A fetch from an earlier incarnation than one
        already seen is ignored; one from a later incarnation forgets what the
        earlier one said (KIP-903: it may have lost its tail since).  True when the HW
        advanced."""
        follower = self._followers[replica]
        if broker_epoch != follower.broker_epoch:
            if broker_epoch < follower.broker_epoch:
                return False
            if follower.broker_epoch != UNKNOWN_BROKER_EPOCH:
                in_isr = replica in self.isr
                follower = self._followers[replica] = _Follower(now_ms if in_isr else None)
            follower.broker_epoch = broker_epoch
        assert 0 <= fetch_offset <= self.log_end_offset, (fetch_offset, self.log_end_offset)
        if fetch_offset >= self.log_end_offset:
            follower.last_caught_up_ms = now_ms
        elif (
            follower.last_fetch_ms is not None
            and fetch_offset >= follower.last_fetch_leader_end_offset
        ):
            follower.last_caught_up_ms = follower.last_fetch_ms
        follower.last_fetch_leader_end_offset = self.log_end_offset
        follower.last_fetch_ms = now_ms
        follower.log_end_offset = fetch_offset
        follower.fetched_in_epoch = True
        return self._maybe_advance_high_watermark(now_ms)

    def isr_proposal(
        self, now_ms: int, broker_epochs: Mapping[int, int] | None = None
    ) -> tuple[int, ...] | None:
        """An ISR change to write, or None (none due, or one already in flight).  A
        returned change is in flight until :meth:`isr_committed` / :meth:`isr_rejected`.
        With ``broker_epochs`` (the live brokers' registrations), only a follower whose
        fetches came from its broker's current registration may join (KIP-903 and
        KIP-841: not a dead broker, nor what an earlier incarnation fetched)."""
        if self.pending_isr is not None:
            return None
        out_of_sync = {
            replica
            for replica in self.isr
            if replica != self.node_id and self._out_of_sync(replica, now_ms)
        }
        if out_of_sync:
            proposal = tuple(r for r in self.isr if r not in out_of_sync)
        else:
            joining = {
                replica
                for replica, follower in self._followers.items()
                if replica not in self.isr
                and follower.fetched_in_epoch
                and (
                    broker_epochs is None
                    or broker_epochs.get(replica, UNKNOWN_BROKER_EPOCH) == follower.broker_epoch
                )
                and follower.log_end_offset >= self.high_watermark
                and follower.log_end_offset >= self.epoch_start_offset
            }
            if not joining:
                return None
            proposal = tuple(r for r in self.replicas if r in self.isr or r in joining)
        self.pending_isr = proposal
        return proposal

    def isr_committed(self, isr: Sequence[int]) -> bool:
        """``isr`` is now this partition's ISR in the metadata store (this leader's own
        write or the controller's, same leader epoch); it ends any change in flight.
        True when the HW advanced."""
        assert self.node_id in isr, (self.node_id, isr)
        self.isr = tuple(r for r in self.replicas if r in isr)
        self.pending_isr = None
        return self._maybe_advance_high_watermark(None)

    def isr_rejected(self) -> None:
        """The change in flight was not written (a conflict or an error): forget it."""
        self.pending_isr = None

    # -- acks=all ---------------------------------------------------------------------

    def acks_all_refusal(self) -> ErrorCode | None:
        """NOT_ENOUGH_REPLICAS when an acks=all write must be refused before appending."""
        if len(self.isr) < self.min_insync_replicas:
            return ErrorCode.NOT_ENOUGH_REPLICAS
        return None

    def acks_all_outcome(self, end_offset: int) -> ErrorCode | Literal["wait"] | None:
        """For an acks=all write ending at ``end_offset`` (its last offset + 1): None when
        committed, NOT_ENOUGH_REPLICAS_AFTER_APPEND when the HW reached it with fewer
        in-sync replicas than the min ISR, WAIT otherwise."""
        if self.high_watermark < end_offset:
            return WAIT
        if len(self.maximal_isr()) < self.min_insync_replicas:
            return ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND
        return None

    # -- internals --------------------------------------------------------------------

    def _out_of_sync(self, replica: int, now_ms: int) -> bool:
        follower = self._followers[replica]
        if follower.log_end_offset == self.log_end_offset:
            return False
        caught_up = follower.last_caught_up_ms
        return caught_up is None or now_ms - caught_up > self.lag_time_max_ms

    def _caught_up(self, replica: int, now_ms: int) -> bool:
        follower = self._followers[replica]
        if follower.log_end_offset == self.log_end_offset:
            return True
        caught_up = follower.last_caught_up_ms
        return caught_up is not None and now_ms - caught_up <= self.lag_time_max_ms

    def _maybe_advance_high_watermark(self, now_ms: int | None) -> bool:
        if len(self.isr) < self.min_insync_replicas:
            return False
        maximal = self.maximal_isr()
        new_high_watermark = self.log_end_offset
        for replica, follower in self._followers.items():
            if follower.log_end_offset >= new_high_watermark:
                continue
            waited_for = replica in maximal or (
                now_ms is not None
                and follower.fetched_in_epoch
                and self._caught_up(replica, now_ms)
            )
            if waited_for:
                new_high_watermark = follower.log_end_offset
        if new_high_watermark <= self.high_watermark:
            return False
        self.high_watermark = new_high_watermark
        return True

    def check_invariants(self) -> None:
        assert 0 <= self.high_watermark <= self.log_end_offset
        assert self.node_id in self.isr
        assert set(self.isr) <= set(self.replicas)
        if self.pending_isr is not None:
            assert self.node_id in self.pending_isr
            assert set(self.pending_isr) <= set(self.replicas)
        for follower in self._followers.values():
            assert follower.log_end_offset <= self.log_end_offset
