"""A follower's truncate-then-fetch state machine against a leader's epoch cache."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.replication.epochs import UNDEFINED_EPOCH, LeaderEpochCache
from broker.replication.follower_state import (
    AskLeaderEpoch,
    FetchFrom,
    FollowerPhase,
    FollowerState,
    FollowerStep,
)


def cache_of(epochs: list[int]) -> LeaderEpochCache:
    cache = LeaderEpochCache()
    for offset, epoch in enumerate(epochs):
        cache.assign(epoch, offset)
    return cache


def converge(follower_log: list[int], leader_log: list[int], leader_epoch: int) -> list[int]:
    """Run the follower against the leader until it fetches without diverging; the
    follower's log afterwards (the epoch of each record)."""
    leader_cache = cache_of(leader_log)
    leader_cache.assign(leader_epoch, len(leader_log))
    cache = cache_of(follower_log)
    log = list(follower_log)
    state = FollowerState(leader_id=1, leader_epoch=leader_epoch, epochs=cache)
    for _ in range(2 * len(follower_log) + 4):
        request = state.next_request(len(log))
        if isinstance(request, AskLeaderEpoch):
            assert request.leader_epoch <= leader_epoch
            epoch, end = leader_cache.end_offset_for(request.leader_epoch, len(leader_log))
            step = state.on_leader_epoch_answer(epoch, end, len(log), 0)
        else:
            assert isinstance(request, FetchFrom)
            epoch, end = leader_cache.end_offset_for(request.last_fetched_epoch, len(leader_log))
            diverges = request.last_fetched_epoch != UNDEFINED_EPOCH and (
                epoch < request.last_fetched_epoch or end < request.fetch_offset
            )
            if not diverges:
                return log
            step = state.on_diverging_epoch(epoch, end, len(log), 0)
        if step.truncate_to is not None:
            assert step.truncate_to <= len(log)
            del log[step.truncate_to :]
            cache.truncate_from_end(step.truncate_to)
        state.check_invariants()
    raise AssertionError("the follower did not converge")


def test_truncates_a_tail_the_leader_never_had() -> None:
    """Proves a follower cuts records of its epoch the leader lacks (KIP-101)."""
    assert converge([0, 0, 1, 1, 1], [0, 0, 1, 2, 2], leader_epoch=3) == [0, 0, 1]


def test_fast_double_failover_asks_again() -> None:
    """Proves the KIP-279 loop: the leader names an epoch the follower lacks, so it
    truncates to its largest epoch below and asks again."""
    cache = cache_of([0, 0, 0, 0, 0, 2, 2, 2, 2, 2])
    state = FollowerState(leader_id=1, leader_epoch=4, epochs=cache)
    assert state.next_request(10) == AskLeaderEpoch(4, 2)
    step = state.on_leader_epoch_answer(1, 8, 10, 0)
    assert step == FollowerStep(truncate_to=5)
    assert state.phase is FollowerPhase.TRUNCATING
    cache.truncate_from_end(5)
    assert state.next_request(5) == AskLeaderEpoch(4, 0)
    assert state.on_leader_epoch_answer(0, 5, 5, 0) == FollowerStep(truncate_to=5)
    assert state.next_request(5) == FetchFrom(4, 5, 0)


def test_every_new_epoch_truncates_even_with_the_same_leader() -> None:
    """Proves KAFKA-7164: a new epoch of the same leader sends the follower back to
    truncation; a stale epoch does not."""
    state = FollowerState(leader_id=1, leader_epoch=2, epochs=cache_of([0, 1]))
    state.on_leader_epoch_answer(1, 2, 2, 0)
    assert state.phase is FollowerPhase.FETCHING
    assert not state.new_leader(1, 2)
    assert state.new_leader(1, 3)
    assert state.phase is FollowerPhase.TRUNCATING


def test_empty_log_fetches_at_once_and_high_watermark_is_capped() -> None:
    """Proves an empty follower skips truncation and its HW never passes its LEO."""
    state = FollowerState(leader_id=1, leader_epoch=0, epochs=LeaderEpochCache())
    assert state.next_request(0) == FetchFrom(0, 0, UNDEFINED_EPOCH)
    assert state.on_fetch_answer(50, 20).high_watermark == 20
    assert state.on_fetch_answer(10, 20).high_watermark == 10


def test_offset_out_of_range_below_the_leader_start_restarts_there() -> None:
    """Proves a follower behind the leader's log start drops its log and restarts."""
    state = FollowerState(leader_id=1, leader_epoch=2, epochs=cache_of([0, 1]))
    step = state.on_offset_out_of_range(100, 150, 2)
    assert step.restart_at == 100 and step.high_watermark == 100
    state = FollowerState(leader_id=1, leader_epoch=2, epochs=cache_of([0, 1]))
    state.phase = FollowerPhase.FETCHING
    assert state.on_offset_out_of_range(0, 1, 2) == FollowerStep()
    assert state.phase is FollowerPhase.TRUNCATING


def test_leader_without_an_epoch_truncates_to_the_high_watermark() -> None:
    """Proves an undefined answer falls back to the follower's HW."""
    state = FollowerState(leader_id=1, leader_epoch=2, epochs=cache_of([0, 1, 1]))
    assert state.on_leader_epoch_answer(UNDEFINED_EPOCH, -1, 3, 1) == FollowerStep(truncate_to=1)


@st.composite
def diverged_logs(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    """A common prefix, then suffixes in disjoint epochs (one leader per epoch), one of
    which may first extend the prefix's last epoch."""
    common = sorted(draw(st.lists(st.integers(0, 3), max_size=8)))
    last = common[-1] if common else 0
    later = draw(st.lists(st.integers(last + 1, last + 8), unique=True, max_size=6))
    owners = draw(st.lists(st.booleans(), min_size=len(later), max_size=len(later)))
    leader_epochs = sorted(e for e, mine in zip(later, owners, strict=True) if mine)
    follower_epochs = sorted(e for e, mine in zip(later, owners, strict=True) if not mine)

    def suffix(epochs: list[int]) -> list[int]:
        return [e for e in epochs for _ in range(draw(st.integers(1, 3)))]

    extend = [last] * draw(st.integers(0, 2)) if common else []
    leader_extends = draw(st.booleans())
    leader = common + (extend if leader_extends else []) + suffix(leader_epochs)
    follower = common + ([] if leader_extends else extend) + suffix(follower_epochs)
    return follower, leader, max([last, *later]) + 1


@settings(max_examples=400, deadline=None)
@given(diverged_logs())
def test_follower_truncates_exactly_to_the_divergence(
    logs: tuple[list[int], list[int], int],
) -> None:
    """Proves that for any two logs with a common prefix the follower ends as the longest
    prefix it shares with the leader: nothing divergent kept, nothing shared cut."""
    follower, leader, leader_epoch = logs
    result = converge(follower, leader, leader_epoch)
    shared = 0
    while shared < min(len(follower), len(leader)) and follower[shared] == leader[shared]:
        shared += 1
    assert result == follower[:shared]
    assert leader[: len(result)] == result
