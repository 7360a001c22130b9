"""The records of ``__consumer_offsets``: keys, values, and which partition a group uses.

Every piece of group state that must survive a restart is a record in the
internal topic, so the log (and any replica of it) carries it and the
cleaner compacts it (the newest record per key wins; a ``None`` value, a
tombstone, deletes the key):

    key                                   value
    [1, group, topic, partition]          [1, offset, leader_epoch, metadata, commit_time_ms]
    [2, group]                            [2, group_epoch, assignor]

Keys and values are msgpack arrays whose first element is a type tag (msgspec
tagged unions, ``array_like``).  The key of one commit is the same bytes every
time (msgspec's msgpack encoding is deterministic), which is all compaction
compares.  Values evolve like wire messages: fields are appended with defaults.

A group's records all go to partition ``crc32c(group id) % partitions``, so one
partition holds a group's whole history in order.
"""

from __future__ import annotations

from typing import Final

import msgspec

from client.records.header import crc32c
from client.types import TopicPartition

OFFSET_COMMIT_TAG: Final = 1
GROUP_METADATA_TAG: Final = 2


class OffsetCommitKey(msgspec.Struct, array_like=True, frozen=True, tag=OFFSET_COMMIT_TAG):
    group: str
    topic: str
    partition: int

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class GroupMetadataKey(msgspec.Struct, array_like=True, frozen=True, tag=GROUP_METADATA_TAG):
    group: str


class OffsetCommitValue(msgspec.Struct, array_like=True, frozen=True, tag=OFFSET_COMMIT_TAG):
    """A committed position: the next offset to consume, the leader epoch of the last
    consumed record (-1 if unknown), free-form metadata and the broker's commit time."""

    offset: int
    leader_epoch: int = -1
    metadata: str = ""
    commit_time_ms: int = -1


class GroupMetadataValue(msgspec.Struct, array_like=True, frozen=True, tag=GROUP_METADATA_TAG):
    """The group's epoch (persisted so epochs never go back across restarts) and the
    assignor it last used."""

    group_epoch: int
    assignor: str = ""


RecordKey = OffsetCommitKey | GroupMetadataKey
RecordValue = OffsetCommitValue | GroupMetadataValue
# One record to append to the offsets topic: (encoded key, encoded value or None
# for a tombstone).
Record = tuple[bytes, bytes | None]

_encoder: Final = msgspec.msgpack.Encoder()
_key_decoder: Final = msgspec.msgpack.Decoder(RecordKey)
_value_decoder: Final = msgspec.msgpack.Decoder(RecordValue)


class BadOffsetsRecord(ValueError):
    """A record of the offsets topic does not decode (or its key and value disagree)."""


def encode_key(key: RecordKey) -> bytes:
    return _encoder.encode(key)


def encode_value(value: RecordValue | None) -> bytes | None:
    return None if value is None else _encoder.encode(value)


def decode_record(key: bytes | None, value: bytes | None) -> tuple[RecordKey, RecordValue | None]:
    """Decode one record of the offsets topic.  Raises BadOffsetsRecord."""
    if key is None:
        raise BadOffsetsRecord("offsets record without a key")
    try:
        decoded_key = _key_decoder.decode(key)
        decoded_value = None if value is None else _value_decoder.decode(value)
    except msgspec.DecodeError as error:
        raise BadOffsetsRecord(f"offsets record does not decode: {error}") from error
    if decoded_value is not None:
        expected = (
            OffsetCommitValue if isinstance(decoded_key, OffsetCommitKey) else GroupMetadataValue
        )
        if not isinstance(decoded_value, expected):
            raise BadOffsetsRecord(f"{type(decoded_key).__name__} with a {type(decoded_value)}")
    return decoded_key, decoded_value


def partition_for_group(group_id: str, partitions: int) -> int:
    """The offsets-topic partition that holds ``group_id``'s records: stable across
    processes and versions (CRC-32C, not Python's salted ``hash``)."""
    assert partitions > 0, partitions
    return crc32c(group_id.encode()) % partitions
