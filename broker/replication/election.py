"""The controller's decisions for a partition's leadership, with no I/O: fencing
dead or restarted brokers out of the ISR, electing leaders, preferred-leader
election, and how an ISR change moves replicas into and out of the ELR.

Eligible leader replicas (KIP-966, replication.md 1.8).  The HW does not move
while the ISR is below min ISR (strict min ISR), so a replica that leaves the ISR
while it is (or thereby becomes) smaller than min ISR still holds every committed
record: it goes into ``elr`` and stays electable.  The ISR may then become empty.
A replica whose broker restarted after an unclean shutdown may have lost its
unflushed tail: it leaves the ELR into ``last_known_elr``.  Once the ISR is back at
min ISR both lists empty (the HW may move without them).

Election order, replicas taken in assignment order:
1. a live ISR member (the ISR stays, minus nobody: dead members are already out);
2. a live ELR member (the ISR becomes [leader]);
3. when the ISR and ELR are empty and *every* member of ``last_known_elr`` is live
   again, the first of them (an unclean recovery: it may have lost what it had not
   flushed, but no replica is known to hold more);
4. only when the topic allows it (``unclean.leader.election.enable``), any live
   replica (an unclean election: committed records may be lost);
5. else NO_LEADER: the partition is offline until one of the above is possible.
Every leader change, to NO_LEADER included, bumps the leader epoch.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, NamedTuple

from broker.cluster.schema import NO_LEADER, PartitionState

MIN_INSYNC_REPLICAS_CONFIG: Final = "min.insync.replicas"
UNCLEAN_ELECTION_CONFIG: Final = "unclean.leader.election.enable"


class ElectionKind(enum.Enum):
    NONE = "none"  # leadership unchanged, or the partition went offline
    CLEAN = "clean"  # from the ISR or the ELR
    RECOVERY = "unclean recovery"  # from last_known_elr
    UNCLEAN = "unclean"  # any live replica (the topic allows it)
    PREFERRED = "preferred"


class Decision(NamedTuple):
    """A partition's new state and how its leader was chosen."""

    state: PartitionState
    kind: ElectionKind


def min_insync_replicas(configs: Mapping[str, str]) -> int:
    """The topic's min.insync.replicas; 1 when absent or not a positive integer."""
    value = configs.get(MIN_INSYNC_REPLICAS_CONFIG, "1").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else 1


def unclean_election_enabled(configs: Mapping[str, str]) -> bool:
    """The topic's unclean.leader.election.enable; False unless it says true."""
    return configs.get(UNCLEAN_ELECTION_CONFIG, "false").strip().lower() == "true"


def _ordered(replicas: Sequence[int], members: Iterable[int]) -> list[int]:
    wanted = set(members)
    return [replica for replica in replicas if replica in wanted] + sorted(wanted - set(replicas))


def _with_lists(
    state: PartitionState,
    replicas: Sequence[int],
    isr: Iterable[int],
    elr: Iterable[int],
    last_known_elr: Iterable[int],
    min_isr: int,
    *,
    leader: int | None = None,
    leader_epoch: int | None = None,
) -> PartitionState:
    new_isr = _ordered(replicas, isr)
    new_elr = [r for r in _ordered(replicas, elr) if r not in new_isr]
    new_last = [r for r in _ordered(replicas, last_known_elr) if r not in new_isr + new_elr]
    if len(new_isr) >= min(min_isr, len(replicas)):
        new_elr, new_last = [], []
    return PartitionState(
        leader=state.leader if leader is None else leader,
        leader_epoch=state.leader_epoch if leader_epoch is None else leader_epoch,
        isr=new_isr,
        elr=new_elr,
        last_known_elr=new_last,
    )


def apply_isr_change(
    state: PartitionState, replicas: Sequence[int], new_isr: Sequence[int], min_isr: int
) -> PartitionState:
    """The state after the leader's ISR change to ``new_isr`` (same leader and epoch):
    members removed while the ISR ends below min ISR go into the ELR, members added
    leave it, and both lists empty once the ISR reaches min ISR."""
    removed = [r for r in state.isr if r not in new_isr]
    below = len(new_isr) < min(min_isr, len(replicas))
    elr = [*state.elr, *removed] if below else state.elr
    return _with_lists(state, replicas, new_isr, elr, state.last_known_elr, min_isr)


def fence_replicas(
    state: PartitionState,
    replicas: Sequence[int],
    dead: Iterable[int],
    min_isr: int,
    *,
    unclean_restarts: Iterable[int] = (),
) -> PartitionState:
    """Remove ``dead`` brokers from the ISR, one at a time in assignment order: one
    whose removal leaves the ISR below min ISR goes into the ELR.  Brokers in
    ``unclean_restarts`` (dead in between and back after an unclean shutdown) leave
    the ISR and the ELR into ``last_known_elr``.  A removed leader leaves the
    partition to the election (the leader field is not changed here)."""
    unclean = set(unclean_restarts)
    isr = list(state.isr)
    elr = list(state.elr)
    last_known = list(state.last_known_elr)
    effective_min = min(min_isr, len(replicas))
    for broker in _ordered(replicas, set(dead) | unclean):
        if broker in unclean:
            if broker in isr or broker in elr:
                last_known.append(broker)
            isr = [r for r in isr if r != broker]
            elr = [r for r in elr if r != broker]
        elif broker in isr:
            isr.remove(broker)
            if len(isr) < effective_min:
                elr.append(broker)
    return _with_lists(state, replicas, isr, elr, last_known, min_isr)


def elect_leader(
    state: PartitionState,
    replicas: Sequence[int],
    live: frozenset[int],
    *,
    min_isr: int,
    unclean_allowed: bool,
) -> Decision:
    """Elect when the leader is NO_LEADER, not live, or not in the ISR (module
    docstring); else the state unchanged with kind NONE."""
    if state.leader != NO_LEADER and state.leader in live and state.leader in state.isr:
        return Decision(state, ElectionKind.NONE)
    epoch = state.leader_epoch + 1
    isr_live = [r for r in _ordered(replicas, state.isr) if r in live]
    if isr_live:
        new = _with_lists(
            state, replicas, isr_live, state.elr, state.last_known_elr, min_isr,
            leader=isr_live[0], leader_epoch=epoch,
        )  # fmt: skip
        return Decision(new, ElectionKind.CLEAN)
    elr_live = [r for r in _ordered(replicas, state.elr) if r in live]
    if elr_live:
        leader = elr_live[0]
        elr = [r for r in state.elr if r != leader]
        new = _with_lists(
            state, replicas, [leader], elr, state.last_known_elr, min_isr,
            leader=leader, leader_epoch=epoch,
        )  # fmt: skip
        return Decision(new, ElectionKind.CLEAN)
    last_known = _ordered(replicas, state.last_known_elr)
    if not state.isr and not state.elr and last_known and set(last_known) <= live:
        new = PartitionState(leader=last_known[0], leader_epoch=epoch, isr=[last_known[0]])
        return Decision(new, ElectionKind.RECOVERY)
    if unclean_allowed:
        candidates = [r for r in replicas if r in live]
        if candidates:
            new = PartitionState(leader=candidates[0], leader_epoch=epoch, isr=[candidates[0]])
            return Decision(new, ElectionKind.UNCLEAN)
    if state.leader == NO_LEADER:
        return Decision(state, ElectionKind.NONE)
    offline = PartitionState(
        leader=NO_LEADER,
        leader_epoch=epoch,
        isr=list(state.isr),
        elr=list(state.elr),
        last_known_elr=list(state.last_known_elr),
    )
    return Decision(offline, ElectionKind.NONE)


def reconcile(
    state: PartitionState,
    replicas: Sequence[int],
    live: frozenset[int],
    *,
    min_isr: int,
    unclean_allowed: bool,
    restarted: Mapping[int, bool] | None = None,
) -> Decision | None:
    """The controller's whole step for one partition: fence the dead (and the
    restarted: ``restarted[b]`` is whether broker b's last shutdown was clean), then
    elect if needed.  None when nothing changes."""
    restarted = restarted or {}
    dead = [r for r in replicas if r not in live] + [b for b, clean in restarted.items() if clean]
    unclean = [b for b, clean in restarted.items() if not clean]
    fenced = fence_replicas(state, replicas, dead, min_isr, unclean_restarts=unclean)
    if state.leader in restarted:
        # The leader's old incarnation is gone: elect even if it is back in the ISR.
        fenced = PartitionState(
            leader=NO_LEADER,
            leader_epoch=fenced.leader_epoch,
            isr=[r for r in fenced.isr if r != state.leader],
            elr=fenced.elr,
            last_known_elr=fenced.last_known_elr,
        )
    decision = elect_leader(
        fenced, replicas, live, min_isr=min_isr, unclean_allowed=unclean_allowed
    )
    new = decision.state
    if (
        new.leader == NO_LEADER
        and state.leader != NO_LEADER
        and new.leader_epoch == state.leader_epoch
    ):
        new = PartitionState(
            leader=NO_LEADER, leader_epoch=state.leader_epoch + 1, isr=new.isr,
            elr=new.elr, last_known_elr=new.last_known_elr,
        )  # fmt: skip
    if new == state:
        return None
    return Decision(new, decision.kind)


def preferred_leader(
    state: PartitionState, replicas: Sequence[int], live: frozenset[int]
) -> PartitionState | None:
    """Move leadership to ``replicas[0]`` when it is live, in the ISR and not leading;
    None otherwise."""
    if not replicas:
        return None
    preferred = replicas[0]
    if state.leader == preferred or preferred not in live or preferred not in state.isr:
        return None
    return PartitionState(
        leader=preferred,
        leader_epoch=state.leader_epoch + 1,
        isr=list(state.isr),
        elr=list(state.elr),
        last_known_elr=list(state.last_known_elr),
    )


def check_state(state: PartitionState, replicas: Sequence[int], min_isr: int) -> None:
    """Assert the invariants of a state the controller or a leader wrote."""
    assert state.leader == NO_LEADER or state.leader in state.isr, state
    assert not set(state.isr) & set(state.elr), state
    assert not set(state.last_known_elr) & (set(state.isr) | set(state.elr)), state
    if len(state.isr) >= min(min_isr, len(replicas)):
        assert not state.elr and not state.last_known_elr, state
