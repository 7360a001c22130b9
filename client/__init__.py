"""Distributary's Python SDK: async Producer, Consumer and Admin (trio or asyncio).

    from client import Producer, Consumer, Admin, TopicPartition

The same classes run under trio and under asyncio (they are written against
anyio).  Every operating error is a typed :class:`DistributaryError` subclass
with a ``retriable`` flag (client/errors.py).  docs/sdk.md has the guide.
"""

from __future__ import annotations

from client.admin import Admin
from client.consumer import Consumer, ConsumerRecord
from client.errors import (
    BrokerUnavailableError,
    ConnectionClosedError,
    DistributaryError,
    FencedMemberEpochError,
    GroupNotEmptyError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    LogTruncationError,
    NotLeaderError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    OutOfOrderSequenceFatalError,
    RequestTimedOutError,
    TooManyRequestsError,
    TopicAlreadyExistsError,
    UnknownGroupError,
    UnknownMemberError,
    UnknownProducerIdError,
    UnknownProducerIdFatalError,
    UnknownTopicOrPartitionError,
)
from client.partitioner import key_hash, partition_for_key
from client.producer import Producer, RecordHandle
from client.records.decoder import Record
from client.types import (
    Acks,
    BrokerNode,
    ClusterMetadata,
    GroupDescription,
    GroupListing,
    GroupMember,
    GroupPartition,
    NewTopic,
    OffsetAndTimestamp,
    OffsetReset,
    PartitionInfo,
    PartitionLag,
    PartitionOffsets,
    RecordMetadata,
    TopicDescription,
    TopicInfo,
    TopicPartition,
)

__all__ = [
    "Acks",
    "Admin",
    "BrokerNode",
    "BrokerUnavailableError",
    "ClusterMetadata",
    "ConnectionClosedError",
    "Consumer",
    "ConsumerRecord",
    "DistributaryError",
    "FencedMemberEpochError",
    "GroupDescription",
    "GroupListing",
    "GroupMember",
    "GroupNotEmptyError",
    "GroupPartition",
    "InvalidConfigError",
    "InvalidPartitionsError",
    "InvalidTopicError",
    "LogTruncationError",
    "NewTopic",
    "NotLeaderError",
    "OffsetAndTimestamp",
    "OffsetOutOfRangeError",
    "OffsetReset",
    "OutOfOrderSequenceError",
    "OutOfOrderSequenceFatalError",
    "PartitionInfo",
    "PartitionLag",
    "PartitionOffsets",
    "Producer",
    "Record",
    "RecordHandle",
    "RecordMetadata",
    "RequestTimedOutError",
    "TooManyRequestsError",
    "TopicAlreadyExistsError",
    "TopicDescription",
    "TopicInfo",
    "TopicPartition",
    "UnknownGroupError",
    "UnknownMemberError",
    "UnknownProducerIdError",
    "UnknownProducerIdFatalError",
    "UnknownTopicOrPartitionError",
    "key_hash",
    "partition_for_key",
]
