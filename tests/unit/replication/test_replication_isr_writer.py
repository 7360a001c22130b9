"""The leader's ISR writes by CAS (broker/replication/isr_writer.py) against a real
metadata store."""

from __future__ import annotations

from pathlib import Path

from broker.cluster.local_store import open_local_store
from broker.cluster.schema import PartitionState, decode, encode, state_key
from broker.replication.isr_writer import IsrWriter, Led
from broker.replication.leader_state import LeaderState

LAG_MS = 1000

# -- IsrWriter ----------------------------------------------------------------------


class FakePartition:
    def __init__(self) -> None:
        self.changed = 0

    def high_watermark_advanced(self) -> None:
        self.changed += 1


class Clock:
    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        return self.now_ms


def leader_state(isr: list[int]) -> LeaderState:
    return LeaderState(
        node_id=1,
        leader_epoch=4,
        replicas=[1, 2, 3],
        isr=isr,
        log_end_offset=10,
        high_watermark=10,
        epoch_start_offset=10,
        now_ms=0,
        lag_time_max_ms=LAG_MS,
        min_insync_replicas=2,
    )


async def test_isr_shrink_is_written_by_cas_and_conflicts_are_rejected(tmp_path: Path) -> None:
    """Proves a lagging follower's removal is written as the same leader and epoch
    with the new ISR, and that a write against a version the controller moved fails
    (the LeaderState forgets it) and the controller's ISR is then taken."""
    key = state_key("t", 0)
    async with open_local_store(tmp_path / "metadata.json", durable=False) as store:
        version = await store.put(key, encode(PartitionState(1, 4, [1, 2, 3])))
        clock = Clock()
        state = leader_state([1, 2, 3])
        partition = FakePartition()
        writer = IsrWriter(store, 1, LAG_MS, clock, lambda: False)
        led = Led(partition, state, PartitionState(1, 4, [1, 2, 3]), version, 2)  # type: ignore[arg-type]
        writer.lead(("t", 0), led)
        state.on_follower_fetch(2, 10, 0)
        await writer.check()
        assert state.isr == (1, 2, 3)  # nobody lags yet
        clock.now_ms = LAG_MS + 1
        state.on_follower_fetch(2, 10, clock.now_ms)
        await writer.check()
        stored = await store.get(key)
        assert stored is not None
        assert decode(key, stored.value, PartitionState) == PartitionState(1, 4, [1, 2])
        assert state.isr == (1, 2) and led.version == stored.mod_revision
        # The controller rewrites the state; the leader's next write must fail.
        controller_version = await store.put(key, encode(PartitionState(1, 4, [1])))
        state.on_follower_fetch(3, 10, clock.now_ms)  # 3 caught up: expansion due
        await writer.check()
        stored = await store.get(key)
        assert stored is not None and stored.mod_revision == controller_version
        assert state.pending_isr is None and state.isr == (1, 2)
        writer.seen(("t", 0), PartitionState(1, 4, [1]), controller_version)
        assert state.isr == (1,)


async def test_fenced_leader_writes_nothing(tmp_path: Path) -> None:
    """Proves a broker whose lease lapsed proposes and writes no ISR change."""
    key = state_key("t", 0)
    async with open_local_store(tmp_path / "metadata.json", durable=False) as store:
        version = await store.put(key, encode(PartitionState(1, 4, [1, 2, 3])))
        clock = Clock()
        state = leader_state([1, 2, 3])
        writer = IsrWriter(store, 1, LAG_MS, clock, lambda: True)
        writer.lead(
            ("t", 0), Led(FakePartition(), state, PartitionState(1, 4, [1, 2, 3]), version, 2)
        )  # type: ignore[arg-type]
        clock.now_ms = 10 * LAG_MS
        await writer.check()
        stored = await store.get(key)
        assert stored is not None and stored.mod_revision == version
        assert state.pending_isr is None
