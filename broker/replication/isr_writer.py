"""The leader's ISR writes: each partition this broker leads changes its in-sync
replicas by compare-and-swap on its state key in the metadata store.

Every CHECK_INTERVAL (half of ``replica_lag_time_max_ms``, at most
EXPAND_CHECK_MS_MAX so a follower that caught up joins soon) the writer asks each
led partition's LeaderState for a proposal (a shrink of the followers that fell
behind, or an expansion of those that caught up; at most one in flight).  A
proposal is written as the partition state last seen with the new ISR -- same
leader, same leader epoch -- compared against that state's version (its mod
revision).  Success: ``isr_committed`` and the new version is remembered.  A
conflict (the controller or an election changed the state) or a store error:
``isr_rejected``; the watch delivers the state that won, the replica manager
applies it (a new epoch makes this broker a follower; an ISR the controller
wrote in the same epoch reaches the LeaderState through :meth:`IsrWriter.seen`),
and the next check proposes again if still due.

KIP-966: a shrink that leaves fewer in-sync replicas than the topic's min ISR
moves the removed ones into the eligible leader replicas (``elr``: they hold every
committed record, since the high watermark stops below min ISR); an expansion
takes the joining ones out of it (broker/replication/election.py
``apply_isr_change``).

A follower joins only with fetches from its broker's current registration (the
live brokers' epochs are passed to the proposal: KIP-903, KIP-841).  A fenced
broker (lease not renewed: the view says so) writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import trio

from broker.cluster.schema import PartitionState, encode, state_key
from broker.cluster.store import Compare, MetadataStore, MetadataStoreError, Put
from broker.logging import get_logger
from broker.partition import Partition
from broker.replication.election import apply_isr_change
from broker.replication.leader_state import LeaderState

PartitionKey = tuple[str, int]

# A caught-up follower joins the ISR within this much (shrinks wait for the lag
# time anyway, so checking more often than half of it costs only the check).
EXPAND_CHECK_MS_MAX: Final = 250

_logger = get_logger()


@dataclass(eq=False)
class Led:
    """One partition this broker leads, as the writer knows it."""

    partition: Partition
    leader_state: LeaderState
    state: PartitionState  # the state last seen (or written)
    version: int  # its version in the store
    min_insync_replicas: int
    writing: bool = False


class IsrWriter:
    """Writes the ISR changes of the partitions this broker leads (module docstring)."""

    def __init__(
        self,
        store: MetadataStore,
        node_id: int,
        lag_time_max_ms: int,
        clock_ms: Callable[[], int],
        is_fenced: Callable[[], bool],
        broker_epochs: Callable[[], Mapping[int, int]] | None = None,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.check_interval_s = min(lag_time_max_ms / 2, EXPAND_CHECK_MS_MAX) / 1000
        self._clock_ms = clock_ms
        self._is_fenced = is_fenced
        self._broker_epochs = broker_epochs
        self.led: dict[PartitionKey, Led] = {}
        self._wake = trio.Event()

    def lead(self, key: PartitionKey, led: Led) -> None:
        """Start writing ``key``'s ISR changes (a new leadership)."""
        self.led[key] = led

    def stop(self, key: PartitionKey) -> None:
        self.led.pop(key, None)

    def seen(self, key: PartitionKey, state: PartitionState, version: int) -> None:
        """The metadata holds ``state`` at ``version`` for a partition led here in
        the same epoch (the controller's ISR change, or the echo of this writer's)."""
        led = self.led.get(key)
        if led is None or version <= led.version:
            return
        led.state, led.version = state, version
        if not led.writing:
            _take_isr(led)

    def check_soon(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Check every led partition every check interval, until cancelled."""
        while True:  # until cancelled
            with trio.move_on_after(self.check_interval_s):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.check()

    async def check(self) -> None:
        """Write the ISR change each led partition proposes now (none when fenced)."""
        if self._is_fenced():
            return
        now_ms = self._clock_ms()
        epochs = None if self._broker_epochs is None else self._broker_epochs()
        for key, led in list(self.led.items()):
            if led.writing:
                continue
            proposal = led.leader_state.isr_proposal(now_ms, epochs)
            if proposal is not None:
                await self._write(key, led, proposal)

    async def _write(self, key: PartitionKey, led: Led, isr: tuple[int, ...]) -> None:
        """CAS one proposal (module docstring)."""
        state = apply_isr_change(led.state, led.leader_state.replicas, isr, led.min_insync_replicas)
        assert state.leader == self.node_id, (key, state)
        name = state_key(*key)
        led.writing = True
        try:
            revision = await self.store.txn(
                [Compare(name, led.version)], [Put(name, encode(state))]
            )
        except MetadataStoreError as error:
            led.writing = False
            if self.led.get(key) is led:
                led.leader_state.isr_rejected()
                _take_isr(led)  # a state seen meanwhile
            _logger.info(
                "isr change not written",
                topic=key[0],
                partition=key[1],
                isr=list(isr),
                error=error.message,
            )
            return
        led.writing = False
        if self.led.get(key) is not led:
            return  # no longer led in this epoch
        if revision > led.version:
            led.state, led.version = state, revision
        if led.leader_state.isr_committed(state.isr):
            led.partition.high_watermark_advanced()
        _take_isr(led)  # a newer state seen meanwhile
        _logger.info(
            "isr changed",
            topic=key[0],
            partition=key[1],
            isr=list(state.isr),
            elr=list(state.elr),
            leader_epoch=state.leader_epoch,
        )


def _take_isr(led: Led) -> None:
    """Give the LeaderState the ISR of the state last seen, if it differs."""
    isr = led.state.isr
    leader_state = led.leader_state
    if tuple(isr) == leader_state.isr or leader_state.node_id not in isr:
        return
    if leader_state.isr_committed(isr):
        led.partition.high_watermark_advanced()
