"""The controller's pure decisions: fencing into the ELR, election order, unclean
restarts, preferred leaders, ISR changes and the topic configs they read."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.cluster.schema import NO_LEADER, PartitionState
from broker.replication.election import (
    ElectionKind,
    apply_isr_change,
    check_state,
    elect_leader,
    fence_replicas,
    min_insync_replicas,
    preferred_leader,
    reconcile,
    unclean_election_enabled,
)

REPLICAS = [0, 1, 2]


def test_configs_parse_defensively() -> None:
    """Proves bad or missing topic configs fall back to min ISR 1 and clean elections."""
    assert min_insync_replicas({}) == 1
    assert min_insync_replicas({"min.insync.replicas": "2"}) == 2
    assert min_insync_replicas({"min.insync.replicas": "zero"}) == 1
    assert min_insync_replicas({"min.insync.replicas": "0"}) == 1
    assert not unclean_election_enabled({})
    assert unclean_election_enabled({"unclean.leader.election.enable": "True"})
    assert not unclean_election_enabled({"unclean.leader.election.enable": "yes"})


def test_last_isr_member_goes_into_the_elr_and_is_elected_from_it() -> None:
    """Proves KIP-966: a broker fenced while the ISR falls below min ISR stays
    electable in the ELR; one fenced while the ISR stays at min ISR does not."""
    state = PartitionState(leader=0, leader_epoch=1, isr=[0, 1, 2])
    state = fence_replicas(state, REPLICAS, [2], min_isr=2)
    assert state.isr == [0, 1] and state.elr == []
    state = fence_replicas(state, REPLICAS, [1], min_isr=2)
    assert state.isr == [0] and state.elr == [1]
    decision = reconcile(state, REPLICAS, frozenset({1, 2}), min_isr=2, unclean_allowed=False)
    assert decision is not None
    assert decision.state == PartitionState(1, 2, [1], elr=[0])
    assert decision.kind is ElectionKind.CLEAN


def test_non_isr_replica_is_never_elected_silently() -> None:
    """Proves a live replica outside ISR and ELR is elected only when the topic allows
    unclean election, and then with kind UNCLEAN."""
    state = PartitionState(leader=0, leader_epoch=3, isr=[0], elr=[])
    offline = reconcile(state, REPLICAS, frozenset({1, 2}), min_isr=1, unclean_allowed=False)
    assert offline is not None
    assert offline.state.leader == NO_LEADER and offline.state.leader_epoch == 4
    assert offline.state.elr == [0]
    unclean = elect_leader(
        PartitionState(NO_LEADER, 4, []), REPLICAS, frozenset({1, 2}), min_isr=1,
        unclean_allowed=True,
    )  # fmt: skip
    assert unclean.state == PartitionState(1, 5, [1]) and unclean.kind is ElectionKind.UNCLEAN


def test_unclean_restart_leaves_the_elr() -> None:
    """Proves a broker back after an unclean shutdown is no longer electable from the
    ELR, and that an offline partition recovers once all of its last known ELR is back."""
    state = PartitionState(NO_LEADER, 5, [], elr=[0, 1])
    after = reconcile(
        state, REPLICAS, frozenset({0, 2}), min_isr=2, unclean_allowed=False, restarted={0: False}
    )
    assert after is not None and after.state == PartitionState(NO_LEADER, 5, [], [1], [0])
    recovered = reconcile(
        after.state, REPLICAS, frozenset({0, 1, 2}), min_isr=2, unclean_allowed=False,
        restarted={1: False},
    )  # fmt: skip
    assert recovered is not None and recovered.kind is ElectionKind.RECOVERY
    assert recovered.state == PartitionState(0, 6, [0])


def test_restarted_leader_loses_leadership() -> None:
    """Proves a leader seen back with a new registration (dead in between) is replaced."""
    state = PartitionState(0, 2, [0, 1, 2])
    decision = reconcile(
        state, REPLICAS, frozenset(REPLICAS), min_isr=2, unclean_allowed=False, restarted={0: True}
    )
    assert decision is not None and decision.state == PartitionState(1, 3, [1, 2])


def test_preferred_leader_moves_back() -> None:
    """Proves the first replica takes leadership back only when live and in the ISR."""
    state = PartitionState(1, 4, [1, 2])
    assert preferred_leader(state, REPLICAS, frozenset(REPLICAS)) is None
    state = PartitionState(1, 4, [0, 1, 2])
    assert preferred_leader(state, REPLICAS, frozenset({1, 2})) is None
    assert preferred_leader(state, REPLICAS, frozenset(REPLICAS)) == PartitionState(0, 5, [0, 1, 2])


def test_isr_change_moves_members_through_the_elr() -> None:
    """Proves a leader's shrink below min ISR puts the removed into the ELR, and an
    expansion back to min ISR empties it."""
    state = PartitionState(0, 1, [0, 1, 2])
    state = apply_isr_change(state, REPLICAS, [0, 1], min_isr=2)
    assert state.elr == []
    state = apply_isr_change(state, REPLICAS, [0], min_isr=2)
    assert state.elr == [1]
    state = apply_isr_change(state, REPLICAS, [0, 2], min_isr=2)
    assert state == PartitionState(0, 1, [0, 2])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["kill", "revive", "unclean", "shrink", "expand"]),
            st.sampled_from(REPLICAS),
        ),
        max_size=30,
    ),
    st.integers(1, 3),
)
def test_controller_states_stay_valid(events: list[tuple[str, int]], min_isr: int) -> None:
    """Proves under any sequence of deaths, restarts and ISR changes: the leader is live
    and in the ISR (or NO_LEADER), epochs only grow, and ELR rules hold."""
    state = PartitionState(0, 0, list(REPLICAS))
    live = set(REPLICAS)
    for name, broker in events:
        restarted: dict[int, bool] = {}
        if name == "kill":
            live.discard(broker)
        elif name in ("revive", "unclean") and broker not in live:
            live.add(broker)
            restarted[broker] = name == "revive"
        elif name == "shrink" and state.leader != NO_LEADER and broker != state.leader:
            state = apply_isr_change(
                state, REPLICAS, [r for r in state.isr if r != broker], min_isr
            )
        elif name == "expand" and state.leader != NO_LEADER and broker in live:
            state = apply_isr_change(state, REPLICAS, sorted({*state.isr, broker}), min_isr)
        decision = reconcile(
            state, REPLICAS, frozenset(live), min_isr=min_isr, unclean_allowed=False,
            restarted=restarted,
        )  # fmt: skip
        if decision is not None:
            assert decision.state.leader_epoch >= state.leader_epoch
            if decision.state.leader != state.leader:
                assert decision.state.leader_epoch > state.leader_epoch
            assert decision.kind is not ElectionKind.UNCLEAN
            state = decision.state
        check_state(state, REPLICAS, min_isr)
        assert state.leader == NO_LEADER or state.leader in live
