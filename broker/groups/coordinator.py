"""The group coordinator: a sans-I/O state machine over every group of this broker.

It never touches a socket, a file or trio.  Time comes from an injected
``clock_ms``, member ids from an injected ``random.Random``, and the topics that
exist (name -> partition count) from an injected ``topic_partitions`` callable.
The thin trio driver (driver.py) feeds it requests and writes what it returns.

Requests:

* :meth:`heartbeat`: KIP-848's ConsumerGroupHeartbeat.  One call joins (member
  epoch 0), heartbeats (the member's epoch), leaves (-1) or leaves for a moment
  (-2, static members).  The answer carries the member epoch and the partitions
  the member may own now; anything it held that is missing must be released
  (the answer lists those too) and reported gone in a later heartbeat.  See
  group.py for reconciliation.
* :meth:`prepare_commit` / :meth:`prepare_delete`: validate and return the
  records to append to ``__consumer_offsets``; the driver appends them, then
  calls :meth:`replay` for each with its log offset.  Start-up calls the same
  :meth:`replay` over the whole topic, so a restart rebuilds exactly what the
  live path built.
* :meth:`expire`: expels members whose session (or revocation) deadline passed.

Fencing.  A heartbeat with another epoch than the member's (or its previous
one, when the member reports nothing it does not own: a lost response) fails
with FENCED_MEMBER_EPOCH; an unknown member id with UNKNOWN_MEMBER.  A commit
needs a known member, its current or previous epoch, and each partition held by
that member right now (else FENCED_MEMBER_EPOCH for that partition), so a
zombie never moves an offset that a new owner already moved.  An admin commit
(member epoch -1) is accepted only while the group has no members
(GROUP_NOT_EMPTY otherwise): that is how offsets are reset.

Records are ``(key bytes, value bytes | None)`` pairs (records.py).  Whenever a
group's epoch goes up, the result also carries the group's metadata record, so
epochs never go back across a restart.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from broker.groups.assignors import ASSIGNORS, MemberSubscription
from broker.groups.config import GroupConfig
from broker.groups.group import Group, GroupState, Member, MemberState, OffsetAndMetadata
from broker.groups.records import (
    GroupMetadataKey,
    GroupMetadataValue,
    OffsetCommitKey,
    OffsetCommitValue,
    decode_record,
    encode_key,
    encode_value,
    partition_for_group,
)
from client.errors import (
    DistributaryError,
    FencedMemberEpochError,
    GroupNotEmptyError,
    InvalidRequestError,
    UnknownGroupError,
    UnknownMemberError,
    UnknownTopicOrPartitionError,
)
from client.types import TopicPartition

JOIN_EPOCH: Final = 0
LEAVE_EPOCH: Final = -1
STATIC_LEAVE_EPOCH: Final = -2
ADMIN_EPOCH: Final = -1  # OffsetCommit without a member: only into an empty group

GROUP_ID_CHARS_MAX: Final = 255
# Subscriptions: a regex is compiled by the broker, so its length is bounded (a
# pathological pattern could still be slow: Python's re has no RE2 guarantees).
TOPIC_REGEX_CHARS_MAX: Final = 1_000
SUBSCRIBED_TOPICS_MAX: Final = 10_000
_PATTERN_CACHE_MAX: Final = 1_000

Record = tuple[bytes, bytes | None]


@dataclass(frozen=True)
class HeartbeatRequest:
    """One ConsumerGroupHeartbeat.  ``None`` fields mean "unchanged since the last"."""

    group_id: str
    member_id: str = ""
    member_epoch: int = JOIN_EPOCH
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
class OffsetCommitInput:
    offset: int
    leader_epoch: int = -1
    metadata: str = ""


@dataclass
class CommitPlan:
    """Records to append, and the partitions refused (with their error)."""

    group_id: str
    records: list[Record] = field(default_factory=list)
    accepted: list[TopicPartition] = field(default_factory=list)
    errors: dict[TopicPartition, DistributaryError] = field(default_factory=dict)


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


@dataclass(frozen=True)
class GroupListing:
    group_id: str
    state: GroupState
    member_count: int


@dataclass(frozen=True)
class MemberDescription:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    member_epoch: int
    state: MemberState
    subscribed_topic_names: tuple[str, ...]
    subscribed_topic_regex: str | None
    assigned: tuple[TopicPartition, ...]
    revoking: tuple[TopicPartition, ...]
    target: tuple[TopicPartition, ...]
    session_timeout_ms: int
    heartbeat_interval_ms: int
    left_temporarily: bool


@dataclass(frozen=True)
class GroupDescription:
    group_id: str
    state: GroupState
    group_epoch: int
    assignment_epoch: int
    assignor: str
    members: tuple[MemberDescription, ...]
    offsets: dict[TopicPartition, OffsetAndMetadata]
    # Partition counts of the subscribed topics, and who holds each partition now.
    subscribed: dict[str, int]
    owners: dict[TopicPartition, str]


class GroupCoordinator:
    """Every group of this broker.  See the module docstring."""

    def __init__(
        self,
        config: GroupConfig,
        *,
        clock_ms: Callable[[], int],
        rng: random.Random,
        topic_partitions: Callable[[], Mapping[str, int]],
    ) -> None:
        self.config = config
        self._clock_ms = clock_ms
        self._random = rng
        self._topic_partitions = topic_partitions
        self._groups: dict[str, Group] = {}
        self._topics: dict[str, int] = {}
        self._topics_version = 0
        self._patterns: dict[str, re.Pattern[str]] = {}
        # Highest epochs seen by check_invariants, to prove they never go back.
        self._seen_group_epochs: dict[str, int] = {}
        self._seen_member_epochs: dict[tuple[str, str], int] = {}

    # -- lookups ------------------------------------------------------------------------

    def group(self, group_id: str) -> Group | None:
        return self._groups.get(group_id)

    def offsets_partition(self, group_id: str) -> int:
        """The partition of __consumer_offsets holding ``group_id``'s records."""
        return partition_for_group(group_id, self.config.offsets_topic_partitions)

    # -- heartbeats ---------------------------------------------------------------------

    def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResult:
        """Join, heartbeat or leave (see the module docstring).

        Raises InvalidRequestError (bad group id, subscription, assignor or epoch;
        group full), UnknownMemberError, FencedMemberEpochError.
        """
        _check_group_id(request.group_id)
        now_ms = self._clock_ms()
        self._refresh_topics()
        epoch = request.member_epoch
        if epoch == LEAVE_EPOCH:
            return self._leave(request)
        if epoch == STATIC_LEAVE_EPOCH:
            return self._leave_temporarily(request)
        if epoch < JOIN_EPOCH:
            raise InvalidRequestError(f"member epoch {epoch} is not valid")
        if epoch == JOIN_EPOCH:
            group, member, changed = self._join(request, now_ms)
        else:
            group, member = self._existing_member(request)
            changed = False
        member.session_deadline_ms = now_ms + member.session_timeout_ms
        member.left_temporarily = False
        changed |= self._update_member(member, request)
        self._maybe_rebalance(group, changed)
        # A joining member holds nothing, whatever it reports.
        owned: set[TopicPartition] | None = set() if epoch == JOIN_EPOCH else None
        if epoch != JOIN_EPOCH and request.owned is not None:
            owned = set(request.owned)
        group.reconcile(member, owned, now_ms)
        return self._heartbeat_result(group, member)

    def _join(self, request: HeartbeatRequest, now_ms: int) -> tuple[Group, Member, bool]:
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
            member.resolved_topics, member.resolved_version = (
                old.resolved_topics,
                old.resolved_version,
            )
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
        """Apply the request's settings and subscription; True if the subscription or
        the requested assignor changed (the group must rebalance)."""
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
            if len(names) > SUBSCRIBED_TOPICS_MAX:
                raise InvalidRequestError(f"more than {SUBSCRIBED_TOPICS_MAX} subscribed topics")
            if names != member.subscribed_topic_names:
                member.subscribed_topic_names = names
                changed = True
        if request.subscribed_topic_regex is not None:
            regex = request.subscribed_topic_regex or None
            if regex is not None:
                self._pattern(regex)  # validates
            if regex != member.subscribed_topic_regex:
                member.subscribed_topic_regex = regex
                changed = True
        if request.assignor is not None:
            assignor = request.assignor or None
            if assignor is not None and assignor not in ASSIGNORS:
                raise InvalidRequestError(
                    f"unknown assignor {assignor!r} (known: {', '.join(sorted(ASSIGNORS))})"
                )
            if assignor != member.assignor:
                member.assignor = assignor
                changed = True
        if changed:
            member.resolved_version = -1
        return changed

    def _leave(self, request: HeartbeatRequest) -> HeartbeatResult:
        group = self._groups.get(request.group_id)
        member_id = request.member_id
        if not member_id and request.instance_id and group is not None:
            member_id = group.instances.get(request.instance_id, "")
        if group is None or member_id not in group.members:
            raise UnknownMemberError(f"member {member_id!r} is not in group {request.group_id!r}")
        member = group.remove_member(member_id)
        self._maybe_rebalance(group, True)
        return HeartbeatResult(
            member.member_id,
            LEAVE_EPOCH,
            member.heartbeat_interval_ms,
            member.session_timeout_ms,
            frozenset(),
            frozenset(),
            self._epoch_records(group),
        )

    def _leave_temporarily(self, request: HeartbeatRequest) -> HeartbeatResult:
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
            STATIC_LEAVE_EPOCH,
            member.heartbeat_interval_ms,
            member.session_timeout_ms,
            frozenset(),
            frozenset(),
        )

    def _heartbeat_result(self, group: Group, member: Member) -> HeartbeatResult:
        return HeartbeatResult(
            member.member_id,
            member.member_epoch,
            member.heartbeat_interval_ms,
            member.session_timeout_ms,
            frozenset(member.assigned),
            frozenset(member.revoking),
            self._epoch_records(group),
        )

    def _new_member_id(self) -> str:
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))

    # -- assignment ---------------------------------------------------------------------

    def _refresh_topics(self) -> None:
        topics = dict(self._topic_partitions())
        if topics != self._topics:
            self._topics = topics
            self._topics_version += 1

    def _pattern(self, regex: str) -> re.Pattern[str]:
        """Raises InvalidRequestError for a pattern that is too long or invalid."""
        pattern = self._patterns.get(regex)
        if pattern is not None:
            return pattern
        if len(regex) > TOPIC_REGEX_CHARS_MAX:
            raise InvalidRequestError(f"topic regex longer than {TOPIC_REGEX_CHARS_MAX} chars")
        try:
            pattern = re.compile(regex)
        except re.error as error:
            raise InvalidRequestError(f"topic regex {regex!r} is invalid: {error}") from error
        if len(self._patterns) >= _PATTERN_CACHE_MAX:
            self._patterns.clear()
        self._patterns[regex] = pattern
        return pattern

    def _resolve(self, member: Member) -> frozenset[str]:
        if member.resolved_version != self._topics_version:
            topics = set(member.subscribed_topic_names)
            if member.subscribed_topic_regex is not None:
                pattern = self._pattern(member.subscribed_topic_regex)
                topics.update(t for t in self._topics if member.subscribes(t, pattern))
            member.resolved_topics = frozenset(topics)
            member.resolved_version = self._topics_version
        return member.resolved_topics

    def _maybe_rebalance(self, group: Group, changed: bool) -> None:
        """Bump the group epoch and recompute the target if membership or a
        subscription changed (``changed``) or a subscribed topic's partition count did."""
        if group.topics_version != self._topics_version or changed:
            subscribed: set[str] = set()
            for member in group.members.values():
                subscribed |= self._resolve(member)
            metadata = {t: self._topics[t] for t in sorted(subscribed) if t in self._topics}
            group.topics_version = self._topics_version
            changed |= metadata != group.subscription_metadata
            group.subscription_metadata = metadata
        if not changed:
            return
        group.bump_epoch()
        group.assignor_name = self._choose_assignor(group)
        subscriptions = {
            member.member_id: MemberSubscription(self._resolve(member), member.instance_id)
            for member in group.members.values()
        }
        target = ASSIGNORS[group.assignor_name].assign(
            subscriptions, group.subscription_metadata, group.target
        )
        group.target = {member_id: partitions for member_id, partitions in target.items()}
        group.assignment_epoch = group.group_epoch

    def _choose_assignor(self, group: Group) -> str:
        """The assignor most members ask for (ties: by name), else the default."""
        votes: dict[str, int] = {}
        for member in group.members.values():
            if member.assignor is not None:
                votes[member.assignor] = votes.get(member.assignor, 0) + 1
        if not votes:
            return self.config.default_assignor
        return min(votes, key=lambda name: (-votes[name], name))

    def _epoch_records(self, group: Group) -> list[Record]:
        if group.group_epoch <= group.persisted_epoch:
            return []
        group.persisted_epoch = group.group_epoch
        key = encode_key(GroupMetadataKey(group.group_id))
        value = encode_value(GroupMetadataValue(group.group_epoch, group.assignor_name))
        return [(key, value)]

    # -- session expiry -----------------------------------------------------------------

    def expire(self) -> ExpireResult:
        """Expel every member whose session or revocation deadline has passed; their
        partitions are free at once and the group rebalances."""
        now_ms = self._clock_ms()
        self._refresh_topics()
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
                self._maybe_rebalance(group, True)
                records[group.group_id] = self._epoch_records(group)
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

    # -- offsets ------------------------------------------------------------------------

    def prepare_commit(
        self,
        group_id: str,
        member_id: str,
        member_epoch: int,
        offsets: Mapping[TopicPartition, OffsetCommitInput],
    ) -> CommitPlan:
        """Validate a commit; returns the records to append (then :meth:`replay`
        them) and the refused partitions.  Raises InvalidRequestError (bad group
        id), GroupNotEmptyError (an admin commit into a group with members),
        UnknownMemberError, FencedMemberEpochError (the member's epoch is stale)."""
        _check_group_id(group_id)
        self._refresh_topics()
        group = self._groups.get(group_id)
        member: Member | None = None
        if member_epoch == ADMIN_EPOCH:
            if group is not None and group.members:
                raise GroupNotEmptyError(
                    f"group {group_id!r} has {len(group.members)} active members; "
                    "offsets can be set from outside only while it has none"
                )
        else:
            member = None if group is None else group.members.get(member_id)
            if member is None:
                raise UnknownMemberError(f"member {member_id!r} is not in group {group_id!r}")
            if member_epoch not in (member.member_epoch, member.previous_member_epoch):
                raise FencedMemberEpochError(
                    f"member {member_id} committed with epoch {member_epoch}, "
                    f"its epoch is {member.member_epoch}"
                )
        plan = CommitPlan(group_id)
        now_ms = self._clock_ms()
        owned = member.owned if member is not None else None
        for tp, commit in offsets.items():
            error = self._check_commit(tp, commit, owned)
            if error is not None:
                plan.errors[tp] = error
                continue
            key = encode_key(OffsetCommitKey(group_id, tp.topic, tp.partition))
            value = OffsetCommitValue(commit.offset, commit.leader_epoch, commit.metadata, now_ms)
            plan.records.append((key, encode_value(value)))
            plan.accepted.append(tp)
        return plan

    def _check_commit(
        self,
        tp: TopicPartition,
        commit: OffsetCommitInput,
        owned: set[TopicPartition] | None,
    ) -> DistributaryError | None:
        if not 0 <= tp.partition < self._topics.get(tp.topic, 0):
            return UnknownTopicOrPartitionError(f"no partition {tp}")
        if commit.offset < 0:
            return InvalidRequestError(f"offset {commit.offset} for {tp} is negative")
        if len(commit.metadata) > self.config.offset_metadata_max_chars:
            return InvalidRequestError(
                f"metadata for {tp} is longer than {self.config.offset_metadata_max_chars} chars"
            )
        if owned is not None and tp not in owned:
            return FencedMemberEpochError(f"{tp} is not held by this member at its epoch")
        return None

    def fetch_offsets(
        self, group_id: str, partitions: Collection[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Committed offsets of ``group_id`` (all, or those of ``partitions`` that have
        one).  An unknown group has none."""
        group = self._groups.get(group_id)
        if group is None:
            return {}
        if partitions is None:
            return dict(group.offsets)
        return {tp: group.offsets[tp] for tp in partitions if tp in group.offsets}

    # -- listing, describing, deleting --------------------------------------------------

    def list_groups(self) -> list[GroupListing]:
        return [
            GroupListing(group.group_id, group.state, len(group.members))
            for group in sorted(self._groups.values(), key=lambda g: g.group_id)
        ]

    def describe_group(self, group_id: str) -> GroupDescription:
        """Raises UnknownGroupError."""
        group = self._groups.get(group_id)
        if group is None:
            raise UnknownGroupError(f"group {group_id!r} does not exist")
        members = tuple(
            MemberDescription(
                member_id=member.member_id,
                instance_id=member.instance_id,
                client_id=member.client_id,
                client_host=member.client_host,
                member_epoch=member.member_epoch,
                state=member.state,
                subscribed_topic_names=member.subscribed_topic_names,
                subscribed_topic_regex=member.subscribed_topic_regex,
                assigned=tuple(sorted(member.assigned)),
                revoking=tuple(sorted(member.revoking)),
                target=tuple(sorted(group.target.get(member.member_id, ()))),
                session_timeout_ms=member.session_timeout_ms,
                heartbeat_interval_ms=member.heartbeat_interval_ms,
                left_temporarily=member.left_temporarily,
            )
            for member in sorted(group.members.values(), key=lambda m: m.member_id)
        )
        return GroupDescription(
            group.group_id,
            group.state,
            group.group_epoch,
            group.assignment_epoch,
            group.assignor_name or self.config.default_assignor,
            members,
            dict(sorted(group.offsets.items())),
            dict(group.subscription_metadata),
            dict(group.owners),
        )

    def prepare_delete(self, group_id: str) -> list[Record]:
        """Tombstones for every record of the group (append, then :meth:`replay`).
        Raises UnknownGroupError, GroupNotEmptyError."""
        group = self._groups.get(group_id)
        if group is None:
            raise UnknownGroupError(f"group {group_id!r} does not exist")
        if group.members:
            raise GroupNotEmptyError(f"group {group_id!r} has {len(group.members)} active members")
        records: list[Record] = [
            (encode_key(OffsetCommitKey(group_id, tp.topic, tp.partition)), None)
            for tp in sorted(group.offsets)
        ]
        records.append((encode_key(GroupMetadataKey(group_id)), None))
        return records

    # -- replay (live and at start-up) --------------------------------------------------

    def replay(self, key: bytes | None, value: bytes | None, record_offset: int) -> None:
        """Apply one record of __consumer_offsets (appended at ``record_offset``).
        Raises BadOffsetsRecord for a record that does not decode."""
        decoded_key, decoded_value = decode_record(key, value)
        if isinstance(decoded_key, OffsetCommitKey):
            tp = decoded_key.topic_partition
            group = self._groups.get(decoded_key.group)
            existing = None if group is None else group.offsets.get(tp)
            if existing is not None and existing.record_offset > record_offset:
                return  # a newer commit was applied first
            if decoded_value is None:
                if group is not None:
                    group.offsets.pop(tp, None)
                return
            assert isinstance(decoded_value, OffsetCommitValue)
            if group is None:
                group = self._groups[decoded_key.group] = Group(decoded_key.group)
            group.offsets[tp] = OffsetAndMetadata(
                decoded_value.offset,
                decoded_value.leader_epoch,
                decoded_value.metadata,
                decoded_value.commit_time_ms,
                record_offset,
            )
            return
        group = self._groups.get(decoded_key.group)
        if decoded_value is None:
            if group is not None and not group.members:
                del self._groups[decoded_key.group]
                self._seen_group_epochs.pop(decoded_key.group, None)
            return
        assert isinstance(decoded_value, GroupMetadataValue)
        if group is None:
            group = self._groups[decoded_key.group] = Group(decoded_key.group)
        if decoded_value.group_epoch > group.group_epoch and not group.members:
            # At start-up (live, a group's epoch is already at least what it wrote).
            group.group_epoch = group.assignment_epoch = decoded_value.group_epoch
            group.assignor_name = decoded_value.assignor
        group.persisted_epoch = max(group.persisted_epoch, decoded_value.group_epoch)

    # -- checking -----------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Every group's invariants (group.py), plus: group and member epochs never
        go back between two calls."""
        for group_id, group in self._groups.items():
            group.check_invariants()
            assert group.group_epoch >= self._seen_group_epochs.get(group_id, 0), group
            self._seen_group_epochs[group_id] = group.group_epoch
            for member in group.members.values():
                key = (group_id, member.member_id)
                assert member.member_epoch >= self._seen_member_epochs.get(key, 0), member
                self._seen_member_epochs[key] = member.member_epoch


def _check_group_id(group_id: str) -> None:
    if not group_id or len(group_id) > GROUP_ID_CHARS_MAX:
        raise InvalidRequestError(f"group id must be 1 to {GROUP_ID_CHARS_MAX} characters")
