"""The group coordinator: a sans-I/O state machine over every group of this broker.

It never touches a socket, a file or trio.  Time comes from an injected
``clock_ms``, member ids from an injected ``random.Random``, and the topics that
exist (name -> partition count) from an injected ``topic_partitions`` callable.
The trio shell (service.py) feeds it requests and appends the records it
returns to ``__consumer_offsets``.

:class:`GroupCoordinator` is the one entry point; the work lives by concept in

* membership.py: :meth:`~GroupCoordinator.heartbeat` (KIP-848's
  ConsumerGroupHeartbeat: join, heartbeat, leave, fencing) and
  :meth:`~GroupCoordinator.expire` (members whose session or revocation
  deadline passed);
* assignment.py: subscriptions resolved against the topics that exist, and the
  target assignment recomputed when a group's membership, a subscription or a
  subscribed topic's partition count changes;
* group.py: one group's members, ownership and the reconciliation step;
* offsets.py: :meth:`~GroupCoordinator.prepare_commit` /
  :meth:`~GroupCoordinator.prepare_delete` (validate, return records to
  append) and :meth:`~GroupCoordinator.replay` (apply an appended record, live
  and at start-up, so a restart rebuilds exactly what the live path built).

Records are ``(key bytes, value bytes | None)`` pairs (records.py).  Whenever a
group's epoch goes up, a heartbeat or expiry result also carries the group's
metadata record, so epochs never go back across a restart.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final

from broker.groups.assignment import Subscriptions
from broker.groups.config import GroupConfig
from broker.groups.group import Group, GroupState, MemberState, OffsetAndMetadata
from broker.groups.membership import (
    ExpiredMember,
    ExpireResult,
    HeartbeatRequest,
    HeartbeatResult,
    Membership,
)
from broker.groups.offsets import (
    CommitPlan,
    OffsetCommitInput,
    fetch_offsets,
    prepare_commit,
    prepare_delete,
    replay_record,
)
from broker.groups.records import Record
from client.errors import InvalidRequestError, UnknownGroupError
from client.types import TopicPartition

__all__ = [
    "GROUP_ID_CHARS_MAX",
    "CommitPlan",
    "ExpireResult",
    "ExpiredMember",
    "GroupCoordinator",
    "GroupDescription",
    "GroupListing",
    "HeartbeatRequest",
    "HeartbeatResult",
    "MemberDescription",
    "OffsetCommitInput",
    "Record",
]

GROUP_ID_CHARS_MAX: Final = 255


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
        self._groups: dict[str, Group] = {}
        self._subscriptions = Subscriptions(topic_partitions)
        self._membership = Membership(self._groups, config, rng, self._subscriptions)
        # Highest epochs seen by check_invariants, to prove they never go back.
        self._seen_group_epochs: dict[str, int] = {}
        self._seen_member_epochs: dict[tuple[str, str], int] = {}

    def group(self, group_id: str) -> Group | None:
        return self._groups.get(group_id)

    # -- membership ---------------------------------------------------------------------

    def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResult:
        """Join, heartbeat or leave (membership.py).

        Raises InvalidRequestError (bad group id, subscription, regex, assignor or
        epoch; group full), UnknownMemberError, FencedMemberEpochError.
        """
        _check_group_id(request.group_id)
        now_ms = self._clock_ms()
        self._subscriptions.refresh()
        return self._membership.heartbeat(request, now_ms)

    def expire(self) -> ExpireResult:
        """Expel every member whose session or revocation deadline has passed; their
        partitions are free at once and the group rebalances."""
        now_ms = self._clock_ms()
        self._subscriptions.refresh()
        return self._membership.expire(now_ms)

    def next_deadline_ms(self) -> int | None:
        """The earliest session or revocation deadline of any member (None: no members)."""
        return self._membership.next_deadline_ms()

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
        self._subscriptions.refresh()
        return prepare_commit(
            group_id,
            self._groups.get(group_id),
            member_id,
            member_epoch,
            offsets,
            topics=self._subscriptions.topics,
            config=self.config,
            now_ms=self._clock_ms(),
        )

    def fetch_offsets(
        self, group_id: str, partitions: Collection[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Committed offsets of ``group_id`` (all, or those of ``partitions`` that have
        one).  An unknown group has none."""
        return fetch_offsets(self._groups.get(group_id), partitions)

    def prepare_delete(self, group_id: str) -> list[Record]:
        """Tombstones for every record of the group (append, then :meth:`replay`).
        Raises UnknownGroupError, GroupNotEmptyError."""
        return prepare_delete(group_id, self._groups.get(group_id))

    def replay(self, key: bytes | None, value: bytes | None, record_offset: int) -> None:
        """Apply one record of __consumer_offsets (appended at ``record_offset``).
        Raises BadOffsetsRecord for a record that does not decode."""
        deleted = replay_record(self._groups, key, value, record_offset)
        if deleted is not None:
            self._seen_group_epochs.pop(deleted, None)

    def drop_groups(self, belongs: Callable[[str], bool]) -> list[str]:
        """Forget every group for which ``belongs(group_id)`` holds (this broker no
        longer coordinates them); returns their ids.  Nothing is written."""
        dropped = [group_id for group_id in self._groups if belongs(group_id)]
        for group_id in dropped:
            del self._groups[group_id]
            self._seen_group_epochs.pop(group_id, None)
        if dropped:
            gone = set(dropped)
            for key in [key for key in self._seen_member_epochs if key[0] in gone]:
                del self._seen_member_epochs[key]
        return dropped

    # -- listing and describing ---------------------------------------------------------

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
    """Raises InvalidRequestError for an empty or too long group id."""
    if not group_id or len(group_id) > GROUP_ID_CHARS_MAX:
        raise InvalidRequestError(f"group id must be 1 to {GROUP_ID_CHARS_MAX} characters")
