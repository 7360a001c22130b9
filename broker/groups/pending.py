"""Pending records: commits and tombstones in ``__consumer_offsets`` not yet replicated.

A record of the offsets topic may be applied to the group coordinator only once
the partition's high watermark passes it: below the high watermark every
in-sync replica holds it, so the next leader has it too; above, a leader change
may still lose it, and an offset shown to a client then would go backwards.

:class:`PendingRecords` keeps, per offsets partition, the records appended (or,
on a new leader, read from its log) that the high watermark has not passed yet,
in log order.  The trio shell (service.py) adds them after an append or a load,
takes the ones below the high watermark to apply them, and forgets a failed
append's.  Epoch records (a group metadata value) never wait: applying one
early only makes a later epoch skip numbers (:func:`pending_group`).

No I/O, no clock: plain lists, a few entries each (one per commit in flight).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection
from dataclasses import dataclass

from broker.groups.records import GroupMetadataKey, decode_record


@dataclass(frozen=True)
class PendingRecord:
    """A commit or tombstone at ``offset`` of its offsets partition, of ``group_id``."""

    offset: int
    group_id: str
    key: bytes | None
    value: bytes | None


def pending_group(key: bytes | None, value: bytes | None) -> str | None:
    """The group of a record that must wait for the high watermark before it is
    applied (a commit or a tombstone); None for an epoch record, applied at once.
    Raises BadOffsetsRecord."""
    decoded_key, decoded_value = decode_record(key, value)
    if isinstance(decoded_key, GroupMetadataKey) and decoded_value is not None:
        return None
    return decoded_key.group


class PendingRecords:
    """Per offsets partition, its records awaiting the high watermark, by offset."""

    def __init__(self) -> None:
        self._by_partition: dict[int, list[PendingRecord]] = {}

    def add(self, index: int, record: PendingRecord) -> None:
        """Hold ``record`` of offsets partition ``index`` (appends finishing out of
        order still leave the list in log order)."""
        pending = self._by_partition.setdefault(index, [])
        bisect.insort(pending, record, key=lambda entry: entry.offset)

    def take_replicated(self, index: int, high_watermark: int) -> list[PendingRecord]:
        """Remove and return, in log order, partition ``index``'s records below
        ``high_watermark``."""
        pending = self._by_partition.get(index)
        if not pending or pending[0].offset >= high_watermark:
            return []
        done = bisect.bisect_left(pending, high_watermark, key=lambda entry: entry.offset)
        taken = pending[:done]
        del pending[:done]
        return taken

    def forget(self, index: int, records: Collection[PendingRecord]) -> None:
        """Drop those of ``records`` (a failed append's) still held, unapplied."""
        pending = self._by_partition.get(index)
        if pending:
            gone = {id(record) for record in records}
            pending[:] = [record for record in pending if id(record) not in gone]

    def drop(self, index: int) -> None:
        """Forget every record of partition ``index`` (this broker stopped leading it,
        or reloads it)."""
        self._by_partition.pop(index, None)

    def has_partition(self, index: int) -> bool:
        return bool(self._by_partition.get(index))

    def has_group(self, index: int, group_id: str) -> bool:
        """Whether a record of ``group_id`` (whose partition is ``index``) is held."""
        return any(record.group_id == group_id for record in self._by_partition.get(index, ()))

    def check_invariants(
        self, partition_of: Callable[[str], int], coordinated: Collection[int] | None
    ) -> None:
        """Each partition's records are in log order at distinct offsets, belong to
        groups of that partition (``partition_of``), and are held only for
        partitions in ``coordinated`` (None: every one)."""
        for index, pending in self._by_partition.items():
            offsets = [record.offset for record in pending]
            assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), offsets
            assert coordinated is None or index in coordinated or not pending, index
            for record in pending:
                assert partition_of(record.group_id) == index, (record, index)
