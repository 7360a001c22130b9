"""The leader-epoch cache against Kafka's examples and against naive models."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.replication.epochs import (
    UNDEFINED_ENTRY,
    UNDEFINED_EPOCH,
    EpochEntry,
    LeaderEpochCache,
)


def test_constructor_refuses_non_monotonic_entries() -> None:
    """Proves a bad checkpoint is refused, not trusted."""
    with pytest.raises(ValueError, match="does not follow"):
        LeaderEpochCache([EpochEntry(1, 10), EpochEntry(1, 20)])
    with pytest.raises(ValueError, match="does not follow"):
        LeaderEpochCache([EpochEntry(1, 10), EpochEntry(2, 10)])
    with pytest.raises(ValueError, match="negative"):
        LeaderEpochCache([EpochEntry(-1, 0)])


def test_assign_keeps_epochs_and_offsets_increasing() -> None:
    """Proves a lower epoch is ignored and a conflicting start drops later entries."""
    cache = LeaderEpochCache()
    assert cache.latest_epoch == UNDEFINED_EPOCH
    assert cache.assign(0, 0)
    assert not cache.assign(0, 5)
    assert cache.assign(2, 10)
    assert not cache.assign(1, 12)
    assert cache.assign(3, 10)
    assert cache.entries() == [EpochEntry(0, 0), EpochEntry(3, 10)]
    assert cache.assign(4, 3)
    assert cache.entries() == [EpochEntry(0, 0), EpochEntry(4, 3)]
    cache.check_invariants()


def test_end_offset_for_follows_kafka() -> None:
    """Proves OffsetsForLeaderEpoch answers as replication.md 1.6 says."""
    cache = LeaderEpochCache([EpochEntry(2, 5), EpochEntry(4, 10), EpochEntry(7, 20)])
    assert cache.end_offset_for(7, 25) == (7, 25)
    assert cache.end_offset_for(4, 25) == (4, 20)
    assert cache.end_offset_for(5, 25) == (4, 20)
    assert cache.end_offset_for(1, 25) == (1, 5)
    assert cache.end_offset_for(8, 25) == UNDEFINED_ENTRY
    assert cache.end_offset_for(UNDEFINED_EPOCH, 25) == UNDEFINED_ENTRY
    assert LeaderEpochCache().end_offset_for(3, 0) == UNDEFINED_ENTRY


def test_truncation_from_both_ends() -> None:
    """Proves truncation drops whole entries and moves the first one's start."""
    cache = LeaderEpochCache([EpochEntry(2, 5), EpochEntry(4, 10), EpochEntry(7, 20)])
    assert not cache.truncate_from_end(30)
    assert cache.truncate_from_end(10)
    assert cache.entries() == [EpochEntry(2, 5)]
    cache = LeaderEpochCache([EpochEntry(2, 5), EpochEntry(4, 10), EpochEntry(7, 20)])
    assert not cache.truncate_from_start(3)
    assert cache.truncate_from_start(12)
    assert cache.entries() == [EpochEntry(4, 12), EpochEntry(7, 20)]
    assert not cache.truncate_from_start(12)
    assert cache.epoch_for_offset(11) == UNDEFINED_EPOCH
    assert cache.epoch_for_offset(19) == 4
    assert cache.epoch_for_offset(99) == 7


# -- a log model: the cache must equal the epoch runs of the log it describes ----------

Operation = tuple[str, int, int]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3), st.integers(1, 4)),
        st.tuples(st.just("truncate_end"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("truncate_start"), st.integers(0, 40), st.just(0)),
    ),
    max_size=40,
)


def runs(log_start: int, epochs: list[int]) -> list[EpochEntry]:
    entries: list[EpochEntry] = []
    for index, epoch in enumerate(epochs):
        if not entries or entries[-1].epoch != epoch:
            entries.append(EpochEntry(epoch, log_start + index))
    return entries


def naive_end_offset(log_start: int, epochs: list[int], epoch: int) -> EpochEntry:
    entries = runs(log_start, epochs)
    if epoch == UNDEFINED_EPOCH or not entries or epoch > entries[-1].epoch:
        return UNDEFINED_ENTRY
    if epoch == entries[-1].epoch:
        return EpochEntry(epoch, log_start + len(epochs))
    below = [entry for entry in entries if entry.epoch <= epoch]
    above = [entry for entry in entries if entry.epoch > epoch]
    return EpochEntry(below[-1].epoch if below else epoch, above[0].start_offset)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(-1, 20))
def test_cache_matches_the_epoch_runs_of_a_log(ops: list[Operation], query: int) -> None:
    """Proves assign/truncate keep the cache equal to the epoch runs of the log it
    describes, and end_offset_for equals a naive scan of that log."""
    cache = LeaderEpochCache()
    log_start = 0
    epochs: list[int] = []  # the epoch of each record from log_start on
    for name, first, second in ops:
        if name == "append":
            epoch = (epochs[-1] if epochs else 0) + first
            for _ in range(second):
                cache.assign(epoch, log_start + len(epochs))
                epochs.append(epoch)
        elif name == "truncate_end":
            end = max(first, log_start)
            del epochs[end - log_start :]
            cache.truncate_from_end(end)
        elif epochs and first > log_start:
            start = min(first, log_start + len(epochs) - 1)
            del epochs[: start - log_start]
            log_start = start
            cache.truncate_from_start(start)
        cache.check_invariants()
        assert cache.entries() == runs(log_start, epochs)
        leo = log_start + len(epochs)
        assert cache.end_offset_for(query, leo) == naive_end_offset(log_start, epochs, query)
        for offset in range(log_start, leo):
            assert cache.epoch_for_offset(offset) == epochs[offset - log_start]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 30)), max_size=30))
def test_assign_matches_a_naive_list(assignments: list[tuple[int, int]]) -> None:
    """Proves assign (empty epochs of leaders that appended nothing included) equals a
    naive filter-then-append model."""
    cache = LeaderEpochCache()
    model: list[EpochEntry] = []
    for epoch, start in assignments:
        latest = model[-1] if model else None
        ignored = latest is not None and (
            epoch < latest.epoch or (epoch == latest.epoch and start >= latest.start_offset)
        )
        if not ignored:
            model = [e for e in model if e.epoch < epoch and e.start_offset < start]
            model.append(EpochEntry(epoch, start))
        assert cache.assign(epoch, start) == (not ignored)
        cache.check_invariants()
        assert cache.entries() == model
        assert LeaderEpochCache(cache.entries()).entries() == model
