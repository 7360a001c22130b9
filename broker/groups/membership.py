"""Membership: joining, heartbeating, leaving, fencing and session expiry.

KIP-848's ConsumerGroupHeartbeat is one request for everything a member does;
its member epoch says what: 0 joins, the member's own epoch heartbeats, -1
leaves and -2 leaves for a moment (a static member, which keeps its partitions
until its session expires).  :meth:`Membership.heartbeat` updates the member's
settings and subscription, rebalances the group when either membership or a
subscription changed (assignment.py), and reconciles the member towards its
target (group.py).  The answer carries the member epoch, the partitions the
member may own now and those it must release.

Fencing.  A heartbeat with another epoch than the member's (or its previous
one, when the member reports nothing it does not own: a lost response) fails
with FENCED_MEMBER_EPOCH; an unknown member id with UNKNOWN_MEMBER.

Static members (with an instance id): a new incarnation that joins with the
same instance id takes over the old one's partitions and place without a
rebalance, and the old member id is fenced.

:meth:`Membership.expire` expels members whose session (no heartbeat) or
revocation (partitions not released in time) deadline passed.

No I/O: time comes in as ``now_ms``, member ids from an injected
``random.Random``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Final

from broker.groups.assignment import Subscriptions, epoch_records, rebalance
from broker.groups.assignors import ASSIGNORS
from broker.groups.config import GroupConfig
from broker.groups.group import Group, Member
from broker.groups.records import Record
from client.errors import FencedMemberEpochError, InvalidRequestError, UnknownMemberError
from client.protocol.messages import JOIN_GROUP_EPOCH, LEAVE_GROUP_EPOCH, STATIC_LEAVE_GROUP_EPOCH
from client.types import TopicPartition

# Topic names in one subscription (the assignors are linear in the topics a
# group subscribes to).
SUBSCRIBED_TOPICS_MAX: Final = 10_000


@dataclass(frozen=True)
class HeartbeatRequest:
    """One ConsumerGroupHeartbeat.  ``None`` fields mean "unchanged since the last"."""

    group_id: str
    member_id: str = ""
    member_epoch: int = JOIN_GROUP_EPOCH
    instance_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    subscribed_topic_names: Sequence[str] | None = None
    subscribed_topic_regex: str | None = None  # "" clears it
    assignor: str | None = None
    owned: Collection[TopicPartition] | None = None
    session_timeout_ms: int = -1  # <= 0: the broker's default
    heartbeat_interval_ms: int = -1
    rebalance_timeout_ms: int = -1


@dataclass(frozen=True)
class HeartbeatResult:
    member_id: str
    member_epoch: int
    heartbeat_interval_ms: int
    session_timeout_ms: int
    assignment: frozenset[TopicPartition]  # what the member may own now
    revoking: frozenset[TopicPartition]  # what it must release
    records: list[Record] = field(default_factory=list)


@dataclass(frozen=True)
class ExpiredMember:
    group_id: str
    member_id: str
    instance_id: str | None
    reason: str  # "session" or "revocation"


@dataclass(frozen=True)
class ExpireResult:
    expired: list[ExpiredMember]
    records: dict[str, list[Record]]  # group id -> records to append for it


class Membership:
    """The members of every group (``groups`` is shared with the coordinator)."""

    def __init__(
        self,
        groups: dict[str, Group],
        config: GroupConfig,
        rng: random.Random,
        subscriptions: Subscriptions,
    ) -> None:
        self._groups = groups
        self.config = config
        self._random = rng
        self._subscriptions = subscriptions

    # -- heartbeats ---------------------------------------------------------------------

    def heartbeat(self, request: HeartbeatRequest, now_ms: int) -> HeartbeatResult:
        """Join, heartbeat or leave (see the module docstring).

        Raises InvalidRequestError (bad subscription, assignor or epoch; group full),
        UnknownMemberError, FencedMemberEpochError.
        """
        epoch = request.member_epoch
        if epoch == LEAVE_GROUP_EPOCH:
            return self._leave(request)
        if epoch == STATIC_LEAVE_GROUP_EPOCH:
            return self._leave_temporarily(request)
        if epoch < JOIN_GROUP_EPOCH:
            raise InvalidRequestError(f"member epoch {epoch} is not valid")
        self._check_subscription(request)  # before anything changes
        if epoch == JOIN_GROUP_EPOCH:
            group, member, changed = self._join(request, now_ms)
        else:
            group, member = self._existing_member(request)
            changed = False
        member.session_deadline_ms = now_ms + member.session_timeout_ms
        member.left_temporarily = False
        changed |= self._update_member(member, request)
        rebalance(group, self._subscriptions, self.config.default_assignor, changed=changed)
        # A joining member holds nothing, whatever it reports.
        owned: set[TopicPartition] | None = set() if epoch == JOIN_GROUP_EPOCH else None
        if epoch != JOIN_GROUP_EPOCH and request.owned is not None:
            owned = set(request.owned)
        group.reconcile(member, owned, now_ms)
        return HeartbeatResult(
            member.member_id,
            member.member_epoch,
            member.heartbeat_interval_ms,
            member.session_timeout_ms,
            frozenset(member.assigned),
            frozenset(member.revoking),
            epoch_records(group),
        )

    def _check_subscription(self, request: HeartbeatRequest) -> None:
        """Raises InvalidRequestError: too many topic names, a regex RE2 refuses
        (assignment.compile_topic_regex), an unknown assignor."""
        names = request.subscribed_topic_names
        if names is not None and len(names) > SUBSCRIBED_TOPICS_MAX:
            raise InvalidRequestError(f"more than {SUBSCRIBED_TOPICS_MAX} subscribed topics")
        if request.subscribed_topic_regex:
            self._subscriptions.pattern(request.subscribed_topic_regex)
        if request.assignor and request.assignor not in ASSIGNORS:
            raise InvalidRequestError(
                f"unknown assignor {request.assignor!r} (known: {', '.join(sorted(ASSIGNORS))})"
            )

    def _join(self, request: HeartbeatRequest, now_ms: int) -> tuple[Group, Member, bool]:
        """The joining member, its group (created if new) and whether membership
        changed.  Raises InvalidRequestError (no subscription, member id in use,
        group full)."""
        if request.subscribed_topic_names is None and not request.subscribed_topic_regex:
            raise InvalidRequestError("joining needs subscribed topic names or a regex")
        group = self._groups.get(request.group_id)
        if group is None:
            group = self._groups[request.group_id] = Group(request.group_id)
        session_timeout_ms = self.config.clamp_session_timeout_ms(request.session_timeout_ms)
        member = Member(
            member_id=request.member_id or self._new_member_id(),
            instance_id=request.instance_id or None,
            client_id=request.client_id,
            client_host=request.client_host,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=self.config.clamp_heartbeat_interval_ms(
                request.heartbeat_interval_ms, session_timeout_ms
            ),
            rebalance_timeout_ms=self.config.rebalance_timeout_ms,
            session_deadline_ms=now_ms + session_timeout_ms,
        )
        existing_id = group.instances.get(member.instance_id or "")
        if existing_id is not None:
            # A static member's new incarnation: it takes over the old one's
            # partitions and place; the old member id is fenced (UNKNOWN_MEMBER).
            old = group.members[existing_id]
            member.subscribed_topic_names = old.subscribed_topic_names
            member.subscribed_topic_regex = old.subscribed_topic_regex
            member.assignor = old.assignor
            member.resolved_topics = old.resolved_topics
            member.resolved_version = old.resolved_version
            if member.member_id != existing_id and member.member_id in group.members:
                raise InvalidRequestError(f"member id {member.member_id} is already in use")
            group.replace_member(existing_id, member)
            return group, member, False
        previous = group.members.get(member.member_id)
        if previous is not None:
            # The same member joining again (after it was fenced): it dropped every
            # partition, so they are free; its place in the target stays.
            member.subscribed_topic_names = previous.subscribed_topic_names
            member.subscribed_topic_regex = previous.subscribed_topic_regex
            member.assignor = previous.assignor
            member.member_epoch = previous.member_epoch
            member.previous_member_epoch = previous.previous_member_epoch
            target = group.target.get(member.member_id)
            group.remove_member(member.member_id)
            group.add_member(member)
            if target is not None:
                group.target[member.member_id] = target
            return group, member, False
        if len(group.members) >= self.config.group_members_max:
            raise InvalidRequestError(
                f"group {group.group_id!r} is full ({self.config.group_members_max} members)"
            )
        group.add_member(member)
        return group, member, True

    def _existing_member(self, request: HeartbeatRequest) -> tuple[Group, Member]:
        """Raises UnknownMemberError, FencedMemberEpochError."""
        group = self._groups.get(request.group_id)
        member = None if group is None else group.members.get(request.member_id)
        if group is None or member is None:
            raise UnknownMemberError(
                f"member {request.member_id!r} is not in group {request.group_id!r}"
            )
        if request.member_epoch != member.member_epoch:
            lost_response = (
                request.member_epoch == member.previous_member_epoch
                and request.owned is not None
                and set(request.owned) <= member.owned
            )
            if not lost_response:
                raise FencedMemberEpochError(
                    f"member {member.member_id} sent epoch {request.member_epoch}, "
                    f"its epoch is {member.member_epoch}"
                )
        return group, member

    def _update_member(self, member: Member, request: HeartbeatRequest) -> bool:
        """Apply the request's settings and subscription (checked by
        :meth:`_check_subscription`); True if the subscription or the requested
        assignor changed (the group must rebalance)."""
        if request.session_timeout_ms > 0:
            member.session_timeout_ms = self.config.clamp_session_timeout_ms(
                request.session_timeout_ms
            )
        if request.heartbeat_interval_ms > 0 or request.session_timeout_ms > 0:
            member.heartbeat_interval_ms = self.config.clamp_heartbeat_interval_ms(
                request.heartbeat_interval_ms, member.session_timeout_ms
            )
        if request.rebalance_timeout_ms > 0:
            member.rebalance_timeout_ms = request.rebalance_timeout_ms
        if request.client_id:
            member.client_id = request.client_id
        changed = False
        if request.subscribed_topic_names is not None:
            names = tuple(sorted(set(request.subscribed_topic_names)))
            if names != member.subscribed_topic_names:
                member.subscribed_topic_names = names
                changed = True
        if request.subscribed_topic_regex is not None:
            regex = request.subscribed_topic_regex or None
            if regex != member.subscribed_topic_regex:
                member.subscribed_topic_regex = regex
                changed = True
        if request.assignor is not None:
            assignor = request.assignor or None
            if assignor != member.assignor:
                member.assignor = assignor
                changed = True
        if changed:
            member.resolved_version = -1
        return changed

    def _leave(self, request: HeartbeatRequest) -> HeartbeatResult:
        """Raises UnknownMemberError."""
        group = self._groups.get(request.group_id)
        member_id = request.member_id
        if not member_id and request.instance_id and group is not None:
            member_id = group.instances.get(request.instance_id, "")
        if group is None or member_id not in group.members:
            raise UnknownMemberError(f"member {member_id!r} is not in group {request.group_id!r}")
        member = group.remove_member(member_id)
        rebalance(group, self._subscriptions, self.config.default_assignor, changed=True)
        return HeartbeatResult(
            member.member_id,
            LEAVE_GROUP_EPOCH,
            member.heartbeat_interval_ms,
            member.session_timeout_ms,
            frozenset(),
            frozenset(),
            epoch_records(group),
        )

    def _leave_temporarily(self, request: HeartbeatRequest) -> HeartbeatResult:
        """Raises InvalidRequestError (no instance id), UnknownMemberError."""
        if not request.instance_id:
            raise InvalidRequestError("member epoch -2 (leave for now) needs an instance id")
        group = self._groups.get(request.group_id)
        member = None if group is None else group.members.get(request.member_id)
        if group is None or member is None or member.instance_id != request.instance_id:
            raise UnknownMemberError(
                f"static member {request.instance_id!r} is not in group {request.group_id!r}"
            )
        # It keeps its partitions (nobody else gets them) until its session expires.
        member.left_temporarily = True
        return HeartbeatResult(
            member.member_id,
            STATIC_LEAVE_GROUP_EPOCH,
            member.heartbeat_interval_ms,
            member.session_timeout_ms,
            frozenset(),
            frozenset(),
        )

    def _new_member_id(self) -> str:
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))

    # -- session expiry -----------------------------------------------------------------

    def expire(self, now_ms: int) -> ExpireResult:
        """Expel every member whose session or revocation deadline has passed; their
        partitions are free at once and the group rebalances."""
        expired: list[ExpiredMember] = []
        records: dict[str, list[Record]] = {}
        for group in list(self._groups.values()):
            changed = False
            for member in list(group.members.values()):
                reason = None
                if now_ms >= member.session_deadline_ms:
                    reason = "session"
                elif (
                    member.revocation_deadline_ms is not None
                    and now_ms >= member.revocation_deadline_ms
                ):
                    reason = "revocation"
                if reason is not None:
                    group.remove_member(member.member_id)
                    expired.append(
                        ExpiredMember(group.group_id, member.member_id, member.instance_id, reason)
                    )
                    changed = True
            if changed:
                rebalance(group, self._subscriptions, self.config.default_assignor, changed=True)
                records[group.group_id] = epoch_records(group)
        return ExpireResult(expired, records)

    def next_deadline_ms(self) -> int | None:
        """The earliest session or revocation deadline of any member (None: no members)."""
        deadlines = [
            deadline
            for group in self._groups.values()
            for member in group.members.values()
            for deadline in (member.session_deadline_ms, member.revocation_deadline_ms)
            if deadline is not None
        ]
        return min(deadlines) if deadlines else None
