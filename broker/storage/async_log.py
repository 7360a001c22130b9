"""The trio shell around :class:`Log`: the partition's only door to its log.

Appends and reads run on the event loop (a write to the page cache or a few header
preads); everything that can block for long runs in ``trio.to_thread.run_sync``:
opening (recovery), fsync plus checkpoint, unlinking deleted segments, a
truncation, and a scrub step (broker/scrubbing.py).  One ``trio.Lock`` serialises flush, retention, compaction, truncation
and close with each other; appends and reads do not take it, and the core is
written so they may interleave with a flush or retention in progress (see log.py).
A truncation is the exception: it runs whole in a worker thread, so its caller
keeps every other use of the log off meanwhile (broker/partition.py does).

The broker's maintenance task calls :meth:`AsyncLog.maintain` on every tick: an
interval flush when due, retention when its check interval passed (or, for a
compacted log, compaction when enough of it was written since the last pass; see
compaction.py).  Compaction holds the lock for its whole pass (its decoding runs
in a worker thread), so it never overlaps truncation or retention.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import trio

from broker.storage import compaction
from broker.storage.batch_scan import ScannedBatch
from broker.storage.config import CleanupPolicy, FlushPolicy, LogConfig
from broker.storage.file_handle import FileRegion
from broker.storage.log import (
    Clock,
    Log,
    LogAppend,
    RetentionResult,
    delete_files,
    sync_to_disk,
)
from broker.storage.scrubber import CorruptRange
from client.clock import wall_clock_ms
from client.records.header import BatchHeader


class AsyncLog:
    """An open partition log for trio code.  Create with ``await AsyncLog.open(...)``."""

    def __init__(self, log: Log, clock_ms: Clock) -> None:
        self.log = log
        self._clock_ms = clock_ms
        self._lock = trio.Lock()
        self._last_retention_ms = clock_ms()
        # Compaction bookkeeping: offsets below were compacted by the last pass.
        self._cleaned_until = -1
        self._last_compaction_ms = clock_ms()

    @classmethod
    async def open(
        cls,
        directory: Path | str,
        config: LogConfig | None = None,
        *,
        clock_ms: Clock = wall_clock_ms,
        topic: str | None = None,
        partition: int | None = None,
        initial_offset: int = 0,
    ) -> AsyncLog:
        """Open and recover the log in a worker thread.  Raises like :meth:`Log.open`."""
        log = await trio.to_thread.run_sync(
            lambda: Log.open(
                directory,
                config,
                clock_ms=clock_ms,
                topic=topic,
                partition=partition,
                initial_offset=initial_offset,
            )
        )
        return cls(log, clock_ms)

    @property
    def start_offset(self) -> int:
        return self.log.start_offset

    @property
    def end_offset(self) -> int:
        return self.log.end_offset

    @property
    def size_bytes(self) -> int:
        return self.log.size_bytes

    @property
    def segment_count(self) -> int:
        return self.log.segment_count

    def append_now(
        self,
        batches: bytes | bytearray | memoryview,
        *,
        headers: list[BatchHeader] | None = None,
        leader_epoch: int | None = None,
    ) -> LogAppend:
        """Append without flushing (see :meth:`Log.append`, ``headers`` included);
        the caller flushes when :meth:`needs_flush` says so.  Raises like
        Log.append."""
        return self.log.append(batches, headers=headers, leader_epoch=leader_epoch)

    async def append(
        self, batches: bytes | bytearray | memoryview, *, leader_epoch: int | None = None
    ) -> LogAppend:
        """Append (see :meth:`Log.append`); with the every-append policy, returns only
        once the batches are fsynced.  Raises like Log.append and :meth:`flush`."""
        result = self.log.append(batches, leader_epoch=leader_epoch)
        if self.log.needs_flush():
            await self.flush()
        return result

    def needs_flush(self) -> bool:
        """Whether the flush policy asks for a flush now (see :meth:`Log.needs_flush`)."""
        return self.log.needs_flush()

    def read(self, offset: int, max_bytes: int, *, end_offset_max: int | None = None) -> FileRegion:
        """A region to sendfile (see :meth:`Log.read`); not async: it does not block
        on more than a few cached header reads."""
        return self.log.read(offset, max_bytes, end_offset_max=end_offset_max)

    def batch_at(self, offset: int) -> ScannedBatch:
        """See :meth:`Log.batch_at`."""
        return self.log.batch_at(offset)

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """See :meth:`Log.offset_for_timestamp`."""
        return self.log.offset_for_timestamp(timestamp_ms)

    def tail_header_fields(self, bytes_max: int) -> Iterator[tuple[int, ...]]:
        """See :meth:`Log.tail_header_fields`.  Blocking (it reads headers from the
        files): iterate it in a worker thread, with appends and truncation kept off
        meanwhile."""
        return self.log.tail_header_fields(bytes_max)

    async def flush(self) -> int:
        """fsync (in a worker thread) and advance the recovery point; returns it.
        Concurrent callers wait for each other.  Raises StorageError."""
        async with self._lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> int:
        if not self.log.has_unflushed_changes:
            return self.log.recovery_offset
        ticket = self.log.begin_flush()
        try:
            await trio.to_thread.run_sync(sync_to_disk, ticket)
        finally:
            self.log.finish_flush(ticket)
        return self.log.recovery_offset

    async def enforce_retention(self) -> RetentionResult:
        """Drop expired segments now; unlink their files in a worker thread.
        Raises StorageError."""
        async with self._lock:
            result = self.log.detach_expired_segments()
            self._last_retention_ms = self._clock_ms()
            if result.paths:
                await trio.to_thread.run_sync(delete_files, result.paths)
            return result

    def compaction_due(self) -> bool:
        """Whether a compacted log should be compacted now: enough of its sealed bytes
        are new since the last pass (DIRTY_RATIO_MIN), or tombstones may have
        outlived delete_retention_ms since then."""
        config = self.log.config
        if config.cleanup_policy is not CleanupPolicy.COMPACT:
            return False
        sizes = self.log.sealed_segment_sizes()
        if not sizes:
            return False
        if compaction.dirty_ratio(sizes, self._cleaned_until) >= compaction.DIRTY_RATIO_MIN:
            return True
        return self._clock_ms() - self._last_compaction_ms >= config.delete_retention_ms

    async def compact(self) -> compaction.CompactionResult:
        """One compaction pass: flush (so sealed segments lie before the recovery
        point), plan, rewrite in a worker thread, swap in, unlink the old files in a
        worker thread.  Raises StorageError, LogCorruptError."""
        async with self._lock:
            if self.log.closed:
                return compaction.CompactionResult()
            await self._flush_locked()
            plan = self.log.begin_compaction()
            self._last_compaction_ms = self._clock_ms()
            if plan is None:
                return compaction.CompactionResult()
            try:
                outputs = await trio.to_thread.run_sync(compaction.build_compacted_segments, plan)
            except BaseException:
                plan.release()
                raise
            result = compaction.summarize(plan, outputs)
            paths = self.log.finish_compaction(plan, outputs)
            self._cleaned_until = result.cleaned_until
            if paths:
                await trio.to_thread.run_sync(delete_files, paths)
            return result

    async def truncate_to(self, offset: int) -> int:
        """See :meth:`Log.truncate_to`; returns the new log end.  The whole cut --
        segments detached and unlinked, the last one shortened, fsyncs, checkpoint
        -- runs in a worker thread, so the caller must not append to or read from
        the log until this returns (flush, retention, compaction and close wait for
        the lock).  Raises OffsetOutOfRangeError, StorageError."""
        async with self._lock:
            return await trio.to_thread.run_sync(self.log.truncate_to, offset)

    async def truncate_fully_and_start_at(self, offset: int) -> None:
        """See :meth:`Log.truncate_fully_and_start_at`, in a worker thread; the
        caller keeps appends and reads off meanwhile.  Raises StorageError."""
        async with self._lock:
            await trio.to_thread.run_sync(self.log.truncate_fully_and_start_at, offset)

    async def close(self) -> None:
        """Flush (in a worker thread), then close and mark the shutdown clean.
        Raises StorageError."""
        async with self._lock:
            if self.log.closed:
                return
            await self._flush_locked()
            await trio.to_thread.run_sync(self.log.close)

    async def maintain(self) -> None:
        """One maintenance round: flush if the interval policy wants it, enforce
        retention (or compact a compacted log) if its check interval passed.
        Raises StorageError, LogCorruptError."""
        if self.log.config.flush_policy is FlushPolicy.INTERVAL and self.log.needs_flush():
            await self.flush()
        elapsed_ms = self._clock_ms() - self._last_retention_ms
        if elapsed_ms >= self.log.config.retention_check_interval_ms:
            await self.enforce_retention()
            if self.compaction_due():
                await self.compact()

    async def scrub_step(self, step_bytes: int) -> tuple[int, CorruptRange | None]:
        """Re-verify about ``step_bytes`` of the sealed segments, in a worker thread
        (see scrubber); returns the bytes read (0: nothing sealed) and a corrupt
        range found, which the log no longer serves.  Raises StorageError."""
        # The lock only around the event-loop parts (a truncation runs in a worker
        # thread under it): a flush never waits for a scrub read.  The ticket's
        # handle reference keeps the file readable; finish_scrub_step ignores a
        # step whose segment changed meanwhile.
        async with self._lock:
            if self.log.closed:
                return 0, None
            ticket = self.log.begin_scrub_step(step_bytes)
        if ticket is None:
            return 0, None
        result = await trio.to_thread.run_sync(ticket.run)
        async with self._lock:  # finish_scrub_step ignores a log closed meanwhile
            return result.bytes_read, self.log.finish_scrub_step(ticket, result)

    def set_config(self, config: LogConfig) -> None:
        """See Log.set_config."""
        self.log.set_config(config)

    def check_invariants(self) -> None:
        """See :meth:`Log.check_invariants`."""
        self.log.check_invariants()
