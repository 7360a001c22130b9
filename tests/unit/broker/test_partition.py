"""Partition: producer state tied to its log, truncation as one operation, the high
watermark as the bound of reads, the leader epoch (trio, a log in a temp dir)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from broker.partition import Partition
from broker.partition_state import PartitionState
from broker.storage.async_log import AsyncLog
from broker.storage.config import FlushPolicy, LogConfig
from broker.waiting import WakeReason
from client.errors import (
    BatchTooLargeError,
    NotLeaderError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    UnknownProducerIdError,
)
from client.records.builder import BatchBuilder
from client.records.header import iter_batches

START_MS = 1_700_000_000_000
CONFIG = LogConfig.from_mapping({"segment_bytes": 4096, "index_interval_bytes": 256})
PRODUCER = 42


class Woken:
    """A waiter that records why it was woken."""

    def __init__(self) -> None:
        self.reasons: list[WakeReason] = []

    def wake(self, reason: WakeReason) -> None:
        self.reasons.append(reason)


def batch(
    count: int = 1, *, producer_id: int = -1, epoch: int = -1, sequence: int = -1
) -> memoryview:
    """A writable batch of ``count`` records (sequenced when ``producer_id >= 0``)."""
    builder = BatchBuilder(producer_id=producer_id, producer_epoch=epoch, base_sequence=sequence)
    for index in range(count):
        builder.append(b"v%d" % index, timestamp_ms=START_MS + index)
    return memoryview(builder.build())


def sequenced(sequence: int, count: int = 1, *, epoch: int = 0) -> memoryview:
    return batch(count, producer_id=PRODUCER, epoch=epoch, sequence=sequence)


async def open_partition(directory: Path) -> Partition:
    return await Partition.open(directory, "t", 0, CONFIG, lambda: START_MS)


@pytest.fixture
async def partition(tmp_path: Path) -> AsyncIterator[Partition]:
    opened = await open_partition(tmp_path)
    yield opened
    await opened.close()


async def test_retry_after_truncation_is_appended_again(partition: Partition) -> None:
    """Producer 42 appends sequences 0-1 (offsets 0-1) and 2 (offset 2); after a
    truncation to offset 2 a retry of sequence 2 is appended at offset 2 again,
    not answered as a duplicate at an offset that no longer exists."""
    assert partition.append_now(sequenced(0, 2)).base_offset == 0
    assert partition.append_now(sequenced(2)).base_offset == 2
    assert await partition.truncate_to(2) == 2
    partition.check_invariants()
    retried = partition.append_now(sequenced(2))
    assert (retried.base_offset, retried.last_offset) == (2, 2)
    assert partition.log_end_offset == partition.high_watermark == 3
    again = partition.append_now(sequenced(0, 2))  # still remembered: a duplicate
    assert (again.base_offset, again.last_offset) == (0, 1)
    partition.check_invariants()


async def test_truncation_rebuilds_a_producer_from_the_log(partition: Partition) -> None:
    """When every batch the producer state remembered is cut away, the producer's
    last sequence comes back from its older batches still in the log."""
    for sequence in range(7):
        partition.append_now(sequenced(sequence))
    assert await partition.truncate_to(2) == 2
    partition.check_invariants()
    assert partition.append_now(sequenced(2)).base_offset == 2
    with pytest.raises(OutOfOrderSequenceError):
        partition.append_now(sequenced(5))


async def test_truncation_clamps_counts_and_wakes(partition: Partition) -> None:
    """truncate_to drops a batch holding the offset whole, clamps the high watermark,
    counts the truncation and wakes waiters; at or past the end it is a no-op; below
    the log start it raises OffsetOutOfRangeError."""
    partition.append_now(batch(3))
    partition.append_now(batch(3))
    woken = Woken()
    partition.add_waiter(woken)
    assert await partition.truncate_to(4) == 3
    assert woken.reasons == [WakeReason.TRUNCATED]
    assert (partition.log_end_offset, partition.high_watermark, partition.truncations) == (3, 3, 1)
    assert await partition.truncate_to(3) == 3
    assert partition.truncations == 1
    with pytest.raises(OffsetOutOfRangeError):
        await partition.truncate_to(-1)
    with pytest.raises(OffsetOutOfRangeError):
        partition.read(4, 1 << 20, whole_batch=True)
    partition.check_invariants()


async def test_truncation_is_durable_and_reopen_agrees(tmp_path: Path) -> None:
    """After a truncation and a reopen, the log end and the producer state are the
    same as before the reopen."""
    partition = await open_partition(tmp_path)
    for sequence in range(4):
        partition.append_now(sequenced(sequence))
    await partition.truncate_to(2)
    await partition.close()
    reopened = await open_partition(tmp_path)
    try:
        reopened.check_invariants()
        assert reopened.log_end_offset == reopened.high_watermark == 2
        assert reopened.append_now(sequenced(1)).base_offset == 1  # a duplicate
        assert reopened.append_now(sequenced(2)).base_offset == 2
    finally:
        await reopened.close()


async def test_nothing_reads_the_log_while_it_is_cut(
    partition: Partition, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the cut runs in its worker thread, reads find nothing, a time lookup
    asks to retry, appends must wait, and stats answer from before the cut."""
    partition.append_now(batch(2))
    partition.append_now(batch(2))
    release = trio.Event()
    real_truncate: Callable[[AsyncLog, int], Awaitable[int]] = AsyncLog.truncate_to

    async def held_truncate(log: AsyncLog, offset: int) -> int:
        await release.wait()
        return await real_truncate(log, offset)

    monkeypatch.setattr(AsyncLog, "truncate_to", held_truncate)
    before = partition.stats()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partition.truncate_to, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert partition.read(0, 1 << 20, whole_batch=True).length == 0
        with pytest.raises(NotLeaderError):
            partition.offset_for_timestamp(START_MS)
        assert not partition.can_append_now()
        assert partition.stats() == before
        release.set()
    assert partition.stats().log_end_offset == 2
    with partition.read(0, 1 << 20, whole_batch=True) as region:
        assert region.next_offset == 2
    partition.check_invariants()


async def test_unknown_producer_must_start_at_sequence_zero(partition: Partition) -> None:
    """A producer the partition does not know is refused with UnknownProducerIdError
    unless its batch starts at sequence 0; in a payload of several batches the ones
    before are appended, made visible, and waiters woken."""
    with pytest.raises(UnknownProducerIdError):
        partition.append_now(sequenced(5))
    assert partition.log_end_offset == 0
    woken = Woken()
    partition.add_waiter(woken)
    payload = memoryview(bytearray(bytes(batch(2)) + bytes(sequenced(3))))
    with pytest.raises(UnknownProducerIdError):
        partition.append_now(payload)
    assert partition.log_end_offset == partition.high_watermark == 2
    assert woken.reasons == [WakeReason.HIGH_WATERMARK]
    assert partition.append_now(sequenced(0)).base_offset == 2
    partition.check_invariants()


async def test_new_epoch_must_start_at_sequence_zero(partition: Partition) -> None:
    """A newer producer epoch not at sequence 0 is out of order; at 0 it appends."""
    partition.append_now(sequenced(0, 3))
    with pytest.raises(OutOfOrderSequenceError):
        partition.append_now(sequenced(3, epoch=1))
    assert partition.append_now(sequenced(0, epoch=1)).base_offset == 3
    with pytest.raises(OutOfOrderSequenceError):
        partition.append_now(sequenced(3, epoch=0))


async def test_reads_stop_at_the_high_watermark(
    partition: Partition, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read serves nothing at or past the high watermark unless given a bound of
    its own, and a time lookup finds no batch there (with one replica the
    watermark follows every append, so it is held back here)."""
    monkeypatch.setattr(PartitionState, "advance_high_watermark", lambda self, offset: None)
    partition.append_now(batch(2))
    assert (partition.high_watermark, partition.log_end_offset) == (0, 2)
    assert partition.read(0, 1 << 20, whole_batch=True).length == 0
    assert partition.offset_for_timestamp(START_MS) is None
    end = partition.log_end_offset
    with partition.read(0, 1 << 20, whole_batch=True, end_offset_max=end) as region:
        assert region.next_offset == 2


async def test_time_lookup_answers_below_the_high_watermark(partition: Partition) -> None:
    """offset_for_timestamp finds the first batch reaching the time, with its first
    record's timestamp."""
    partition.append_now(batch(2))
    partition.append_now(batch(3))
    assert partition.offset_for_timestamp(START_MS) == (0, START_MS)
    assert partition.offset_for_timestamp(START_MS + 2) == (2, START_MS)
    assert partition.offset_for_timestamp(START_MS + 3) is None


async def test_leader_epoch_is_stamped_and_never_goes_back(partition: Partition) -> None:
    """Appended batches carry the partition's leader epoch; it cannot go back."""
    assert partition.leader_epoch == 0
    partition.set_leader_epoch(3)
    partition.append_now(batch(1))
    with partition.read(0, 1 << 20, whole_batch=True) as region:
        assert iter_batches(region.read_bytes())[0].leader_epoch == 3
    with pytest.raises(AssertionError):
        partition.set_leader_epoch(2)


async def test_every_append_policy_acknowledges_after_the_flush(tmp_path: Path) -> None:
    """With FlushPolicy.EVERY_APPEND, append_now is not offered and append advances
    the high watermark once the batches are on disk."""
    config = LogConfig.from_mapping({"flush_policy": "every-append"})
    partition = await Partition.open(tmp_path, "t", 0, config, lambda: START_MS)
    try:
        assert not partition.can_append_now()
        result = await partition.append(sequenced(0, 2))
        assert (result.base_offset, partition.high_watermark) == (0, 2)
        partition.check_invariants()
    finally:
        await partition.close()


async def test_altered_config_reaches_the_partition_and_its_log(partition: Partition) -> None:
    """An altered topic config takes effect on an open partition: a flush policy of
    every-append stops inline (unflushed) acknowledgements, and the log's batch limit
    refuses a batch the old one allowed."""
    assert partition.can_append_now()
    stricter = msgspec.structs.replace(
        partition.config, flush_policy=FlushPolicy.EVERY_APPEND, batch_bytes_max=1024
    )
    partition.set_config(stricter)
    assert not partition.can_append_now()
    with pytest.raises(BatchTooLargeError):
        await partition.append(batch(200))
    partition.check_invariants()
