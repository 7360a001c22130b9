"""One partition as the request handlers see it: a storage log plus the trio plumbing
around it (an append lock, long-poll waiters, the maintenance schedule).

Every call into broker/storage's log is in this module, so the rest of the broker
does not depend on the storage API's details.  An append validates each batch's
header and CRC (client.records.header.iter_batches), lets the log stamp offsets,
and wakes every Fetch waiting on the partition.  No per-record work anywhere.

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
from broker.storage.async_log import AsyncLog
from broker.storage.config import LogConfig
from broker.storage.file_handle import FileRegion
from client.errors import (
    InvalidBatchError,
    OffsetOutOfRangeError,
    UnknownTopicOrPartitionError,
)


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
        self._waiters: set[trio.Event] = set()
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
        return cls(topic, index, log, config)

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

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch whose max timestamp is >= ``timestamp_ms``
        (batch granularity: records are not decoded), or None."""
        self._check_open()
        return self._log.offset_for_timestamp(timestamp_ms)

    # -- appends ----------------------------------------------------------------------

    async def append(self, payload: memoryview) -> AppendResult:
        """Append a Produce payload (whole batches back to back).  The log validates
        every header and CRC and stamps the offsets; with FlushPolicy.EVERY_APPEND
        it returns once the bytes are fsynced.

        Raises RecordBatchError subclasses (bad header, CRC, size: nothing is
        appended), UnknownTopicOrPartitionError (deleted meanwhile), StorageError.
        """
        if payload.nbytes == 0:
            raise InvalidBatchError("produce payload for a partition holds no batch")
        lock = self._append_lock
        try:
            lock.acquire_nowait()  # uncontended (the usual case): no scheduler trip
        except trio.WouldBlock:
            await lock.acquire()
        try:
            self._check_open()
            end_before = self._log.end_offset
            appended = await self._log.append(payload)
        finally:
            lock.release()
        assert appended.base_offset == end_before, (appended, end_before)
        assert appended.last_offset >= appended.base_offset >= 0, appended
        self.check_invariants()
        self.wake_waiters()
        return AppendResult(
            appended.base_offset,
            appended.last_offset,
            self._log.start_offset,
            appended.log_append_time_ms,
        )

    # -- long-poll waiters ------------------------------------------------------------

    def add_waiter(self, event: trio.Event) -> None:
        self._waiters.add(event)

    def remove_waiter(self, event: trio.Event) -> None:
        self._waiters.discard(event)

    def wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for event in waiters:
            event.set()

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
