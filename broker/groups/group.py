"""One consumer group: its members, target assignment, ownership and committed offsets.

Plain data and the reconciliation step of KIP-848's consumer protocol; the
coordinator (coordinator.py) drives it.  No I/O, no clock of its own: every
method that needs the time takes ``now_ms``.

Epochs.  The *group epoch* goes up whenever membership, a subscription or a
subscribed topic's partition count changes; the coordinator then recomputes the
*target assignment* at that epoch (``assignment_epoch``).  Each member has a
*member epoch*: the epoch of the target it has reconciled to.

Reconciliation (``reconcile``), run on each of the member's heartbeats:

1. Partitions the member holds but its target does not are moved from
   ``assigned`` to ``revoking``: the member must release them and say so (report
   them no longer owned) in a later heartbeat.  Its epoch stays put meanwhile.
2. Once nothing is left to revoke, the member moves to the target epoch: it
   keeps what it had, and gains each target partition that no other member holds
   (in ``assigned`` or ``revoking``).  The rest it waits for ("unreleased").

So a partition moves only after its previous owner released it or was expelled
(``owners`` maps every held partition to its one holder), members keep the
partitions that do not move, and nobody stops for a rebalance.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from client.types import TopicPartition


class GroupState(enum.Enum):
    EMPTY = "empty"  # no members (the group may still have committed offsets)
    ASSIGNING = "assigning"  # the target is older than the group epoch (transient)
    RECONCILING = "reconciling"  # some member has not reached the target yet
    STABLE = "stable"  # every member holds exactly its target, at the group epoch
    DEAD = "dead"  # deleted


class MemberState(enum.Enum):
    STABLE = "stable"  # holds its whole target at the target epoch
    UNREVOKED = "unrevoked_partitions"  # must release ``revoking`` first
    UNRELEASED = "unreleased_partitions"  # waits for target partitions others still hold


@dataclass(frozen=True)
class OffsetAndMetadata:
    """A committed offset.  ``record_offset``: where its record sits in the offsets
    topic (replaying out of order keeps the newest)."""

    offset: int
    leader_epoch: int = -1
    metadata: str = ""
    commit_time_ms: int = -1
    record_offset: int = -1


@dataclass
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    heartbeat_interval_ms: int
    rebalance_timeout_ms: int
    session_deadline_ms: int
    subscribed_topic_names: tuple[str, ...] = ()
    subscribed_topic_regex: str | None = None
    assignor: str | None = None
    member_epoch: int = 0
    previous_member_epoch: int = -1
    state: MemberState = MemberState.STABLE
    assigned: set[TopicPartition] = field(default_factory=set)
    revoking: set[TopicPartition] = field(default_factory=set)
    revocation_deadline_ms: int | None = None
    # A static member that said it would be back (epoch -2): it keeps its
    # partitions until its session expires.
    left_temporarily: bool = False
    # Resolved subscription (names plus regex matches) for ``topics_version``.
    resolved_topics: frozenset[str] = frozenset()
    resolved_version: int = -1

    @property
    def owned(self) -> set[TopicPartition]:
        return self.assigned | self.revoking


class Group:
    """See the module docstring.  Mutated only by the coordinator."""

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self.group_epoch = 0
        self.assignment_epoch = 0
        # The last group epoch handed to the log (assignment.epoch_records).
        self.persisted_epoch = 0
        self.assignor_name = ""
        self.members: dict[str, Member] = {}
        self.instances: dict[str, str] = {}  # instance id -> member id
        self.target: dict[str, set[TopicPartition]] = {}
        self.owners: dict[TopicPartition, str] = {}
        # Partition counts of the subscribed topics the target was computed for.
        self.subscription_metadata: dict[str, int] = {}
        self.topics_version = -1
        self.offsets: dict[TopicPartition, OffsetAndMetadata] = {}

    # -- state --------------------------------------------------------------------------

    @property
    def state(self) -> GroupState:
        if not self.members:
            return GroupState.EMPTY
        if self.assignment_epoch < self.group_epoch:
            return GroupState.ASSIGNING
        for member in self.members.values():
            if member.state is not MemberState.STABLE or (
                member.member_epoch != self.assignment_epoch
            ):
                return GroupState.RECONCILING
        return GroupState.STABLE

    def bump_epoch(self) -> None:
        self.group_epoch += 1

    # -- ownership ----------------------------------------------------------------------

    def _release(self, member: Member, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            holder = self.owners.pop(tp, None)
            assert holder == member.member_id, (tp, holder, member.member_id)

    def _acquire(self, member: Member, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            assert tp not in self.owners, (tp, self.owners[tp], member.member_id)
            self.owners[tp] = member.member_id

    def add_member(self, member: Member) -> None:
        assert member.member_id not in self.members, member.member_id
        self.members[member.member_id] = member
        if member.instance_id is not None:
            self.instances[member.instance_id] = member.member_id
        self._acquire(member, member.owned)

    def remove_member(self, member_id: str) -> Member:
        """Drop a member and free everything it held (it left, or was expelled)."""
        member = self.members.pop(member_id)
        self._release(member, member.owned)
        if member.instance_id is not None and self.instances.get(member.instance_id) == member_id:
            del self.instances[member.instance_id]
        self.target.pop(member_id, None)
        return member

    def replace_member(self, old_id: str, new: Member) -> None:
        """A static member's new incarnation takes over the old one's place: its
        partitions, epochs and target (no rebalance)."""
        old = self.members.pop(old_id)
        self._release(old, old.owned)
        new.assigned, new.revoking = old.assigned, old.revoking
        new.member_epoch, new.previous_member_epoch = old.member_epoch, old.previous_member_epoch
        new.state, new.revocation_deadline_ms = old.state, old.revocation_deadline_ms
        if old_id in self.target:
            self.target[new.member_id] = self.target.pop(old_id)
        if old.instance_id is not None:
            self.instances.pop(old.instance_id, None)
        self.add_member(new)

    # -- reconciliation -------------------------------------------------------------------

    def reconcile(self, member: Member, owned: set[TopicPartition] | None, now_ms: int) -> None:
        """Move ``member`` towards its target (see the module docstring).  ``owned``:
        what the member reported holding (None: not reported)."""
        target = self.target.get(member.member_id, set())
        if member.revoking and owned is not None:
            released = member.revoking - owned
            self._release(member, released)
            member.revoking -= released
        stale = member.assigned - target
        if stale:
            # The target moved these away: the member must release them first.
            member.assigned -= stale
            member.revoking |= stale
        if member.revoking:
            if member.state is not MemberState.UNREVOKED:
                member.state = MemberState.UNREVOKED
                member.revocation_deadline_ms = now_ms + member.rebalance_timeout_ms
            return
        member.revocation_deadline_ms = None
        if member.member_epoch != self.assignment_epoch:
            assert member.member_epoch <= self.assignment_epoch, (member, self.assignment_epoch)
            member.previous_member_epoch = member.member_epoch
            member.member_epoch = self.assignment_epoch
        wanted = target - member.assigned
        free = {tp for tp in wanted if tp not in self.owners}
        self._acquire(member, free)
        member.assigned |= free
        member.state = MemberState.UNRELEASED if wanted - free else MemberState.STABLE

    # -- checking -----------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Ownership is exclusive and matches the members; epochs are ordered; a
        stable group holds every subscribed partition exactly once."""
        assert 0 <= self.assignment_epoch <= self.group_epoch, self
        owners: dict[TopicPartition, str] = {}
        for member_id, member in self.members.items():
            assert member.member_id == member_id
            assert not member.assigned & member.revoking, member
            for tp in member.owned:
                assert tp not in owners, f"{tp} owned by {owners[tp]} and {member_id}"
                owners[tp] = member_id
            assert member.previous_member_epoch < member.member_epoch or (
                member.member_epoch == 0
            ), member
            assert member.member_epoch <= self.assignment_epoch, (member, self.assignment_epoch)
            assert (member.state is MemberState.UNREVOKED) == bool(member.revoking), member
            if member.state is MemberState.STABLE and member.member_epoch == self.assignment_epoch:
                assert member.assigned == self.target.get(member_id, set()), member
            if member.instance_id is not None:
                assert self.instances[member.instance_id] == member_id
        assert owners == self.owners, (owners, self.owners)
        assert set(self.instances.values()) <= set(self.members)
        assert set(self.target) <= set(self.members), (self.target, self.members)
        targeted: set[TopicPartition] = set()
        for partitions in self.target.values():
            assert not targeted & partitions, "a partition is in two members' targets"
            targeted |= partitions
        if self.state is GroupState.STABLE:
            expected = {
                TopicPartition(topic, partition)
                for topic, count in self.subscription_metadata.items()
                for partition in range(count)
            }
            held = [tp for member in self.members.values() for tp in member.assigned]
            assert len(held) == len(set(held))
            assert set(held) == expected, set(held) ^ expected

    def __repr__(self) -> str:
        return (
            f"Group({self.group_id!r}, epoch={self.group_epoch}, state={self.state.value}, "
            f"members={len(self.members)}, offsets={len(self.offsets)})"
        )
