"""A simulated broker of the replication simulation: a disk, one partition, and the
real sans-I/O state machines (LeaderState, FollowerState, LeaderEpochCache) driven
by messages from the simulated world (sim_world.py).

The disk.  A log is two lists (the leader epoch and the value of each record);
``flushed`` records are durable.  A process crash (kill) keeps everything (the
page cache survives); a power loss keeps only the flushed records.  The epoch
cache is rebuilt from the surviving records at restart, as a partition rebuilds
its checkpoint from the batch headers when it does not match the log.

The broker.  It learns the partition state by polling the metadata store, keeps
a lease with keepalives, and leads only while its lease is valid (self-fencing,
as broker/cluster/member.py does) and only for a state written after its current
registration (a state from before its restart is not its to lead).  As leader it
answers produce, consumer fetch, replica fetch and OffsetsForLeaderEpoch, and
proposes ISR changes by CAS; as follower it runs FollowerState's truncate-then-
fetch loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.cluster.schema import NO_LEADER, PartitionState
from broker.replication.election import apply_isr_change
from broker.replication.epochs import UNDEFINED_EPOCH, LeaderEpochCache
from broker.replication.follower_state import AskLeaderEpoch, FollowerState, FollowerStep
from broker.replication.leader_state import WAIT, LeaderState
from client.errors import ErrorCode

if TYPE_CHECKING:
    from sim_world import World

STORE = -1
HEARTBEAT_MS = 100
LEASE_MS = 600
LEASE_MARGIN_MS = 100
METADATA_POLL_MS = 50
REQUEST_TIMEOUT_MS = 150
LAG_TIME_MAX_MS = 300
FETCH_RECORDS_MAX = 32


class Disk:
    """One replica's log on disk (module docstring)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.values: list[int] = []
        self.flushed = 0
        self.hw_checkpoint = 0

    def __len__(self) -> int:
        return len(self.values)

    def append(self, epoch: int, value: int) -> None:
        self.epochs.append(epoch)
        self.values.append(value)

    def truncate(self, end: int) -> None:
        del self.epochs[end:]
        del self.values[end:]
        self.flushed = min(self.flushed, end)

    def flush(self, high_watermark: int) -> None:
        self.flushed = len(self.values)
        self.hw_checkpoint = min(high_watermark, self.flushed)

    def power_loss(self) -> None:
        self.truncate(self.flushed)

    def rebuild_cache(self) -> LeaderEpochCache:
        cache = LeaderEpochCache()
        for offset, epoch in enumerate(self.epochs):
            cache.assign(epoch, offset)
        return cache


class SimBroker:
    def __init__(self, world: World, node_id: int) -> None:
        self.world = world
        self.node_id = node_id
        self.disk = Disk()
        self.cache = LeaderEpochCache()
        self.hw = 0
        self.up = True
        self.paused_until = 0
        self.clean_shutdown = True
        self.reset_process()

    # -- process lifetime -------------------------------------------------------------

    def reset_process(self) -> None:
        """The in-memory state of a fresh process."""
        self.leader: LeaderState | None = None
        self.follower: FollowerState | None = None
        self.known_version = 0
        self.known_state: PartitionState | None = None
        self.known_brokers: dict[int, int] = {}  # node -> registration revision
        self.registration = 0  # the store revision of our registration; 0: none
        self.lease_valid_until = 0
        self.next_keepalive = 0
        self.next_poll = 0
        self.next_isr_check = 0
        self.waiters: list[tuple[int, int, int, int]] = []  # client, request, value, end
        self.outstanding: tuple[int, int, int] | None = None  # request id, sent at, epoch
        # The ISR change in flight: (expected version, new state, sent at).
        self.isr_cas: tuple[int, PartitionState, int] | None = None
        self.request_ids = 0

    def crash(self, lose_unflushed: bool) -> None:
        self.drop_leadership()
        self.up = False
        self.clean_shutdown = False
        if lose_unflushed:
            self.disk.power_loss()

    def stop_cleanly(self) -> None:
        self.drop_leadership()
        self.disk.flush(self.hw)
        self.up = False
        self.clean_shutdown = True
        if self.registration:
            self.world.store_deregister(self.node_id, self.registration)

    def restart(self) -> None:
        self.up = True
        self.reset_process()
        self.cache = self.disk.rebuild_cache()
        self.hw = min(self.disk.hw_checkpoint, len(self.disk))
        self.world.checks.on_restart(self)

    @property
    def lease_valid(self) -> bool:
        return self.registration > 0 and self.world.now < self.lease_valid_until

    # -- periodic work ----------------------------------------------------------------

    def tick(self) -> None:
        now = self.world.now
        if not self.lease_valid and self.leader is not None:
            self.drop_leadership()
        if now >= self.next_keepalive:
            self.next_keepalive = now + HEARTBEAT_MS
            self.request_ids += 1
            if self.registration:
                self.send(STORE, ("keepalive", self.node_id, self.registration, now))
            else:
                self.send(STORE, ("register", self.node_id, self.clean_shutdown, now))
        if now >= self.next_poll:
            self.next_poll = now + METADATA_POLL_MS
            self.send(STORE, ("read", self.node_id))
        if self.world.flush_every_append or self.world.rng.random() < self.world.flush_probability:
            self.disk.flush(self.hw)
        if self.follower is not None and self.lease_valid:
            self.maybe_fetch()
        if self.leader is not None and now >= self.next_isr_check:
            self.next_isr_check = now + LAG_TIME_MAX_MS // 2
            self.maybe_propose_isr()

    def send(self, destination: int, message: tuple[Any, ...]) -> None:
        self.world.send(self.node_id, destination, message)

    # -- metadata ---------------------------------------------------------------------

    def on_store_answer(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "registered":
            _, revision, sent_at = message
            if not self.registration:
                self.registration = revision
                self.lease_valid_until = sent_at + LEASE_MS - LEASE_MARGIN_MS
        elif kind == "keepalive_ok":
            _, registration, sent_at = message
            if registration == self.registration:
                self.lease_valid_until = max(
                    self.lease_valid_until, sent_at + LEASE_MS - LEASE_MARGIN_MS
                )
        elif kind == "lease_lost":
            _, registration = message
            if registration == self.registration:
                self.drop_leadership()
                self.registration = 0
                self.lease_valid_until = 0
                self.clean_shutdown = True  # the process lost nothing: it was cut off
        elif kind == "state":
            _, version, state, registrations = message
            if version >= self.known_version:
                self.known_brokers = registrations
            self.apply_metadata(version, state)
        elif kind == "cas_answer":
            # Applied or not, the state as of the answer decides (a conflict may be
            # the duplicate of a request that was applied).
            _, version, state = message
            self.apply_metadata(version, state)

    def apply_metadata(self, version: int, state: PartitionState | None) -> None:
        if version < self.known_version or state is None:
            return  # an older answer (reordered): the same one again is applied again
        self.known_version = version
        self.known_state = state
        me = self.node_id
        if state.leader == me:
            leader = self.leader
            if leader is not None and leader.leader_epoch == state.leader_epoch:
                in_flight = self.isr_cas
                if in_flight is not None and version > in_flight[0]:
                    self.isr_cas = None  # whatever the store holds now is the ISR
                elif tuple(state.isr) == leader.isr:
                    return
                if leader.isr_committed(state.isr):
                    self.on_high_watermark()
                return
            if not self.lease_valid or version <= self.registration:
                return  # not ours to lead (yet): a state from before our registration
            self.become_leader(state)
        elif me in self.world.replicas and state.leader != NO_LEADER:
            self.drop_leadership()
            if self.follower is None:
                self.follower = FollowerState(
                    leader_id=state.leader, leader_epoch=state.leader_epoch, epochs=self.cache
                )
                self.outstanding = None
            elif self.follower.new_leader(state.leader, state.leader_epoch):
                self.outstanding = None
        else:
            self.drop_leadership()
            self.follower = None

    def become_leader(self, state: PartitionState) -> None:
        self.drop_leadership()
        self.follower = None
        leo = len(self.disk)
        self.cache.assign(state.leader_epoch, leo)
        self.hw = min(self.hw, leo)
        self.leader = LeaderState(
            node_id=self.node_id,
            leader_epoch=state.leader_epoch,
            replicas=self.world.replicas,
            isr=state.isr,
            log_end_offset=leo,
            high_watermark=self.hw,
            epoch_start_offset=leo,
            now_ms=self.world.now,
            lag_time_max_ms=LAG_TIME_MAX_MS,
            min_insync_replicas=self.world.min_isr,
        )
        self.isr_cas = None
        self.world.checks.on_become_leader(self, state)

    def drop_leadership(self) -> None:
        if self.leader is None:
            return
        for client, request, _value, _end in self.waiters:
            self.send(client, ("produce_answer", request, ErrorCode.NOT_LEADER, -1))
        self.waiters = []
        self.leader = None

    # -- leader -----------------------------------------------------------------------

    def leading(self) -> LeaderState | None:
        if self.leader is not None and not self.lease_valid:
            self.drop_leadership()
        return self.leader

    def on_produce(self, client: int, request: int, value: int, acks_all: bool) -> None:
        leader = self.leading()
        if leader is None:
            self.send(client, ("produce_answer", request, ErrorCode.NOT_LEADER, -1))
            return
        if acks_all and (refusal := leader.acks_all_refusal()) is not None:
            self.send(client, ("produce_answer", request, refusal, -1))
            return
        offset = len(self.disk)
        self.disk.append(leader.leader_epoch, value)
        if self.world.flush_every_append:
            self.disk.flush(self.hw)
        if leader.on_append(len(self.disk)):
            self.on_high_watermark()
        if not acks_all:
            self.send(client, ("produce_answer", request, ErrorCode.NONE, offset))
            return
        self.waiters.append((client, request, value, offset + 1))
        self.complete_waiters()

    def on_high_watermark(self) -> None:
        if self.leading() is None:
            return  # the lease lapsed: answer nothing (drop_leadership failed the waiters)
        assert self.leader is not None
        self.hw = self.leader.high_watermark
        self.world.checks.on_high_watermark(self)
        self.complete_waiters()

    def complete_waiters(self) -> None:
        leader = self.leader
        assert leader is not None
        waiting = []
        for client, request, value, end in self.waiters:
            outcome = leader.acks_all_outcome(end)
            if outcome == WAIT:
                waiting.append((client, request, value, end))
                continue
            if outcome is None:
                self.world.checks.on_ack(self, value, end - 1)
                self.send(client, ("produce_answer", request, ErrorCode.NONE, end - 1))
            else:
                self.send(client, ("produce_answer", request, outcome, -1))
        self.waiters = waiting

    def on_consumer_fetch(self, client: int, request: int, offset: int) -> None:
        leader = self.leading()
        if leader is None or offset > leader.high_watermark:
            self.send(client, ("consume_answer", request, offset, []))
            return
        end = min(leader.high_watermark, offset + FETCH_RECORDS_MAX)
        self.send(client, ("consume_answer", request, offset, self.disk.values[offset:end]))

    def epoch_error(self, current_leader_epoch: int) -> ErrorCode | None:
        leader = self.leading()
        if leader is None:
            return ErrorCode.NOT_LEADER
        if current_leader_epoch < leader.leader_epoch:
            return ErrorCode.FENCED_LEADER_EPOCH
        if current_leader_epoch > leader.leader_epoch:
            return ErrorCode.UNKNOWN_LEADER_EPOCH
        return None

    def on_replica_fetch(
        self,
        follower: int,
        request: int,
        epoch: int,
        fetch_offset: int,
        last_fetched_epoch: int,
        broker_epoch: int,
    ) -> None:
        error = self.epoch_error(epoch)
        if error is None and follower not in self.world.replicas:
            error = ErrorCode.NOT_REPLICA
        if error is not None:
            self.send(follower, ("fetch_error", request, error))
            return
        leader = self.leader
        assert leader is not None
        leo = len(self.disk)
        if last_fetched_epoch != UNDEFINED_EPOCH:
            found_epoch, end = self.cache.end_offset_for(last_fetched_epoch, leo)
            if found_epoch < last_fetched_epoch or end < fetch_offset:
                self.send(follower, ("diverging", request, found_epoch, end))
                return
        if fetch_offset > leo:
            self.send(follower, ("out_of_range", request, 0, leo))
            return
        if leader.on_follower_fetch(follower, fetch_offset, self.world.now, broker_epoch):
            self.on_high_watermark()
        end = min(leo, fetch_offset + FETCH_RECORDS_MAX)
        records = list(zip(self.disk.epochs[fetch_offset:end], self.disk.values[fetch_offset:end]))
        self.send(follower, ("records", request, fetch_offset, records, leader.high_watermark))
        if self.world.rng.random() < 0.5:
            self.maybe_propose_isr()

    def on_leader_epoch_request(self, follower: int, request: int, epoch: int, asked: int) -> None:
        error = self.epoch_error(epoch)
        if error is not None:
            self.send(follower, ("fetch_error", request, error))
            return
        found_epoch, end = self.cache.end_offset_for(asked, len(self.disk))
        self.send(follower, ("epoch_answer", request, found_epoch, end))

    def maybe_propose_isr(self) -> None:
        leader = self.leading()
        state = self.known_state
        if leader is None or state is None:
            return
        in_flight = self.isr_cas
        if in_flight is not None:
            expected, new_state, sent_at = in_flight
            if self.world.now - sent_at > REQUEST_TIMEOUT_MS:
                # No answer: send it again; only a state read with a newer version
                # ends it (the first request may still arrive).
                self.isr_cas = (expected, new_state, self.world.now)
                self.send(STORE, ("cas", self.node_id, expected, new_state))
            return
        proposal = leader.isr_proposal(self.world.now, self.known_brokers)
        if proposal is None:
            return
        new_state = apply_isr_change(state, self.world.replicas, proposal, self.world.min_isr)
        self.isr_cas = (self.known_version, new_state, self.world.now)
        self.send(STORE, ("cas", self.node_id, self.known_version, new_state))

    # -- follower ---------------------------------------------------------------------

    def maybe_fetch(self) -> None:
        follower = self.follower
        assert follower is not None
        if (
            self.outstanding is not None
            and self.world.now - self.outstanding[1] < REQUEST_TIMEOUT_MS
        ):
            return
        self.request_ids += 1
        request = self.request_ids
        self.outstanding = (request, self.world.now, follower.leader_epoch)
        plan = follower.next_request(len(self.disk))
        if isinstance(plan, AskLeaderEpoch):
            message: tuple[Any, ...] = (
                "ask_epoch",
                self.node_id,
                request,
                plan.current_leader_epoch,
                plan.leader_epoch,
            )
        else:
            message = (
                "fetch", self.node_id, request, plan.current_leader_epoch, plan.fetch_offset,
                plan.last_fetched_epoch, self.registration,
            )  # fmt: skip
        self.send(follower.leader_id, message)

    def on_follower_answer(self, message: tuple[Any, ...]) -> None:
        follower = self.follower
        request = message[1]
        if follower is None or self.outstanding is None or self.outstanding[0] != request:
            return  # late, duplicated, or for an earlier role
        if self.outstanding[2] != follower.leader_epoch:
            return
        self.outstanding = None
        kind = message[0]
        leo = len(self.disk)
        step: FollowerStep | None = None
        if kind == "epoch_answer":
            step = follower.on_leader_epoch_answer(message[2], message[3], leo, self.hw)
        elif kind == "diverging":
            step = follower.on_diverging_epoch(message[2], message[3], leo, self.hw)
        elif kind == "out_of_range":
            step = follower.on_offset_out_of_range(message[2], message[3], leo)
        elif kind == "records":
            _, _, fetch_offset, records, leader_hw = message
            if fetch_offset != leo:
                return
            for epoch, value in records:
                self.cache.assign(epoch, len(self.disk))
                self.disk.append(epoch, value)
            if self.world.flush_every_append:
                self.disk.flush(self.hw)
            step = follower.on_fetch_answer(leader_hw, len(self.disk))
            if records and self.world.rng.random() < 0.7:
                self.maybe_fetch()  # keep fetching while there is more
        if step is not None:
            self.apply_step(step)
        follower.check_invariants()

    def apply_step(self, step: FollowerStep) -> None:
        if step.truncate_to is not None:
            self.world.checks.on_truncate(self, step.truncate_to)
            self.disk.truncate(step.truncate_to)
            self.cache.truncate_from_end(step.truncate_to)
            self.hw = min(self.hw, step.truncate_to)
        assert step.restart_at is None, "the simulation has no retention"
        if step.high_watermark is not None and step.high_watermark != self.hw:
            self.hw = step.high_watermark
            self.world.checks.on_high_watermark(self)
