"""The world of the replication simulation: one seeded event loop over simulated
brokers (sim_broker.py), a linearizable metadata store with leases and versioned
CAS (like etcd), the controller (the real election functions), a network that
drops, delays, reorders and duplicates messages and can be partitioned, clients
producing with acks=all and acks=1 and reading committed records, and the faults.

Everything random comes from one ``random.Random(seed)``, and events at one time
run in the order they were scheduled, so a seed replays exactly.

Faults: a broker is killed (its page cache survives), loses power (it keeps
only what it flushed), is stopped cleanly, or is paused past its lease (a
zombie); a broker is cut off from everyone (or only from the store), one way or
both; the controller fails over (the new one has seen no restart: a leader that
registered after the partition's state is re-elected from the broker epochs); a
controller write fails (lost, or applied but unanswered: the controller cannot
tell), so its memory of restarts (the real ControllerMemory) keeps them pending
and a preferred election is tried again.  Unclean shutdowns are limited to what KIP-966 tolerates: at most
min ISR - 1 brokers at a time whose unclean shutdown is not yet healed by
rejoining the ISR (beyond that, the unclean recovery of a partition may pick a
replica that lost acknowledged records, and no protocol can prevent it).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

from sim_broker import LEASE_MS, STORE, SimBroker
from sim_checks import Checks

from broker.cluster.controller import ControllerMemory
from broker.cluster.schema import NO_LEADER, BrokerRegistration, PartitionState
from broker.cluster.snapshot import ClusterMetadata
from broker.replication.election import preferred_leader, reconcile
from client.errors import ErrorCode

TICK_MS = 20
CONTROLLER_TICK_MS = 50
PREFERRED_LEADER_DELAY_MS = 300
PRODUCE_INTERVAL_MS = 15
CLIENT_REFRESH_MS = 200
# The quiet phase after the faults: long enough for leases to expire and the ISR to
# heal (LEASE_MS, then lag and fetch round trips).
QUIET_MS = 1_000
QUIET_ROUNDS = 5
CLIENTS = (100, 101, 102)  # acks=all producer, acks=1 producer, reader
PARTITION = ("sim", 0)


class World:
    def __init__(self, seed: int, *, duration_ms: int = 2_000, bug: str | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        rng = self.rng
        self.now = 0
        self.duration_ms = duration_ms
        self.bug = bug
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._sequence = 0
        self.events = 0
        # Per-seed parameters.
        self.replicas = [0, 1, 2]
        self.min_isr = rng.choice([1, 2, 2, 3])
        self.flush_every_append = rng.random() < 0.3
        self.flush_probability = rng.choice([0.02, 0.1, 0.3])
        self.drop_rate = rng.choice([0.0, 0.01, 0.05, 0.15])
        self.duplicate_rate = rng.choice([0.0, 0.02, 0.1])
        self.delay_max_ms = rng.choice([2, 10, 40])
        self.fault_interval_ms = rng.choice([150, 300, 600])
        # A controller write fails this often (half lost, half applied unanswered).
        self.controller_write_failure = rng.choice([0.0, 0.0, 0.05, 0.2])
        # The metadata store.
        self.revision = 1
        self.state = PartitionState(leader=0, leader_epoch=0, isr=list(self.replicas))
        self.version = self.revision
        self.registrations: dict[int, tuple[int, bool]] = {}  # node -> (revision, clean)
        self.last_keepalive: dict[int, int] = {}
        self.controller_memory = ControllerMemory({})
        self.controller_down_until = 0  # a failover in progress until then (ms)
        self.preferred_due: int | None = None
        # Network partitions: blocked (source, destination) pairs.
        self.blocked: set[tuple[int, int]] = set()
        self.brokers = [SimBroker(self, node) for node in self.replicas]
        self.tainted: set[int] = set()  # unclean shutdowns not yet healed
        self.power_lost = False
        self.quiet = False
        # Clients.
        self.client_leader = {client: 0 for client in CLIENTS}
        self.client_refresh = dict.fromkeys(CLIENTS, 0)
        self.next_value = 1
        self.reader_offset = 0
        self.requests = 0
        self.checks = Checks(self)
        for broker in self.brokers:
            self.at(rng.randrange(TICK_MS), self._broker_tick, broker)
        self.at(LEASE_MS // 2, self._controller_tick)
        self.at(0, self._client_tick)
        self.at(self.fault_interval_ms, self._fault)

    # -- the loop ---------------------------------------------------------------------

    def at(self, time_ms: int, action: Callable[..., None], *args: Any) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (time_ms, self._sequence, action, args))

    def run(self) -> None:
        """Run the faulty phase, then heal every fault and run a quiet phase: raises
        AssertionError (naming the seed) on a broken invariant, or when the quiet
        phase does not end with one leader that every replica caught up with."""
        try:
            self._run_until(self.duration_ms)
            self.quiet = True
            self.blocked.clear()
            for broker in self.brokers:
                broker.paused_until = min(broker.paused_until, self.now)
                if not broker.up:
                    broker.restart()
            for _ in range(QUIET_ROUNDS):
                self._run_until(self.now + QUIET_MS)
                if self.checks.converged(final=False):
                    break
            self.checks.converged(final=True)
        except AssertionError as error:
            raise AssertionError(
                f"seed {self.seed} (bug={self.bug}) failed at {self.now} ms after "
                f"{self.events} events: {error}; replay with SEED={self.seed}"
            ) from error

    def _run_until(self, end_ms: int) -> None:
        while self._queue:
            time_ms, sequence, action, args = heapq.heappop(self._queue)
            if time_ms > end_ms:
                heapq.heappush(self._queue, (time_ms, sequence, action, args))
                break
            self.now = time_ms
            action(*args)
            self.events += 1
            self.checks.after_event()

    def _broker_tick(self, broker: SimBroker) -> None:
        if broker.up and self.now >= broker.paused_until:
            broker.tick()
        self.at(self.now + TICK_MS + self.rng.randrange(5), self._broker_tick, broker)

    # -- the network ------------------------------------------------------------------

    def send(self, source: int, destination: int, message: tuple[Any, ...]) -> None:
        rng = self.rng
        if (source, destination) in self.blocked or rng.random() < self.drop_rate:
            return
        copies = 2 if rng.random() < self.duplicate_rate else 1
        for _ in range(copies):
            delay = 1 + rng.randrange(self.delay_max_ms)
            self.at(self.now + delay, self._deliver, source, destination, message)

    def _deliver(self, source: int, destination: int, message: tuple[Any, ...]) -> None:
        if (source, destination) in self.blocked:
            return
        if destination == STORE:
            self._store_receive(source, message)
        elif destination in CLIENTS:
            self._client_receive(destination, message)
        else:
            broker = self.brokers[destination]
            if not broker.up:
                return
            if self.now < broker.paused_until:
                self.at(broker.paused_until, self._deliver, source, destination, message)
                return
            self._broker_receive(broker, source, message)

    def _broker_receive(self, broker: SimBroker, source: int, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if source == STORE:
            broker.on_store_answer(message)
        elif kind == "produce":
            broker.on_produce(source, message[1], message[2], message[3])
        elif kind == "consume":
            broker.on_consumer_fetch(source, message[1], message[2])
        elif kind == "fetch":
            broker.on_replica_fetch(*message[1:])
        elif kind == "ask_epoch":
            broker.on_leader_epoch_request(*message[1:])
        else:
            broker.on_follower_answer(message)

    # -- the metadata store -----------------------------------------------------------

    def _store_receive(self, source: int, message: tuple[Any, ...]) -> None:
        kind = message[0]
        self._expire_leases()
        if kind == "register":
            _, node, clean, sent_at = message
            if node in self.registrations:
                return  # an earlier registration has not expired yet: retried later
            self.revision += 1
            self.registrations[node] = (self.revision, clean)
            self.last_keepalive[node] = self.now
            self.send(STORE, source, ("registered", self.revision, sent_at))
        elif kind == "keepalive":
            _, node, registration, sent_at = message
            if self.registrations.get(node, (0, True))[0] == registration:
                self.last_keepalive[node] = self.now
                self.send(STORE, source, ("keepalive_ok", registration, sent_at))
            else:
                self.send(STORE, source, ("lease_lost", registration))
        elif kind == "read":
            brokers = {node: revision for node, (revision, _) in self.registrations.items()}
            self.send(STORE, source, ("state", self.version, self.state, brokers))
        elif kind == "cas":
            _, node, expected, new_state = message
            if expected == self.version:
                self._write(new_state)
            self.send(STORE, source, ("cas_answer", self.version, self.state))

    def store_deregister(self, node: int, registration: int) -> None:
        """A graceful stop revokes the lease at once (no network: it is best effort
        in the product too, and a lost revoke only delays the election)."""
        if self.registrations.get(node, (0, True))[0] == registration:
            del self.registrations[node]

    def _expire_leases(self) -> None:
        for node in list(self.registrations):
            if self.now - self.last_keepalive[node] > LEASE_MS:
                del self.registrations[node]
                self.checks.on_lease_expired(node)

    def _write(self, state: PartitionState) -> None:
        self.checks.on_state_write(self.state, state)
        self.revision += 1
        self.version = self.revision
        self.state = state

    # -- the controller ---------------------------------------------------------------

    def _controller_tick(self) -> None:
        self.at(self.now + CONTROLLER_TICK_MS, self._controller_tick)
        self._expire_leases()
        if self.now < self.controller_down_until:
            return  # no controller: the next one starts from what it finds
        if self.controller_down_until:
            self.controller_down_until = 0
            self.controller_memory = ControllerMemory(self._controller_metadata().broker_epochs)
        live = frozenset(self.registrations)
        metadata = self._controller_metadata()
        memory = self.controller_memory
        restarted = memory.restarted_for(PARTITION, memory.restarted(metadata), metadata)
        if self.bug == "elect-outside-isr":
            self._broken_election(live)
        again = {
            node: clean
            for node, (revision, clean) in self.registrations.items()
            if revision > self.version and node in self.replicas
        }
        followers_again = {n: clean for n, clean in again.items() if n != self.state.leader}
        decision = reconcile(
            self.state,
            self.replicas,
            live,
            min_isr=self.min_isr,
            unclean_allowed=False,
            restarted=followers_again | restarted,
            leader_registered_after=again.get(self.state.leader),
        )
        completed = decision is None or self._controller_write(decision.state)
        if completed:
            memory.applied_to(PARTITION, restarted, metadata)
            memory.round_completed(metadata)
        memory.check_invariants()
        for node in list(self.tainted):
            # Healed: back in the ISR by a state written after it registered again.
            registration = self.brokers[node].registration
            stored = self.registrations.get(node, (0, True))[0]
            up = self.brokers[node].up
            if up and node in self.state.isr and 0 < registration == stored < self.version:
                self.tainted.discard(node)
        if not completed:
            return  # as the real controller: a failed round is retried first
        preferred = preferred_leader(self.state, self.replicas, live)
        if preferred is None:
            self.preferred_due = None
        elif self.preferred_due is None:
            self.preferred_due = self.now + PREFERRED_LEADER_DELAY_MS
        elif self.now >= self.preferred_due and self._controller_write(preferred):
            self.preferred_due = None  # a failed write is tried again next tick

    def _controller_metadata(self) -> ClusterMetadata:
        """The registrations as the controller's view holds them."""
        metadata = ClusterMetadata()
        for node, (revision, clean) in self.registrations.items():
            metadata.brokers[node] = BrokerRegistration(node, "sim", 0, None, clean)
            metadata.broker_epochs[node] = revision
        return metadata

    def _controller_write(self, state: PartitionState) -> bool:
        """The controller's write of ``state``: whether it saw it succeed.  A failed
        write is either lost or applied without an answer."""
        rng = self.rng
        if rng.random() >= self.controller_write_failure:
            self._write(state)
            return True
        if rng.random() < 0.5:
            self._write(state)
        return False

    def _broken_election(self, live: frozenset[int]) -> None:
        """A deliberately wrong controller: it elects a live replica outside the ISR."""
        outside = [r for r in self.replicas if r in live and r not in self.state.isr]
        if outside and self.rng.random() < 0.2:
            leader = outside[0]
            self._write(PartitionState(leader, self.state.leader_epoch + 1, [leader]))

    # -- clients ----------------------------------------------------------------------

    def _client_tick(self) -> None:
        self.at(self.now + PRODUCE_INTERVAL_MS + self.rng.randrange(10), self._client_tick)
        for client in CLIENTS:
            if self.now >= self.client_refresh[client]:
                # A metadata answer as of now (clients may then hold it for a while).
                self.client_refresh[client] = self.now + CLIENT_REFRESH_MS
                if self.state.leader != NO_LEADER:
                    self.client_leader[client] = self.state.leader
            self.requests += 1
            leader = self.client_leader[client]
            if client == CLIENTS[2]:
                self.send(client, leader, ("consume", self.requests, self.reader_offset))
            elif not self.quiet:
                value = self.next_value
                self.next_value += 1
                self.send(client, leader, ("produce", self.requests, value, client == CLIENTS[0]))

    def _client_receive(self, client: int, message: tuple[Any, ...]) -> None:
        if message[0] == "consume_answer":
            _, _, offset, values = message
            if offset == self.reader_offset and values:
                self.checks.on_read(offset, values)
                self.reader_offset += len(values)
        elif message[2] != ErrorCode.NONE:
            self.client_refresh[client] = self.now  # refresh the leader next time

    # -- faults -----------------------------------------------------------------------

    def _fault(self) -> None:
        if self.quiet:
            return
        rng = self.rng
        self.at(self.now + rng.randrange(self.fault_interval_ms // 2, self.fault_interval_ms * 2),
                self._fault)  # fmt: skip
        broker = rng.choice(self.brokers)
        node = broker.node_id
        choice = rng.random()
        if not broker.up:
            broker.restart()
        elif choice < 0.35:
            unclean_budget = len(self.tainted | {node}) <= self.min_isr - 1
            lossy = rng.random() < 0.5 and self.min_isr >= 2 and unclean_budget
            if lossy:
                self.power_lost = True
            # A kill loses nothing; only after a power loss does it count in the budget.
            if lossy or unclean_budget or not self.power_lost:
                broker.crash(lose_unflushed=lossy)
                self.tainted.add(node)
            else:
                broker.stop_cleanly()
            self.at(self.now + rng.randrange(50, 800), self._restart, broker)
        elif choice < 0.5:
            broker.paused_until = self.now + LEASE_MS + rng.randrange(50, 600)
        elif choice < 0.8:
            others = [*(n for n in self.replicas if n != node), *CLIENTS]
            if rng.random() < 0.3:
                others = []  # cut off from the store only
            pairs = {(node, o) for o in [*others, STORE]}
            if rng.random() < 0.7:
                pairs |= {(o, node) for o in [*others, STORE]}
            self.blocked |= pairs
            self.at(self.now + rng.randrange(100, 1200), self._heal, pairs)
        elif choice < 0.9:
            self.blocked.clear()
        else:
            # The controller fails over: none for a while, then a new one that starts
            # from the registrations it finds (a restart meanwhile is known only
            # from the broker epochs).
            self.controller_down_until = self.now + rng.randrange(100, 1500)

    def _restart(self, broker: SimBroker) -> None:
        if not broker.up:
            broker.restart()

    def _heal(self, pairs: set[tuple[int, int]]) -> None:
        self.blocked -= pairs


def run_seed(seed: int, *, duration_ms: int = 2_000, bug: str | None = None) -> World:
    world = World(seed, duration_ms=duration_ms, bug=bug)
    world.run()
    return world
