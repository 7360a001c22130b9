"""The invariants of the replication simulation, checked as events happen (each
hook is called by the world or a broker at the moment that matters, so a broken
invariant fails at the event that broke it):

- an acknowledged (acks=all) record, and a record a reader saw below the HW, is in
  the log of every leader of the current epoch from then on, at its offset (no committed record lost;
  an offset is never reused with a different committed record);
- replicas agree on every offset below their HW (one committed log, its epochs
  non-decreasing), and no replica truncates below its HW;
- the HW of a leader never decreases within its epoch;
- the leader epoch in the store only grows, each epoch has one leader, and the
  stored state keeps the ISR/ELR rules (election.check_state);
- a leader never acknowledges once the store expired its lease (a zombie);
- the state machines' own ``check_invariants``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.cluster.schema import NO_LEADER, PartitionState
from broker.replication.election import check_state

if TYPE_CHECKING:
    from sim_broker import SimBroker
    from sim_world import World

DEEP_CHECK_EVERY_EVENTS = 64


class Checks:
    def __init__(self, world: World) -> None:
        self.world = world
        self.committed: list[tuple[int, int]] = []  # (epoch, value) agreed below the HWs
        self.checked_upto = dict.fromkeys(world.replicas, 0)
        self.must_keep: dict[int, int] = {}  # offset -> committed value
        self.leader_of_epoch: dict[int, int] = {0: 0}
        self.leader_hw: dict[tuple[int, int], int] = {}
        self.acks = 0
        self.reads = 0
        self.elections = 0

    # -- the store --------------------------------------------------------------------

    def on_state_write(self, old: PartitionState, new: PartitionState) -> None:
        assert new.leader_epoch >= old.leader_epoch, f"leader epoch went back: {old} -> {new}"
        if new.leader != old.leader:
            assert new.leader_epoch > old.leader_epoch, f"leader changed in one epoch: {new}"
            self.elections += 1
        if new.leader != NO_LEADER:
            first = self.leader_of_epoch.setdefault(new.leader_epoch, new.leader)
            assert first == new.leader, f"epoch {new.leader_epoch} has two leaders"
        check_state(new, self.world.replicas, self.world.min_isr)

    def on_lease_expired(self, node: int) -> None:
        return

    # -- leaders ----------------------------------------------------------------------

    def on_become_leader(self, broker: SimBroker, state: PartitionState) -> None:
        values = broker.disk.values
        for offset, value in self.must_keep.items():
            assert offset < len(values) and values[offset] == value, (
                f"broker {broker.node_id} leads epoch {state.leader_epoch} without committed "
                f"record {value} at offset {offset} (log end {len(values)})"
            )
        leader = broker.leader
        assert leader is not None
        leader.check_invariants()
        self.leader_hw[(broker.node_id, leader.leader_epoch)] = leader.high_watermark

    def on_ack(self, broker: SimBroker, value: int, offset: int) -> None:
        world = self.world
        node = broker.node_id
        registration = world.registrations.get(node, (0, True))[0]
        assert registration == broker.registration, (
            f"zombie: broker {node} acknowledged offset {offset} after its lease expired"
        )
        assert broker.disk.values[offset] == value
        self.acks += 1
        self.keep(offset, value)

    def on_read(self, offset: int, values: list[int]) -> None:
        self.reads += len(values)
        for index, value in enumerate(values):
            self.keep(offset + index, value)

    def keep(self, offset: int, value: int) -> None:
        known = self.must_keep.setdefault(offset, value)
        assert known == value, f"offset {offset} committed twice: {known} then {value}"
        current_epoch = self.world.state.leader_epoch
        for broker in self.world.brokers:
            leader = broker.leader
            if broker.up and leader is not None and leader.leader_epoch == current_epoch:
                values = broker.disk.values
                assert offset < len(values) and values[offset] == value, (
                    f"leader {broker.node_id} (epoch {leader.leader_epoch}) lacks committed "
                    f"record {value} at offset {offset}; store: {self.world.state}"
                )

    # -- replicas ---------------------------------------------------------------------

    def on_high_watermark(self, broker: SimBroker) -> None:
        node = broker.node_id
        leader = broker.leader
        if leader is not None:
            key = (node, leader.leader_epoch)
            assert leader.high_watermark >= self.leader_hw.get(key, 0), "leader HW went back"
            self.leader_hw[key] = leader.high_watermark
        start = self.checked_upto[node]
        if broker.hw <= start:
            return
        disk = broker.disk
        committed = self.committed
        for offset in range(start, broker.hw):
            record = (disk.epochs[offset], disk.values[offset])
            if offset < len(committed):
                assert committed[offset] == record, (
                    f"replicas diverge below the HW at offset {offset}: broker {node} has "
                    f"{record}, another {committed[offset]}"
                )
            else:
                assert offset == len(committed)
                assert not committed or committed[-1][0] <= record[0], "epochs went back"
                committed.append(record)
        self.checked_upto[node] = broker.hw

    def on_truncate(self, broker: SimBroker, end: int) -> None:
        assert end >= broker.hw, (
            f"broker {broker.node_id} truncates to {end}, below its HW {broker.hw}"
        )
        self.checked_upto[broker.node_id] = min(self.checked_upto[broker.node_id], end)

    def on_restart(self, broker: SimBroker) -> None:
        node = broker.node_id
        self.checked_upto[node] = min(self.checked_upto[node], broker.hw)

    # -- every event ------------------------------------------------------------------

    def after_event(self) -> None:
        if self.world.events % DEEP_CHECK_EVERY_EVENTS:
            return
        for broker in self.world.brokers:
            if not broker.up:
                continue
            broker.cache.check_invariants()
            if broker.leader is not None:
                broker.leader.check_invariants()
            assert broker.hw <= len(broker.disk)

    def converged(self, *, final: bool) -> bool:
        """After the quiet phase: one leader, of the store's epoch, that every replica
        caught up with, its HW at its log end (liveness: the faults healed).  False
        when not (yet), or an AssertionError saying why when ``final``."""
        try:
            self._check_converged()
        except AssertionError:
            if final:
                raise
            return False
        self.after_event()
        return True

    def _check_converged(self) -> None:
        world = self.world
        state = world.state
        assert state.leader != NO_LEADER, f"no leader after the faults healed: {state}"
        leader = world.brokers[state.leader]
        assert leader.leader is not None and leader.leader.leader_epoch == state.leader_epoch, (
            f"broker {state.leader} does not lead epoch {state.leader_epoch}"
        )
        assert leader.hw == len(leader.disk), f"leader HW {leader.hw} < LEO {len(leader.disk)}"
        for broker in world.brokers:
            assert broker.disk.values == leader.disk.values, (
                f"broker {broker.node_id} has not caught up with leader {leader.node_id}: "
                f"log end {len(broker.disk)} vs {len(leader.disk)}; state {state}"
            )
            assert broker.disk.epochs == leader.disk.epochs
