"""A hypothesis state machine: random joins, leaves, heartbeats (prompt, slow, missed),
commits, topic changes and restarts against the coordinator, with its invariants and a
client-side model checked after every step."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.groups.coordinator import HeartbeatRequest, OffsetCommitInput
from broker.groups.group import GroupState
from client.errors import FencedMemberEpochError, UnknownMemberError
from client.types import TopicPartition

from .harness import Harness

GROUP = "g"


@dataclass
class Client:
    """What one consumer process believes."""

    member_id: str
    epoch: int
    instance_id: str | None
    owned: set[TopicPartition] = field(default_factory=set)


class CoordinatorModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.harness = Harness({"a": 4, "b": 3})
        self.clients: dict[int, Client] = {}  # slot -> live client
        self.zombies: list[Client] = []  # expelled or replaced: must never commit
        self.committed: dict[TopicPartition, int] = {}
        self.next_slot = 0

    @property
    def coordinator(self):  # type: ignore[no-untyped-def]
        return self.harness.coordinator

    def _members(self) -> dict[str, object]:
        group = self.coordinator.group(GROUP)
        return {} if group is None else dict(group.members)

    def _sync_zombies(self) -> None:
        members = self._members()
        for slot, client in list(self.clients.items()):
            if client.member_id not in members:
                self.zombies.append(client)
                del self.clients[slot]

    def _heartbeat(self, slot: int, release: bool) -> None:
        client = self.clients[slot]
        try:
            result = self.harness.heartbeat(
                HeartbeatRequest(GROUP, client.member_id, client.epoch, owned=sorted(client.owned))
            )
        except (UnknownMemberError, FencedMemberEpochError):
            self.zombies.append(client)
            del self.clients[slot]
            return
        assert result.member_epoch >= client.epoch
        client.epoch = result.member_epoch
        if release:
            client.owned = set(result.assignment)
        else:  # slow: adopts new partitions, still holds the ones to release
            client.owned = set(result.assignment) | (client.owned & result.revoking)

    # -- rules --------------------------------------------------------------------------

    @precondition(lambda self: len(self.clients) < 5)
    @rule(
        static=st.booleans(),
        assignor=st.sampled_from([None, "range", "sticky"]),
        topics=st.sampled_from([("a",), ("b",), ("a", "b")]),
    )
    def join(self, static: bool, assignor: str | None, topics: tuple[str, ...]) -> None:
        slot = self.next_slot
        self.next_slot += 1
        instance_id = f"i{slot % 3}" if static else None
        replaced = [
            (s, c)
            for s, c in self.clients.items()
            if instance_id is not None and c.instance_id == instance_id
        ]
        result = self.harness.heartbeat(
            HeartbeatRequest(
                GROUP,
                subscribed_topic_names=list(topics),
                instance_id=instance_id,
                assignor=assignor,
            )
        )
        for old_slot, old in replaced:  # the old incarnation is now a zombie
            self.zombies.append(old)
            del self.clients[old_slot]
        self.clients[slot] = Client(
            result.member_id, result.member_epoch, instance_id, set(result.assignment)
        )

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), release=st.booleans())
    def heartbeat(self, data: st.DataObject, release: bool) -> None:
        self._heartbeat(data.draw(st.sampled_from(sorted(self.clients))), release)

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(sorted(self.clients)))
        client = self.clients.pop(slot)
        self.harness.heartbeat(HeartbeatRequest(GROUP, client.member_id, -1))
        client.owned = set()  # it closed: it holds nothing any more
        self.zombies.append(client)

    @precondition(lambda self: any(c.instance_id for c in self.clients.values()))
    @rule(data=st.data())
    def leave_for_now(self, data: st.DataObject) -> None:
        slot = data.draw(
            st.sampled_from(sorted(s for s, c in self.clients.items() if c.instance_id))
        )
        client = self.clients.pop(slot)
        self.harness.heartbeat(
            HeartbeatRequest(GROUP, client.member_id, -2, instance_id=client.instance_id)
        )
        client.owned = set()
        self.zombies.append(client)  # a restart will join under a new member id

    @rule(delta_ms=st.integers(0, 3_000))
    def advance_clock(self, delta_ms: int) -> None:
        """Time passes; members that did not heartbeat recently may be expelled."""
        self.harness.advance(delta_ms)
        self._sync_zombies()

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), offset=st.integers(0, 1_000))
    def commit(self, data: st.DataObject, offset: int) -> None:
        slot = data.draw(st.sampled_from(sorted(self.clients)))
        client = self.clients[slot]
        candidates = [*sorted(client.owned), TopicPartition("a", 0)]
        tp = data.draw(st.sampled_from(candidates))
        try:
            plan = self.coordinator.prepare_commit(
                GROUP, client.member_id, client.epoch, {tp: OffsetCommitInput(offset)}
            )
        except (UnknownMemberError, FencedMemberEpochError):
            return
        self.harness.append(plan.records)
        if tp in plan.accepted:
            group = self.coordinator.group(GROUP)
            assert group is not None and group.owners.get(tp) == client.member_id
            self.committed[tp] = offset

    @precondition(lambda self: self.zombies)
    @rule(data=st.data())
    def zombie_commit(self, data: st.DataObject) -> None:
        """An expelled or replaced member never gets a commit through."""
        zombie = data.draw(st.sampled_from(self.zombies))
        tp = TopicPartition("a", 0)
        try:
            plan = self.coordinator.prepare_commit(
                GROUP, zombie.member_id, zombie.epoch, {tp: OffsetCommitInput(999_999)}
            )
        except (UnknownMemberError, FencedMemberEpochError):
            return
        # Still known only if it rejoined under the same id: then it must hold tp.
        assert not plan.accepted or zombie.member_id in self._members()

    @rule(topic=st.sampled_from(["a", "b", "c"]), partitions=st.integers(1, 6))
    def change_topic(self, topic: str, partitions: int) -> None:
        """Topics appear or grow (partition counts never shrink, as in Kafka)."""
        self.harness.topics[topic] = max(partitions, self.harness.topics.get(topic, 0))

    @rule()
    def settle(self) -> None:
        """Every live member heartbeats promptly a few rounds: the group gets stable."""
        for _ in range(4):
            for slot in sorted(self.clients):
                if slot in self.clients:
                    self._heartbeat(slot, release=True)
        group = self.coordinator.group(GROUP)
        live = {client.member_id for client in self.clients.values()}
        # A static member away for a moment holds its partitions: no stability yet.
        if self.clients and group is not None and set(group.members) == live:
            assert group.state is GroupState.STABLE, group

    @rule()
    def restart(self) -> None:
        """The broker restarts: state is rebuilt from the log; members must rejoin."""
        self.harness.restart()
        self.zombies.extend(self.clients.values())
        self.clients.clear()

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def coordinator_invariants(self) -> None:
        self.coordinator.check_invariants()

    @invariant()
    def clients_never_share_a_partition(self) -> None:
        members = self._members()
        seen: dict[TopicPartition, str] = {}
        for client in self.clients.values():
            member = members.get(client.member_id)
            if member is None:
                continue  # expelled in the last step: a zombie from now on
            assert client.owned <= member.owned, (client, member)  # type: ignore[attr-defined]
            for tp in client.owned:
                assert tp not in seen, f"{tp} held by {seen[tp]} and {client.member_id}"
                seen[tp] = client.member_id

    @invariant()
    def commits_are_kept(self) -> None:
        offsets = self.coordinator.fetch_offsets(GROUP)
        assert {tp: o.offset for tp, o in offsets.items()} == self.committed


CoordinatorModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_coordinator_model = pytest.mark.timeout(120)(CoordinatorModel.TestCase)
