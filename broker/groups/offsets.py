"""Committed offsets: validating commits and deletions, and replaying ``__consumer_offsets``.

Nothing here changes a group directly.  :func:`prepare_commit` and
:func:`prepare_delete` validate a request and return the records to append to
the offsets topic; the trio shell (service.py) appends them and then calls
:func:`replay_record` for each with its log offset.  Start-up replays the whole
topic through the same function, so a restart rebuilds exactly what the live
path built.  Replay keeps, per partition, the commit with the highest log
offset, so appends that finish out of order still leave the newest commit.

A commit needs a known member, its current or previous epoch, and each
partition held by that member right now (else FENCED_MEMBER_EPOCH for that
partition), so a zombie never moves an offset that a new owner already moved.
An admin commit (member epoch ADMIN_COMMIT_EPOCH) is accepted only while the
group has no members (GROUP_NOT_EMPTY otherwise): that is how offsets are reset.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from broker.groups.config import GroupConfig
from broker.groups.group import Group, Member, OffsetAndMetadata
from broker.groups.records import (
    GroupMetadataKey,
    GroupMetadataValue,
    OffsetCommitKey,
    OffsetCommitValue,
    Record,
    decode_record,
    encode_key,
    encode_value,
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
from client.protocol.messages import ADMIN_COMMIT_EPOCH
from client.types import TopicPartition


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


def prepare_commit(
    group_id: str,
    group: Group | None,
    member_id: str,
    member_epoch: int,
    offsets: Mapping[TopicPartition, OffsetCommitInput],
    *,
    topics: Mapping[str, int],
    config: GroupConfig,
    now_ms: int,
) -> CommitPlan:
    """Validate a commit into ``group`` (None: it does not exist yet) against
    ``topics`` (name -> partition count); returns the records to append and the
    refused partitions.

    Raises GroupNotEmptyError (an admin commit into a group with members),
    UnknownMemberError, FencedMemberEpochError (the member's epoch is stale).
    """
    member: Member | None = None
    if member_epoch == ADMIN_COMMIT_EPOCH:
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
    owned = member.owned if member is not None else None
    for tp, commit in offsets.items():
        error = _check_commit(tp, commit, owned, topics, config)
        if error is not None:
            plan.errors[tp] = error
            continue
        key = encode_key(OffsetCommitKey(group_id, tp.topic, tp.partition))
        value = OffsetCommitValue(commit.offset, commit.leader_epoch, commit.metadata, now_ms)
        plan.records.append((key, encode_value(value)))
        plan.accepted.append(tp)
    return plan


def _check_commit(
    tp: TopicPartition,
    commit: OffsetCommitInput,
    owned: set[TopicPartition] | None,
    topics: Mapping[str, int],
    config: GroupConfig,
) -> DistributaryError | None:
    """The error refusing this one partition's commit, or None."""
    if not 0 <= tp.partition < topics.get(tp.topic, 0):
        return UnknownTopicOrPartitionError(f"no partition {tp}")
    if commit.offset < 0:
        return InvalidRequestError(f"offset {commit.offset} for {tp} is negative")
    if len(commit.metadata) > config.offset_metadata_max_chars:
        return InvalidRequestError(
            f"metadata for {tp} is longer than {config.offset_metadata_max_chars} chars"
        )
    if owned is not None and tp not in owned:
        return FencedMemberEpochError(f"{tp} is not held by this member at its epoch")
    return None


def fetch_offsets(
    group: Group | None, partitions: Collection[TopicPartition] | None = None
) -> dict[TopicPartition, OffsetAndMetadata]:
    """Committed offsets of ``group`` (all, or those of ``partitions`` that have
    one).  An unknown group (None) has none."""
    if group is None:
        return {}
    if partitions is None:
        return dict(group.offsets)
    return {tp: group.offsets[tp] for tp in partitions if tp in group.offsets}


def prepare_delete(group_id: str, group: Group | None) -> list[Record]:
    """Tombstones for every record of the group (append, then replay them).
    Raises UnknownGroupError, GroupNotEmptyError."""
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


def replay_record(
    groups: dict[str, Group], key: bytes | None, value: bytes | None, record_offset: int
) -> str | None:
    """Apply one record of __consumer_offsets (appended at ``record_offset``) to
    ``groups``; returns the id of the group it deleted, if it deleted one.
    Raises BadOffsetsRecord for a record that does not decode."""
    decoded_key, decoded_value = decode_record(key, value)
    group = groups.get(decoded_key.group)
    if isinstance(decoded_key, OffsetCommitKey):
        tp = decoded_key.topic_partition
        existing = None if group is None else group.offsets.get(tp)
        if existing is not None and existing.record_offset > record_offset:
            return None  # a newer commit was applied first
        if decoded_value is None:
            if group is not None:
                group.offsets.pop(tp, None)
            return None
        assert isinstance(decoded_value, OffsetCommitValue)
        if group is None:
            group = groups[decoded_key.group] = Group(decoded_key.group)
        group.offsets[tp] = OffsetAndMetadata(
            decoded_value.offset,
            decoded_value.leader_epoch,
            decoded_value.metadata,
            decoded_value.commit_time_ms,
            record_offset,
        )
        return None
    if decoded_value is None:
        if group is not None and not group.members:
            del groups[decoded_key.group]
            return decoded_key.group
        return None
    assert isinstance(decoded_value, GroupMetadataValue)
    if group is None:
        group = groups[decoded_key.group] = Group(decoded_key.group)
    if decoded_value.group_epoch > group.group_epoch and not group.members:
        # At start-up (live, a group's epoch is already at least what it wrote).
        group.group_epoch = group.assignment_epoch = decoded_value.group_epoch
        group.assignor_name = decoded_value.assignor
    group.persisted_epoch = max(group.persisted_epoch, decoded_value.group_epoch)
    return None
