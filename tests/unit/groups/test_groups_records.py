"""Tests for broker.groups.records: the __consumer_offsets key/value codec."""

from __future__ import annotations

import msgspec
import pytest

from broker.groups.records import (
    BadOffsetsRecord,
    GroupMetadataKey,
    GroupMetadataValue,
    OffsetCommitKey,
    OffsetCommitValue,
    decode_record,
    encode_key,
    encode_value,
    partition_for_group,
)


def test_offset_commit_round_trips() -> None:
    """A commit key and value decode back to what was encoded."""
    key = OffsetCommitKey("g", "orders", 3)
    value = OffsetCommitValue(42, 7, "note", 1_700_000_000_000)
    assert decode_record(encode_key(key), encode_value(value)) == (key, value)


def test_group_metadata_round_trips_and_tombstones_decode() -> None:
    """A group key with a value or with None (a tombstone) decodes."""
    key = GroupMetadataKey("g")
    value = GroupMetadataValue(5, "sticky")
    assert decode_record(encode_key(key), encode_value(value)) == (key, value)
    assert decode_record(encode_key(key), None) == (key, None)


def test_keys_are_deterministic_bytes() -> None:
    """The same key always encodes to the same bytes (compaction compares bytes)."""
    assert encode_key(OffsetCommitKey("g", "t", 1)) == encode_key(OffsetCommitKey("g", "t", 1))
    assert encode_key(OffsetCommitKey("g", "t", 1)) != encode_key(OffsetCommitKey("g", "t", 2))
    assert encode_key(GroupMetadataKey("g")) != encode_key(OffsetCommitKey("g", "", 0))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (None, b"x"),
        (b"\xc1", None),
        (msgspec.msgpack.encode([9, "g"]), None),
        (encode_key(GroupMetadataKey("g")), encode_value(OffsetCommitValue(1))),
        (encode_key(OffsetCommitKey("g", "t", 0)), b"\x93\x01"),
    ],
)
def test_bad_records_raise(key: bytes | None, value: bytes | None) -> None:
    """Missing keys, unknown tags, garbage and key/value type mismatches are
    BadOffsetsRecord, never a crash."""
    with pytest.raises(BadOffsetsRecord):
        decode_record(key, value)


def test_values_evolve_by_appending_fields() -> None:
    """An older, shorter commit value decodes with defaults for the missing fields."""
    short = msgspec.msgpack.encode([1, 10])
    _, value = decode_record(encode_key(OffsetCommitKey("g", "t", 0)), short)
    assert value == OffsetCommitValue(10, -1, "", -1)


def test_partition_for_group_is_stable_and_spread() -> None:
    """The offsets partition of a group is a fixed function of its id (CRC-32C), and
    many groups spread over all partitions."""
    assert partition_for_group("payments", 8) == partition_for_group("payments", 8)
    assert partition_for_group("payments", 8) == 2  # pinned: changing it moves every group
    assert {partition_for_group(f"group-{n}", 8) for n in range(200)} == set(range(8))
