"""One partition as the request handlers see it: a replica's state around its log.

Three layers, each with one job:

- :class:`broker.partition_state.PartitionState` (sans-I/O) holds the numbers
  replication reasons about: log start and end, the high watermark, the leader
  epoch, a truncation count, and the idempotent-produce table
  (broker/producer_state.py);
- :class:`broker.storage.async_log.AsyncLog` is the only door to the storage log;
- :class:`Partition` (this module, trio) does the I/O and keeps the state in step
  with the log: it appends, reads, truncates and runs the maintenance round.

An append validates each batch's header and CRC (client.records.header.iter_batches),
lets the log stamp offsets and the leader epoch, and records the new log end in the
state.  Batches of an idempotent producer first pass the producer-state check: a
retried duplicate is answered with its first offsets instead of being appended.
With one replica everything appended is committed: after the append (and its fsync
under FlushPolicy.EVERY_APPEND) the high watermark advances to the log end and every
Fetch waiting on the partition is woken.  Reads serve what lies below the high
watermark.  No per-record work anywhere.

Concurrency: one trio task at a time appends or truncates (``_append_lock``),
because the log assigns offsets; reads may run concurrently with an append (the log
hands out reference-counted file regions), but not with a truncation, which runs in
a worker thread: reads meanwhile find nothing new.  Everything else runs on the
event-loop thread.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import trio

from broker.logging import get_logger
from broker.metrics.counters import PartitionTraffic
from broker.partition_state import PartitionState
from broker.producer_state import REBUILD_SCAN_BYTES_MAX, Verdict
from broker.storage.async_log import AsyncLog
from broker.storage.config import FlushPolicy, LogConfig
from broker.storage.file_handle import FileRegion
from broker.waiting import Waiter, WakeReason
from client.errors import (
    DistributaryError,
    InvalidBatchError,
    NotLeaderError,
    OffsetOutOfRangeError,
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
    """A leader partition on this node (every partition, on one node).

    A partition whose log failed to open (:meth:`failed`) has no log: it is closed
    from the start, and every request for it raises its ``failure``.
    """

    _log: AsyncLog

    def __init__(
        self,
        topic: str,
        index: int,
        log: AsyncLog | None,
        config: LogConfig,
        failure: DistributaryError | None = None,
    ) -> None:
        assert (log is None) == (failure is not None), (topic, index)
        self.topic = topic
        self.index = index
        self.config = config
        self.failure = failure
        if log is not None:
            self._log = log
            self._state = PartitionState(log.start_offset, log.end_offset)
        else:
            self._state = PartitionState(0, 0)
        self._flush_every_append = config.flush_policy is FlushPolicy.EVERY_APPEND
        self._append_lock = trio.Lock()
        # While a truncation runs in a worker thread, reads keep off the log and
        # stats() answers with this snapshot taken before it.
        self._truncating = False
        self._stats_before_truncation: PartitionStats | None = None
        self._waiters: set[Waiter] = set()
        self.closed = failure is not None
        self.logger = get_logger(topic=topic, partition=index)
        self.traffic = PartitionTraffic()  # produced and fetched, for the metrics

    @classmethod
    def failed(
        cls, topic: str, index: int, config: LogConfig, failure: DistributaryError
    ) -> Partition:
        """A partition whose log could not be opened: requests for it raise
        ``failure`` (LogCorruptError, StorageError) until the broker restarts."""
        return cls(topic, index, None, config, failure)

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        topic: str,
        index: int,
        config: LogConfig,
        clock_ms: Callable[[], int],
    ) -> Partition:
        """Open (or create, or recover) the partition's log in a worker thread and
        rebuild its producer state from the log's tail.  Raises LogCorruptError,
        StorageError."""
        log = await AsyncLog.open(
            partition_directory(data_dir, topic, index),
            config,
            clock_ms=clock_ms,
            topic=topic,
            partition=index,
        )
        partition = cls(topic, index, log, config)
        try:
            await partition._rebuild_producers(None)
        except BaseException:
            with trio.CancelScope(shield=True):
                await log.close()
            raise
        # One replica: everything in the log was committed.
        partition._state.advance_high_watermark(log.end_offset)
        return partition

    def set_config(self, config: LogConfig) -> None:
        """Take a topic's altered config: the log reads it from its next append, roll
        or retention pass; the flush policy decides the next acknowledgement."""
        self.config = config
        self._flush_every_append = config.flush_policy is FlushPolicy.EVERY_APPEND
        if self.failure is None:
            self._log.set_config(config)

    @property
    def storage_log(self) -> AsyncLog:
        """The partition's log, for the scrubber (broker/scrubbing.py); only of an
        open partition."""
        assert self.failure is None, (self.topic, self.index)
        return self._log

    # -- reads ------------------------------------------------------------------------

    @property
    def log_start_offset(self) -> int:
        return self._state.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._state.log_end_offset

    @property
    def high_watermark(self) -> int:
        """Consumers see the offsets below this one."""
        return self._state.high_watermark

    @property
    def leader_epoch(self) -> int:
        return self._state.leader_epoch

    @property
    def truncations(self) -> int:
        """How many truncations the partition went through since it was opened: a
        position remembered with an older count may point past the log end, or at
        records replaced since."""
        return self._state.truncations

    def set_leader_epoch(self, leader_epoch: int) -> None:
        """Stamp ``leader_epoch`` into every batch appended from now on.  Epochs never
        go back (the caller refuses a stale one first)."""
        self._state.set_leader_epoch(leader_epoch)

    def stats(self) -> PartitionStats:
        if self.failure is not None:
            return PartitionStats(0, 0, 0, 0)
        if self._stats_before_truncation is not None:
            return self._stats_before_truncation
        state = self._state
        return PartitionStats(
            state.log_start_offset,
            state.log_end_offset,
            self._log.size_bytes,
            self._log.segment_count,
        )

    def read(
        self,
        offset: int,
        max_bytes: int,
        *,
        whole_batch: bool,
        end_offset_max: int | None = None,
    ) -> FileRegion:
        """Whole batches from ``offset`` up to ``max_bytes``; with ``whole_batch`` at
        least the first batch even when it is bigger.  Never past ``end_offset_max``
        (exclusive), which is the high watermark unless given: a consumer's fetch
        reads only committed records (a replica's fetch would pass the log end).
        Empty at the bound, and while a truncation runs.  The caller releases the
        region.  Raises OffsetOutOfRangeError (``offset`` outside [log start, log
        end]), UnknownTopicOrPartitionError."""
        self._check_open()
        state = self._state
        if not state.log_start_offset <= offset <= state.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{state.log_start_offset}, {state.log_end_offset}]"
            )
        if self._truncating:
            return FileRegion.empty(offset)
        if end_offset_max is None:
            end_offset_max = state.high_watermark
        region = self._log.read(offset, max_bytes, end_offset_max=end_offset_max)
        if region.length > max_bytes and not whole_batch:
            region.release()
            return FileRegion.empty(offset)
        return region

    def offset_for_timestamp(self, timestamp_ms: int) -> tuple[int, int] | None:
        """``(offset, timestamp_ms)``: the base offset of the first batch whose max
        timestamp is >= ``timestamp_ms`` and the timestamp of its first record
        (batch granularity: records are not decoded), or None -- also when that
        batch is not below the high watermark yet.  Raises
        UnknownTopicOrPartitionError, NotLeaderError (retriable: a truncation
        runs)."""
        self._check_open()
        if self._truncating:
            raise NotLeaderError(f"{self.topic}-{self.index} is being truncated")
        offset = self._log.offset_for_timestamp(timestamp_ms)
        if offset is None or offset >= self._state.high_watermark:
            return None
        return offset, self._log.batch_at(offset).first_timestamp_ms

    def batch_timestamp_ms(self, offset: int) -> int | None:
        """The first timestamp of the batch holding ``offset`` (a header read, for
        the consumer-lag metric), None while a truncation runs.  Raises
        OffsetOutOfRangeError, StorageError, UnknownTopicOrPartitionError."""
        self._check_open()
        return None if self._truncating else self._log.batch_at(offset).first_timestamp_ms

    # -- appends ----------------------------------------------------------------------

    async def append(self, payload: memoryview) -> AppendResult:
        """Append a Produce payload (whole batches back to back).  Every header and
        CRC is checked first (:meth:`_checked_headers`), the log stamps the offsets;
        with FlushPolicy.EVERY_APPEND it returns once the bytes are fsynced.

        Batches with a producer id go through the idempotence check one by one,
        in order (header fields only): a retried batch already in the log is not
        appended again and answers with its remembered offsets.

        Raises RecordBatchError subclasses (bad header, CRC, size: nothing is
        appended), UnknownProducerIdError and OutOfOrderSequenceError (batches
        before the offending one are appended), UnknownTopicOrPartitionError
        (deleted meanwhile), StorageError.
        """
        headers = self._checked_headers(payload)
        lock = self._append_lock
        try:
            lock.acquire_nowait()  # uncontended (the usual case): no scheduler trip
        except trio.WouldBlock:
            await lock.acquire()
        try:
            self._check_open()
            end_before = self._state.log_end_offset
            try:
                result = self._append_batches(payload, headers)
            finally:
                # With the every-append policy the acknowledgement waits for the
                # disk -- also for the batches before a refused one.
                if self._log.needs_flush():
                    await self._log.flush()
                if self._state.log_end_offset != end_before:
                    self._commit_appended()
        finally:
            lock.release()
        return result

    def can_append_now(self) -> bool:
        """Whether :meth:`append_now` may be used: no append or truncation in
        progress and the acknowledgement need not wait for the disk (any policy but
        every-append; an interval flush falling due is then done by the maintenance
        task, within its 100 ms tick)."""
        return not self._append_lock.locked() and not self.closed and not self._flush_every_append

    def append_now(self, payload: memoryview) -> AppendResult:
        """:meth:`append` without any wait, for when :meth:`can_append_now` said so
        (checked again, as a programmer error).  Raises like :meth:`append`."""
        assert not self._append_lock.locked() and not self.closed, (self.topic, self.index)
        headers = self._checked_headers(payload)
        state = self._state
        end_before = state.log_end_offset
        try:
            return self._append_batches(payload, headers)
        finally:
            if state.log_end_offset != end_before:
                self._commit_appended()

    def _commit_appended(self) -> None:
        """One replica: what is appended is committed.  Advance the high watermark
        to the log end and wake the fetches waiting for it."""
        state = self._state
        state.advance_high_watermark(state.log_end_offset)
        self.wake_waiters()

    def _checked_headers(self, payload: memoryview) -> list[BatchHeader]:
        """Every header and CRC, checked once here (the log takes the parsed
        headers): a bad batch anywhere refuses the whole payload before anything is
        written.  Raises RecordBatchError subclasses."""
        if payload.nbytes == 0:
            raise InvalidBatchError("produce payload for a partition holds no batch")
        return iter_batches(payload, batch_bytes_max=self.config.batch_bytes_max)

    def _append_batches(self, payload: memoryview, headers: list[BatchHeader]) -> AppendResult:
        """Append (no flush); batches with a producer id go through the idempotence
        check one by one, in order, and a retried batch already in the log is not
        appended again: it answers with its remembered offsets.  The result spans
        the first to the last batch, duplicates included.  Raises
        UnknownProducerIdError, OutOfOrderSequenceError (the batches before are
        appended), StorageError."""
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
                result = self._append_sequenced(batch, header, None)
            if base_offset < 0:
                base_offset = result.base_offset
                append_time_ms = result.log_append_time_ms
            last_offset = result.last_offset
        return AppendResult(base_offset, last_offset, self._state.log_start_offset, append_time_ms)

    def _append_sequenced(
        self, batch: memoryview, header: BatchHeader, headers: list[BatchHeader] | None
    ) -> AppendResult:
        """One batch with a producer id, through the idempotence check: appended
        and remembered, or -- a retry already in the log -- answered with its
        remembered offsets.  ``headers``: ``batch``'s, if already parsed.  Raises
        InvalidBatchError, UnknownProducerIdError, OutOfOrderSequenceError (nothing
        appended), StorageError."""
        producer_id = header.producer_id
        epoch, sequence = header.producer_epoch, header.base_sequence
        if epoch < 0 or sequence < 0:
            raise InvalidBatchError(
                f"producer {producer_id}: epoch {epoch} and base sequence "
                f"{sequence} must not be negative"
            )
        producers = self._state.producers
        verdict, remembered = producers.check(producer_id, epoch, sequence)
        if verdict is Verdict.DUPLICATE:
            assert remembered is not None
            self.logger.info("duplicate batch", producer_id=producer_id, base_sequence=sequence)
            return AppendResult(
                remembered.base_offset, remembered.last_offset, self._state.log_start_offset, -1
            )
        result = self._append_to_log(batch, headers)
        producers.record(
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
        """``headers``: ``payload``'s, already validated (None: the log parses them).
        Records the new log end in the state."""
        state = self._state
        appended = self._log.append_now(payload, headers=headers, leader_epoch=state.leader_epoch)
        assert appended.base_offset == state.log_end_offset, (appended, state.log_end_offset)
        assert appended.last_offset >= appended.base_offset >= 0, appended
        state.log_end_offset = appended.last_offset + 1
        self.traffic.produced(appended.last_offset - appended.base_offset + 1, payload.nbytes)
        return AppendResult(
            appended.base_offset,
            appended.last_offset,
            state.log_start_offset,
            appended.log_append_time_ms,
        )

    async def _rebuild_producers(self, producer_ids: Collection[int] | None) -> None:
        """Replay the headers of the log's last REBUILD_SCAN_BYTES_MAX bytes into the
        producer table (for every producer, or only ``producer_ids``), in a worker
        thread.  The caller keeps appends and truncations off.  Raises StorageError,
        LogCorruptError (the headers do not follow each other)."""
        producers = self._state.producers
        log = self._log
        await trio.to_thread.run_sync(
            lambda: producers.replay(log.tail_header_fields(REBUILD_SCAN_BYTES_MAX), producer_ids)
        )

    # -- truncation -------------------------------------------------------------------

    async def truncate_to(self, offset: int) -> int:
        """Cut the log so that it ends at ``offset`` -- a batch holding ``offset`` goes
        whole, so the new end may be lower -- and return the new log end (a no-op at
        or past the end).  One operation under the append lock: the log (segments,
        indexes, its last-append cache; the fsyncs and unlinks in a worker thread),
        the producer state (each producer with a batch past the new end rebuilt
        from the log's remaining tail), the high watermark (clamped), the
        truncation count (bumped); waiters are woken.  Reads meanwhile find nothing.

        Raises OffsetOutOfRangeError (below the log start),
        UnknownTopicOrPartitionError (closed), StorageError.
        """
        async with self._append_lock:
            self._check_open()
            state = self._state
            if offset >= state.log_end_offset:
                return state.log_end_offset
            if offset < state.log_start_offset:
                raise OffsetOutOfRangeError(
                    f"cannot truncate {self.topic}-{self.index} to {offset}: "
                    f"below the log start {state.log_start_offset}"
                )
            self._stats_before_truncation = self.stats()
            self._truncating = True
            try:
                try:
                    await self._log.truncate_to(offset)
                finally:
                    # Also after a failure: the log may have been cut before it.
                    end = self._log.end_offset
                    forgotten = state.truncated(end) if end < state.log_end_offset else []
                if forgotten:
                    await self._rebuild_producers(forgotten)
            finally:
                self._truncating = False
                self._stats_before_truncation = None
                self.wake_waiters(WakeReason.TRUNCATED)
            self.logger.info(
                "partition truncated",
                offset=offset,
                log_end_offset=state.log_end_offset,
                producers_rebuilt=len(forgotten),
            )
            return state.log_end_offset

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
        await self._log.maintain()
        start = self._log.start_offset
        if start != self._state.log_start_offset:
            self._state.log_start_advanced(start)
            self.logger.info("retention", log_start_offset=start)

    async def close(self) -> None:
        """Flush and close the log (writing its clean-shutdown marker); wakes
        waiters so a long poll answers now.  Idempotent.  Raises StorageError."""
        if self.closed:
            return
        async with self._append_lock:
            self.closed = True
            self.wake_waiters(WakeReason.CLOSED)
            await self._log.close()

    def check_invariants(self) -> None:
        """The state's invariants (0 <= log start <= high watermark <= log end; every
        remembered producer batch below the log end) and the log's, and the state
        agrees with the log.  Walks the producer table and the segments: for tests."""
        if self.closed:
            return
        state = self._state
        state.check_invariants()
        if self._truncating:
            return
        assert (state.log_start_offset, state.log_end_offset) == (
            self._log.start_offset,
            self._log.end_offset,
        ), (self.topic, self.index, state.log_start_offset, state.log_end_offset)
        self._log.check_invariants()

    def _check_open(self) -> None:
        if self.closed:
            if self.failure is not None:
                raise type(self.failure)(self.failure.message)
            raise UnknownTopicOrPartitionError(f"{self.topic}-{self.index} is closed")
