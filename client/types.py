"""Small public value types of the SDK: partitions, produce results, consumed records.

These are plain immutable values with no I/O.  ``TopicPartition`` is a NamedTuple
so it hashes and compares fast as a dict key (the consumer keys its buffers by it).
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

# Defined with the wire messages (the Produce request carries it); public from here.
from client.errors import DistributaryError
from client.protocol.messages import Acks as Acks

MiB: Final = 1024 * 1024


class TopicPartition(NamedTuple):
    """One partition of one topic."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}"


class RecordMetadata(NamedTuple):
    """Where an acknowledged record was written.

    ``offset`` is -1 when the producer runs with ``acks="none"`` (the broker sends
    no answer, so the offset is never known).  ``timestamp_ms`` is the record's
    create time as sent by the producer.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class OffsetReset(enum.Enum):
    """What a consumer does when its position is unknown or out of range: move to
    the log start, to the log end, or (``NONE``) raise OffsetOutOfRangeError.
    ``"error"`` is accepted as another spelling of ``"none"``."""

    EARLIEST = "earliest"
    LATEST = "latest"
    NONE = "none"

    @classmethod
    def _missing_(cls, value: object) -> OffsetReset | None:
        return cls.NONE if value == "error" else None


class PartitionInfo(NamedTuple):
    """A partition as the cluster metadata describes it."""

    topic: str
    partition: int
    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class TopicInfo(NamedTuple):
    """A topic and its partitions, from the cluster metadata."""

    name: str
    partitions: tuple[PartitionInfo, ...]
    internal: bool


class BrokerNode(NamedTuple):
    """One broker of the cluster."""

    node_id: int
    host: str
    port: int


class ClusterMetadata(NamedTuple):
    """A snapshot of the cluster: brokers, controller and topics."""

    cluster_id: str
    controller_id: int
    brokers: tuple[BrokerNode, ...]
    topics: tuple[TopicInfo, ...]


class PartitionOffsets(NamedTuple):
    """A partition's offsets and size, from DescribeTopics."""

    partition: int
    leader: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int
    size_bytes: int
    segment_count: int


class TopicDescription(NamedTuple):
    """A topic's configuration and per-partition offsets."""

    name: str
    configs: dict[str, str]
    partitions: tuple[PartitionOffsets, ...]
    internal: bool


class NewTopic(NamedTuple):
    """A topic to create with :meth:`client.Admin.create_topics`."""

    name: str
    partitions: int = 1
    replication_factor: int = 1
    configs: dict[str, str] | None = None


class OffsetAndTimestamp(NamedTuple):
    """Where a time falls in a partition (``Consumer.offsets_for_times``): the
    first offset of the first batch holding a record at or after it, and the
    timestamp of the record at that offset."""

    offset: int
    timestamp_ms: int


class PartitionLag(NamedTuple):
    """How far a consumer is behind on one partition (``Consumer.lag``)."""

    topic: str
    partition: int
    position: int  # the next offset this consumer hands out
    committed: int | None  # the group's committed offset (None: none, or no group)
    log_end_offset: int  # the high watermark: where the log ends for consumers
    lag: int  # log_end_offset - position


class GroupListing(NamedTuple):
    """A consumer group as ``Admin.list_groups`` reports it."""

    group_id: str
    state: str  # empty, assigning, reconciling, stable
    member_count: int


class GroupMember(NamedTuple):
    """One member of a consumer group (``Admin.describe_groups``)."""

    member_id: str
    instance_id: str | None
    client_id: str
    member_epoch: int
    state: str  # stable, unrevoked_partitions, unreleased_partitions
    subscribed_topics: tuple[str, ...]
    subscribed_pattern: str | None
    assignment: tuple[TopicPartition, ...]  # what it may own now
    revoking: tuple[TopicPartition, ...]  # what it must release
    target: tuple[TopicPartition, ...]  # where the group is heading
    session_timeout_ms: int
    heartbeat_interval_ms: int


class GroupPartition(NamedTuple):
    """A partition of a group: committed offset, log end and lag (None: no commit)."""

    topic: str
    partition: int
    committed_offset: int | None
    log_end_offset: int
    lag: int | None
    member_id: str  # who holds it now ("" if nobody)
    metadata: str
    commit_time_ms: int


class GroupDescription(NamedTuple):
    """A consumer group's state, members and per-partition offsets."""

    group_id: str
    state: str
    group_epoch: int
    assignor: str
    members: tuple[GroupMember, ...]
    partitions: tuple[GroupPartition, ...]


class LeaderElection(NamedTuple):
    """One partition's outcome of Admin.elect_leaders: its leader afterwards, and
    None when leadership moved, else why not (a typed error)."""

    topic: str
    partition: int
    leader: int
    error: DistributaryError | None
