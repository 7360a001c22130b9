"""Tests for broker.groups.pending: records held until the high watermark passes them."""

from __future__ import annotations

from broker.groups.pending import PendingRecord, PendingRecords, pending_group
from broker.groups.records import (
    GroupMetadataKey,
    GroupMetadataValue,
    OffsetCommitKey,
    OffsetCommitValue,
    encode_key,
    encode_value,
)


def record(offset: int, group_id: str = "g") -> PendingRecord:
    key = encode_key(OffsetCommitKey(group_id, "t", 0))
    return PendingRecord(offset, group_id, key, encode_value(OffsetCommitValue(offset)))


def test_commits_and_tombstones_wait_epoch_records_do_not() -> None:
    """A commit and any tombstone wait for the high watermark; an epoch value does not."""
    commit_key = encode_key(OffsetCommitKey("g", "t", 0))
    metadata_key = encode_key(GroupMetadataKey("g"))
    assert pending_group(commit_key, encode_value(OffsetCommitValue(3))) == "g"
    assert pending_group(commit_key, None) == "g"
    assert pending_group(metadata_key, None) == "g"
    assert pending_group(metadata_key, encode_value(GroupMetadataValue(4))) is None


def test_records_come_out_in_log_order_below_the_high_watermark() -> None:
    """Records added out of order are taken in log order, only those below the high
    watermark, each once."""
    pending = PendingRecords()
    for offset in (7, 3, 5):
        pending.add(0, record(offset))
    pending.check_invariants(lambda group_id: 0, None)
    assert pending.take_replicated(0, 3) == []
    assert [r.offset for r in pending.take_replicated(0, 6)] == [3, 5]
    assert pending.has_group(0, "g") and not pending.has_group(0, "other")
    assert [r.offset for r in pending.take_replicated(0, 100)] == [7]
    assert not pending.has_partition(0)


def test_forget_drops_only_a_failed_appends_records() -> None:
    """Forgetting one append's records keeps another's (even at equal content)."""
    pending = PendingRecords()
    failed, other = record(4), record(5)
    pending.add(1, failed)
    pending.add(1, other)
    pending.forget(1, [failed])
    assert pending.take_replicated(1, 10) == [other]
    pending.add(1, record(11))
    pending.drop(1)
    assert not pending.has_partition(1)
    pending.check_invariants(lambda group_id: 1, set())
