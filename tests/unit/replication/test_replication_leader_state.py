"""The leader's state machine: HW advance, caught-up tracking, ISR changes, acks=all."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.replication.leader_state import WAIT, LeaderState
from client.errors import ErrorCode

LAG_MS = 1_000


def leader(
    isr: tuple[int, ...] = (0, 1, 2),
    *,
    log_end_offset: int = 10,
    high_watermark: int = 0,
    min_isr: int = 1,
    replicas: tuple[int, ...] = (0, 1, 2),
) -> LeaderState:
    return LeaderState(
        node_id=0,
        leader_epoch=3,
        replicas=replicas,
        isr=isr,
        log_end_offset=log_end_offset,
        high_watermark=high_watermark,
        epoch_start_offset=log_end_offset,
        now_ms=0,
        lag_time_max_ms=LAG_MS,
        min_insync_replicas=min_isr,
    )


def test_high_watermark_is_the_smallest_isr_log_end_offset() -> None:
    """Proves the HW waits for every ISR member and only ever increases."""
    state = leader()
    assert not state.on_follower_fetch(1, 10, now_ms=1)
    assert state.high_watermark == 0  # replica 2's LEO is not known yet
    assert state.on_follower_fetch(2, 7, now_ms=1)
    assert state.high_watermark == 7
    assert state.on_follower_fetch(2, 10, now_ms=2)
    assert state.high_watermark == 10
    assert not state.on_append(15)
    assert not state.on_follower_fetch(1, 15, now_ms=3)
    assert state.on_follower_fetch(2, 12, now_ms=3)
    assert state.high_watermark == 12
    state.check_invariants()


def test_single_member_isr_advances_on_append() -> None:
    """Proves an ISR of the leader alone commits on append."""
    state = leader(isr=(0,))
    assert state.on_append(11)
    assert state.high_watermark == 11


def test_strict_min_isr_freezes_the_high_watermark() -> None:
    """Proves the HW does not move while the ISR is below min ISR (KIP-966), and acks=all
    is refused before appending."""
    state = leader(isr=(0,), min_isr=2)
    assert not state.on_append(12)
    assert state.high_watermark == 0
    assert state.acks_all_refusal() == ErrorCode.NOT_ENOUGH_REPLICAS
    state.on_follower_fetch(1, 12, now_ms=1)
    assert state.isr_proposal(now_ms=1) == (0, 1)
    assert state.acks_all_refusal() == ErrorCode.NOT_ENOUGH_REPLICAS
    assert state.isr_committed((0, 1))
    assert state.high_watermark == 12
    assert state.acks_all_refusal() is None
    assert state.acks_all_outcome(12) is None
    assert state.acks_all_outcome(13) == WAIT


def test_effective_min_isr_is_capped_by_the_replicas() -> None:
    """Proves a min ISR above the replication factor does not block a partition forever."""
    state = leader(isr=(0,), replicas=(0,), min_isr=2)
    assert state.acks_all_refusal() is None
    assert state.on_append(11)


def test_stuck_follower_is_shrunk_after_the_lag_time() -> None:
    """Proves a follower that stops fetching leaves the ISR only after lag_time_max_ms,
    and only once the shrink is committed does the HW stop waiting for it."""
    state = leader()
    state.on_follower_fetch(1, 10, now_ms=0)
    state.on_follower_fetch(2, 10, now_ms=0)
    state.on_append(20)
    state.on_follower_fetch(1, 20, now_ms=500)
    assert state.isr_proposal(now_ms=LAG_MS) is None
    state.isr_rejected()
    assert state.isr_proposal(now_ms=LAG_MS + 1) == (0, 1)
    assert state.isr_proposal(now_ms=LAG_MS + 2) is None  # one change in flight
    assert state.maximal_isr() == (0, 1, 2)  # a shrink counts only once committed
    assert state.high_watermark == 10
    assert state.isr_committed((0, 1))
    assert state.high_watermark == 20


def test_slow_follower_keeps_its_caught_up_time_from_the_previous_fetch() -> None:
    """Proves a follower that reaches the LEO the leader had at its previous fetch is
    caught up as of that fetch (replication.md 1.2 step 4), so it is not shrunk."""
    state = leader(isr=(0, 1), replicas=(0, 1))
    state.on_follower_fetch(1, 10, now_ms=0)
    for step in range(1, 20):
        state.on_append(10 + step)
        state.on_follower_fetch(1, 10 + step - 1, now_ms=step * 400)
        assert state.isr_proposal(now_ms=step * 400) is None
    state.check_invariants()


def test_expansion_needs_the_epoch_start_and_a_fetch_in_this_epoch() -> None:
    """Proves a follower joins only once its LEO reaches HW and LESO, and that the
    expansion counts for the HW at once."""
    state = leader(isr=(0, 1))
    state.on_follower_fetch(1, 10, now_ms=0)
    assert state.high_watermark == 10
    state.on_follower_fetch(2, 5, now_ms=1)
    assert state.isr_proposal(now_ms=1) is None
    state.on_follower_fetch(2, 10, now_ms=2)
    assert state.isr_proposal(now_ms=2) == (0, 1, 2)
    assert state.maximal_isr() == (0, 1, 2)
    state.on_append(30)
    state.on_follower_fetch(1, 30, now_ms=3)
    assert state.high_watermark == 10  # the expansion in flight counts at once
    state.isr_rejected()
    assert state.maximal_isr() == (0, 1)
    state.on_follower_fetch(1, 30, now_ms=4)
    assert state.high_watermark == 10  # 2 caught up recently: the HW waits for it
    state.on_follower_fetch(1, 30, now_ms=LAG_MS + 3)
    assert state.high_watermark == 30  # 2 is no longer caught up: it is left behind


def test_acks_all_after_append_with_too_few_replicas() -> None:
    """Proves NOT_ENOUGH_REPLICAS_AFTER_APPEND when the HW reached a write but the ISR
    fell below min ISR meanwhile (the committed ISR before that let it through)."""
    state = leader(isr=(0, 1), replicas=(0, 1), min_isr=2)
    state.on_follower_fetch(1, 10, now_ms=0)
    state.on_append(15)
    state.on_follower_fetch(1, 15, now_ms=1)
    state.min_insync_replicas = 3
    assert state.acks_all_outcome(15) == ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["append", "fetch", "propose", "commit", "reject"]),
            st.integers(0, 2),
            st.integers(0, 30),
        ),
        max_size=60,
    ),
    st.integers(1, 3),
)
def test_high_watermark_never_passes_a_maximal_isr_member(
    events: list[tuple[str, int, int]], min_isr: int
) -> None:
    """Proves under any event order: the HW never decreases and never exceeds the LEO of
    a maximal-ISR member, and is frozen while the ISR is below min ISR."""
    state = leader(min_isr=min_isr, log_end_offset=0)
    leos = {0: 0, 1: 0, 2: 0}
    now = 0
    proposal: tuple[int, ...] | None = None
    for name, replica, amount in events:
        now += amount * 50
        before = state.high_watermark
        isr_before = state.isr
        if name == "append":
            leos[0] += amount
            state.on_append(leos[0])
        elif name == "fetch" and replica != 0:
            leos[replica] = min(leos[0], leos[replica] + amount)
            state.on_follower_fetch(replica, leos[replica], now)
        elif name == "propose":
            proposal = state.isr_proposal(now) or proposal
        elif name == "commit" and proposal is not None and state.pending_isr == proposal:
            state.isr_committed(proposal)
            proposal = None
        elif name == "reject":
            state.isr_rejected()
            proposal = None
        state.check_invariants()
        assert state.high_watermark >= before
        if len(isr_before) < min_isr and len(state.isr) < min_isr:
            assert state.high_watermark == before
        if state.high_watermark > before:
            for member in state.maximal_isr():
                assert leos[member] >= state.high_watermark


def test_a_restarted_follower_is_not_readmitted_on_what_it_fetched_before() -> None:
    """Proves KIP-903: a fetch from a new incarnation of a follower's broker forgets the
    old one's LEO, a late fetch of the old incarnation is ignored, and only a follower
    fetching from its broker's registered incarnation may join the ISR."""
    state = leader(isr=(0, 1))
    state.on_follower_fetch(1, 10, now_ms=0, broker_epoch=5)
    state.on_follower_fetch(2, 10, now_ms=0, broker_epoch=7)
    assert state.isr_proposal(now_ms=0, broker_epochs={1: 5, 2: 9}) is None
    state.on_follower_fetch(2, 0, now_ms=1, broker_epoch=9)
    assert not state.on_follower_fetch(2, 10, now_ms=2, broker_epoch=7)
    assert state.follower_log_end_offset(2) == 0
    assert state.isr_proposal(now_ms=2, broker_epochs={1: 5, 2: 9}) is None
    state.on_follower_fetch(2, 10, now_ms=3, broker_epoch=9)
    assert state.isr_proposal(now_ms=3, broker_epochs={1: 5, 2: 9}) == (0, 1, 2)
