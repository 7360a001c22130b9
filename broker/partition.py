"""One partition as the request handlers see it: a storage log plus the trio plumbing
around it (an append lock, long-poll waiters, the maintenance schedule).

Every call into broker/storage's log is in this module, so the rest of the broker
does not depend on the storage API's details.  An append validates each batch's
header and CRC (client.records.header.iter_batches), lets the log stamp offsets,
and wakes every Fetch waiting on the partition.  Batches of an idempotent producer
first pass the partition's producer-state check (broker/producer_state.py): a
retried duplicate is answered with its first offsets instead of being appended.
No per-record work anywhere.

Concurrency: one trio task at a time appends (``_append_lock``), because the log
assigns offsets; reads may run concurrently with an append (the log hands out
reference-counted file regions).  Everything runs on the event-loop thread except
what the log itself sends to worker threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from broker.logging import get_logger
from broker.producer_state import REBUILD_SCAN_BYTES_MAX, ProducerStateTable, Verdict
from broker.storage.async_log import AsyncLog
from broker.storage.config import FlushPolicy, LogConfig
from broker.storage.file_handle import FileRegion
from broker.waiting import Waiter, WakeReason
from client.errors import (
    InvalidBatchError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    UnknownTopicOrPartitionError,
)
from client.records.header import BatchHeader, iter_batches


@dataclass(frozen=True)
class AppendResult:
    base_offset: int
    last_offset: int
    log_start_offset: int
    log_append_time_ms: int


@dataclass(frozen=True)
class PartitionStats:
    log_start_offset: int
    log_end_offset: int
    size_bytes: int
    segment_count: int


def partition_directory(data_dir: Path, topic: str, partition: int) -> Path:
    """``<data_dir>/<topic>-<partition>``: unambiguous because a topic name is
    recovered with ``rpartition("-")`` and a partition number has no dash."""
    return data_dir / f"{topic}-{partition}"


class Partition:
    """A leader partition on this node (every partition, on one node)."""

    def __init__(self, topic: str, index: int, log: AsyncLog, config: LogConfig) -> None:
        self.topic = topic
        self.index = index
        self.config = config
        self._log = log
        self._append_lock = trio.Lock()
        # Idempotent produce (broker/producer_state.py), rebuilt by open().
        self.producer_states = ProducerStateTable()
        self._waiters: set[Waiter] = set()
        # Raised by leader elections (replication); read by the metadata view.
        self.leader_epoch = 0
        # Counts truncations of the log: a fetch position taken before one is stale.
        self.truncations = 0
        self.closed = False
        self.logger = get_logger(topic=topic, partition=index)

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        topic: str,
        index: int,
        config: LogConfig,
        clock_ms: Callable[[], int],
    ) -> Partition:
        """Open (or create, or recover) the partition's log in a worker thread.
        Raises LogCorruptError, StorageError."""
        log = await AsyncLog.open(
            partition_directory(data_dir, topic, index),
            config,
            clock_ms=clock_ms,
            topic=topic,
            partition=index,
        )
        partition = cls(topic, index, log, config)
        states = partition.producer_states
        await trio.to_thread.run_sync(
            lambda: states.replay(log.log.tail_header_fields(REBUILD_SCAN_BYTES_MAX))
        )
        return partition

    # -- reads ------------------------------------------------------------------------

    @property
    def log_start_offset(self) -> int:
        return self._log.start_offset

    @property
    def log_end_offset(self) -> int:
        return self._log.end_offset

    @property
    def high_watermark(self) -> int:
        # One node: everything appended is committed.
        return self._log.end_offset

    def stats(self) -> PartitionStats:
        return PartitionStats(
            self._log.start_offset,
            self._log.end_offset,
            self._log.log.size_bytes,
            self._log.log.segment_count,
        )

    def read(self, offset: int, max_bytes: int, *, whole_batch: bool) -> FileRegion:
        """Whole batches from ``offset`` up to ``max_bytes``; with ``whole_batch``
        at least the first batch even when it is bigger.  The caller releases the
        region.  Raises OffsetOutOfRangeError, UnknownTopicOrPartitionError."""
        self._check_open()
        if not self.log_start_offset <= offset <= self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{self.log_start_offset}, {self.log_end_offset}]"
            )
        region = self._log.read(offset, max_bytes)
        if region.length > max_bytes and not whole_batch:
            region.release()
            return FileRegion.empty(offset)
        return region

    def offset_for_timestamp(self, timestamp_ms: int) -> tuple[int, int] | None:
        """``(offset, timestamp_ms)``: the base offset of the first batch whose max
        timestamp is >= ``timestamp_ms`` and the timestamp of its first record
        (batch granularity: records are not decoded), or None."""
        self._check_open()
        offset = self._log.offset_for_timestamp(timestamp_ms)
        if offset is None:
            return None
        return offset, self._log.log.batch_at(offset).first_timestamp_ms

    # -- appends ----------------------------------------------------------------------

    async def append(self, payload: memoryview) -> AppendResult:
        """Append a Produce payload (whole batches back to back).  Every header and
        CRC is checked first (:meth:`_checked_headers`), the log stamps the offsets;
        with FlushPolicy.EVERY_APPEND it returns once the bytes are fsynced.

        Batches with a producer id go through the idempotence check one by one,
        in order (header fields only): a retried batch already in the log is not
        appended again and answers with its remembered offsets.

        Raises RecordBatchError subclasses (bad header, CRC, size: nothing is
        appended), OutOfOrderSequenceError (batches before the offending one are
        appended), UnknownTopicOrPartitionError (deleted meanwhile), StorageError.
        """
        headers = self._checked_headers(payload)
        lock = self._append_lock
        try:
            lock.acquire_nowait()  # uncontended (the usual case): no scheduler trip
        except trio.WouldBlock:
            await lock.acquire()
        try:
            self._check_open()
            try:
                result = self._append_batches(payload, headers)
            finally:
                # With the every-append policy the acknowledgement waits for the
                # disk -- also for the batches before an out-of-order one.
                if self._log.log.needs_flush():
                    await self._log.flush()
        finally:
            lock.release()
        self.check_invariants()
        self.wake_waiters()
        return result

    def can_append_now(self) -> bool:
        """Whether :meth:`append_now` may be used: no append in progress and the
        acknowledgement need not wait for the disk (any policy but every-append;
        an interval flush falling due is then done by the maintenance task, within
        its 100 ms tick)."""
        return (
            not self._append_lock.locked()
            and not self.closed
            and self._log.log.config.flush_policy is not FlushPolicy.EVERY_APPEND
        )

    def append_now(self, payload: memoryview) -> AppendResult:
        """:meth:`append` without any wait, for when :meth:`can_append_now` said so
        (checked again, as a programmer error).  Raises like :meth:`append`."""
        assert not self._append_lock.locked() and not self.closed, (self.topic, self.index)
        headers = self._checked_headers(payload)
        result = self._append_batches(payload, headers)
        self.check_invariants()
        self.wake_waiters()
        return result

    def _checked_headers(self, payload: memoryview) -> list[BatchHeader]:
        """Every header and CRC, checked once here (the log takes the parsed
        headers): a bad batch anywhere refuses the whole payload before anything is
        written.  Raises RecordBatchError subclasses."""
        if payload.nbytes == 0:
            raise InvalidBatchError("produce payload for a partition holds no batch")
        return iter_batches(payload, batch_bytes_max=self._log.log.config.batch_bytes_max)

    def _append_batches(self, payload: memoryview, headers: list[BatchHeader]) -> AppendResult:
        """Append (no flush); batches with a producer id go through the idempotence
        check one by one, in order, and a retried batch already in the log is not
        appended again: it answers with its remembered offsets.  The result spans
        the first to the last batch, duplicates included.  Raises
        OutOfOrderSequenceError (the batches before are appended), StorageError."""
        if len(headers) == 1:
            if headers[0].producer_id < 0:
                return self._append_to_log(payload, headers)
            return self._append_sequenced(payload, headers[0], headers)
        if not any(header.producer_id >= 0 for header in headers):
            return self._append_to_log(payload, headers)
        base_offset = last_offset = -1
        append_time_ms = -1
        for header in headers:
            batch = payload[header.position : header.end]
            if header.producer_id < 0:
                result = self._append_to_log(batch, None)
            else:
                try:
                    result = self._append_sequenced(batch, header, None)
                except OutOfOrderSequenceError:
                    if base_offset >= 0:
                        self.wake_waiters()  # earlier batches of the payload went in
                    raise
            if base_offset < 0:
                base_offset = result.base_offset
                append_time_ms = result.log_append_time_ms
            last_offset = result.last_offset
        return AppendResult(base_offset, last_offset, self._log.start_offset, append_time_ms)

    def _append_sequenced(
        self, batch: memoryview, header: BatchHeader, headers: list[BatchHeader] | None
    ) -> AppendResult:
        """One batch with a producer id, through the idempotence check: appended
        and remembered, or -- a retry already in the log -- answered with its
        remembered offsets.  ``headers``: ``batch``'s, if already parsed.  Raises
        InvalidBatchError, OutOfOrderSequenceError (nothing appended), StorageError."""
        producer_id = header.producer_id
        epoch, sequence = header.producer_epoch, header.base_sequence
        if epoch < 0 or sequence < 0:
            raise InvalidBatchError(
                f"producer {producer_id}: epoch {epoch} and base sequence "
                f"{sequence} must not be negative"
            )
        states = self.producer_states
        verdict, remembered = states.check(producer_id, epoch, sequence)
        if verdict is Verdict.DUPLICATE:
            assert remembered is not None
            self.logger.info("duplicate batch", producer_id=producer_id, base_sequence=sequence)
            return AppendResult(
                remembered.base_offset, remembered.last_offset, self._log.start_offset, -1
            )
        result = self._append_to_log(batch, headers)
        states.record(
            producer_id,
            epoch,
            sequence,
            header.record_count,
            result.base_offset,
            result.last_offset,
        )
        return result

    def _append_to_log(
        self, payload: memoryview, headers: list[BatchHeader] | None
    ) -> AppendResult:
        """``headers``: ``payload``'s, already validated (None: the log parses them)."""
        log = self._log.log
        end_before = log.end_offset
        appended = log.append(payload, headers=headers)
        assert appended.base_offset == end_before, (appended, end_before)
        assert appended.last_offset >= appended.base_offset >= 0, appended
        return AppendResult(
            appended.base_offset,
            appended.last_offset,
            log.start_offset,
            appended.log_append_time_ms,
        )

    # -- long-poll waiters ------------------------------------------------------------

    def add_waiter(self, waiter: Waiter) -> None:
        self._waiters.add(waiter)

    def remove_waiter(self, waiter: Waiter) -> None:
        self._waiters.discard(waiter)

    def wake_waiters(self, reason: WakeReason = WakeReason.HIGH_WATERMARK) -> None:
        """Wake (and forget) every waiter: the high watermark advanced, the
        leadership changed, the log was truncated or closed (``reason``)."""
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            waiter.wake(reason)

    # -- maintenance ------------------------------------------------------------------

    async def maintain(self) -> None:
        """Flush (FlushPolicy.INTERVAL) and enforce retention if due (the log keeps
        the schedule).  Raises StorageError."""
        if self.closed:
            return
        start_before = self._log.start_offset
        await self._log.maintain()
        if self._log.start_offset != start_before:
            self.logger.info("retention", log_start_offset=self._log.start_offset)

    async def close(self) -> None:
        """Flush and close the log (writing its clean-shutdown marker); wakes
        waiters so a long poll answers now.  Idempotent.  Raises StorageError."""
        if self.closed:
            return
        async with self._append_lock:
            self.closed = True
            self.wake_waiters()
            await self._log.close()

    def check_invariants(self) -> None:
        """0 <= log start <= high watermark <= log end."""
        if self.closed:
            return
        start, end = self._log.start_offset, self._log.end_offset
        assert 0 <= start <= self.high_watermark <= end, (self.topic, self.index, start, end)

    def _check_open(self) -> None:
        if self.closed:
            raise UnknownTopicOrPartitionError(f"{self.topic}-{self.index} is closed")
