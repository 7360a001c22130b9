"""A partition's log: the synchronous core the broker's async shell (AsyncLog) wraps.

``<data_dir>/<topic>-<partition>/`` holds the segments (see segment) plus
``recovery-checkpoint.json`` and, between a clean close and the next open,
``clean-shutdown`` (see checkpoint).  :class:`Log` coordinates; each step lives in
the module named for it:

* Open (log_loading): a clean marker -> trust the files; otherwise trust what
  precedes the checkpoint and re-validate the rest.
* Append (here): validate every batch (header + CRC, per batch, in C), stamp base
  offset and leader epoch in place, write the bytes to the active segment's file
  (page cache), index them; roll first when the active segment is full or old
  (segments).  A small append is also kept in memory (last_append).
* Read (here): a :class:`FileRegion` of whole batches starting at the batch holding
  the offset, for ``os.sendfile``; regions own a file reference (deferred close).
* Flush (flush): fsync everything after the recovery point, write the checkpoint.
* Retention (retention), truncation (truncation), compaction (compaction,
  compaction_swap; a compacted log has no retention).
* Scrubbing (scrubber): sealed segments re-verified in steps; reads stop before
  the ranges found corrupt.

Invariants (``check_invariants``): the segments are contiguous and only the last is
unsealed; start <= recovery point <= end; the last-append cache, if any, ends at the
log end in the active segment's file.

Concurrency: one owner, the event-loop thread.  The only work done elsewhere is
what :meth:`begin_flush` / :func:`sync_to_disk` and :meth:`detach_expired_segments`
/ :func:`delete_files` hand to a worker thread, and reading handed-out regions.
AsyncLog serialises flush, retention, truncation and close with a lock; appends and
reads may interleave with a flush or retention in progress.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from broker.storage import checkpoint, compaction, compaction_swap
from broker.storage.batch_scan import ScannedBatch
from broker.storage.config import SEGMENT_BYTES_LIMIT, LogConfig
from broker.storage.file_handle import CachedRegion, FileRegion
from broker.storage.flush import FlushTicket, FlushTracker, checkpoint_at_end, sync_to_disk
from broker.storage.last_append import LAST_APPEND_BYTES_MAX, LastAppend
from broker.storage.log_loading import load_directory, verify_segments
from broker.storage.retention import RetentionResult, delete_files, detach_expired_segments
from broker.storage.scrubber import CorruptRange, LogScrub, ScrubTicket, StepResult
from broker.storage.segment import LogSegment
from broker.storage.segments import LogSegments
from broker.storage.truncation import restart_segments, truncate_segments
from client.clock import wall_clock_ms
from client.errors import (
    BatchTooLargeError,
    InvalidBatchError,
    OffsetOutOfRangeError,
    StorageError,
)
from client.records.header import BatchHeader, iter_batches

__all__ = ["Clock", "Log", "LogAppend", "RetentionResult", "delete_files", "sync_to_disk"]

Clock = Callable[[], int]


class LogAppend(NamedTuple):
    """Where an append landed in the log."""

    base_offset: int  # offset of the first record appended
    last_offset: int  # offset of the last record appended
    log_append_time_ms: int  # the log's clock when it appended
    max_timestamp_ms: int  # largest batch max_timestamp among the appended batches
    batch_count: int
    size_bytes: int


class Log:
    """One partition's log.  Build it with :meth:`Log.open`; one owner thread."""

    def __init__(
        self,
        directory: Path,
        config: LogConfig,
        segments: LogSegments,
        recovery: checkpoint.RecoveryCheckpoint,
        clock_ms: Clock,
        logger: Any,
    ) -> None:
        self.directory = directory
        self.config = config
        self._segments = segments
        self._recovery = recovery
        self._clock_ms = clock_ms
        self._logger = logger
        self._flush = FlushTracker(clock_ms())
        self._closed = False
        self._failure: str | None = None
        # The latest append, if small (see last_append and read).
        self._last_append: LastAppend | None = None
        # The background re-verification of sealed segments and the offset ranges
        # it found corrupt: reads stop before them.
        self.scrub = LogScrub(segments, config.batch_bytes_max, logger)
        self.corrupt = self.scrub.corrupt
        self._corrupt_starts = self.corrupt.starts

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path | str,
        config: LogConfig | None = None,
        *,
        clock_ms: Clock = wall_clock_ms,
        topic: str | None = None,
        partition: int | None = None,
        initial_offset: int = 0,
    ) -> Log:
        """Open (creating if needed) the log in ``directory``, recovering it if the
        last shutdown was not clean (see log_loading).  ``initial_offset`` is the
        base offset of a new, empty log.

        Raises LogCorruptError (a sealed segment holds a bad batch, or segments do
        not line up) and StorageError (I/O errors).  Blocking: the async shell runs
        it in a worker thread.
        """
        path = Path(directory)
        config = config or LogConfig()
        logger = structlog.get_logger("distributary.storage.log").bind(
            topic=topic, partition=partition, directory=str(path)
        )
        started_ns = time.perf_counter_ns()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"cannot create {path}: {error}") from error
        loaded = load_directory(path, config, initial_offset, clock_ms(), logger)
        log = cls(path, config, loaded.segments, loaded.recovery, clock_ms, logger)
        logger.info(
            "log opened",
            clean=loaded.clean,
            start_offset=log.start_offset,
            end_offset=log.end_offset,
            segments=len(loaded.segments),
            recovery_offset=loaded.recovery.offset,
            elapsed_ms=(time.perf_counter_ns() - started_ns) // 1_000_000,
        )
        return log

    # -- state --------------------------------------------------------------------------

    @property
    def start_offset(self) -> int:
        """The first offset still in the log (the first segment's base offset)."""
        return self._segments.first.base_offset

    @property
    def end_offset(self) -> int:
        """The offset the next appended record will get (log end offset)."""
        return self._segments.active.next_offset

    @property
    def recovery_offset(self) -> int:
        """Everything before this offset is known to be on disk (fsynced)."""
        return self._recovery.offset

    @property
    def size_bytes(self) -> int:
        return self._segments.size_bytes

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def segment_base_offsets(self) -> list[int]:
        return [segment.base_offset for segment in self._segments]

    @property
    def has_unflushed_changes(self) -> bool:
        """Whether a flush would sync anything."""
        return (
            self._flush.appends_unflushed > 0
            or self._flush.directory_dirty
            or self._recovery.offset != self.end_offset
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"log {self.directory} is closed")
        if self._failure is not None:
            raise StorageError(f"log {self.directory} is offline: {self._failure}")

    # -- appending ----------------------------------------------------------------------

    def append(
        self,
        batches: bytes | bytearray | memoryview,
        *,
        leader_epoch: int | None = None,
        headers: list[BatchHeader] | None = None,
    ) -> LogAppend:
        """Validate, stamp and write one or more whole batches; returns the offsets
        they got.  A ``bytearray`` or a writable byte ``memoryview`` (a Produce
        payload cut out of the request's buffer) is stamped in place; other buffers
        are copied once.

        Never fsyncs (see :meth:`needs_flush`).  Raises InvalidBatchError (empty
        payload), BatchTooLargeError, CorruptBatchError and the other
        RecordBatchErrors (the payload is rejected whole, nothing is written), and
        StorageError (nothing was appended; the log is unchanged).

        ``headers``: the caller already validated ``batches`` (a writable buffer)
        with ``iter_batches`` against this log's batch_bytes_max, CRCs included;
        they are used instead of parsing the headers again.
        """
        self._check_usable()
        payload_bytes = len(batches)
        if payload_bytes == 0:
            raise InvalidBatchError("append of an empty payload")
        if payload_bytes > SEGMENT_BYTES_LIMIT:
            raise BatchTooLargeError(f"append of {payload_bytes} bytes exceeds a segment")
        buffer: bytearray | memoryview
        if isinstance(batches, bytearray) or (
            isinstance(batches, memoryview)
            and not batches.readonly
            and batches.c_contiguous
            and batches.itemsize == 1
        ):
            buffer = batches
        else:
            buffer = bytearray(batches)
            headers = None  # they describe the caller's buffer, not this copy
        if headers is None:
            headers = iter_batches(buffer, batch_bytes_max=self.config.batch_bytes_max)
        else:
            assert headers and headers[0].position == 0 and headers[-1].end == payload_bytes
        now_ms = self._clock_ms()
        incoming_offsets = (
            headers[0].record_count
            if len(headers) == 1
            else sum(header.record_count for header in headers)
        )
        roll_reason = self._segments.roll_reason(
            self.config, payload_bytes, incoming_offsets, now_ms
        )
        if roll_reason is not None:
            self._roll(roll_reason)
        active = self._segments.active
        was_empty = active.is_empty
        offset = base_offset = active.next_offset
        max_timestamp_ms = -1
        scanned: list[ScannedBatch] = []
        for header in headers:
            header.stamp(offset, leader_epoch)
            next_offset = header.next_offset
            scanned.append(
                ScannedBatch(
                    header.position,
                    offset,
                    next_offset,
                    header.batch_bytes,
                    header.first_timestamp,
                    header.max_timestamp,
                )
            )
            max_timestamp_ms = max(max_timestamp_ms, header.max_timestamp)
            offset = next_offset
        del headers  # release the views on the caller's buffer
        try:
            active.append(buffer, scanned)
        except StorageError as error:
            self._note_failed_write(active, error)
            raise
        if was_empty:
            active.rolling_timestamp_ms = now_ms  # segment age counts from its first append
        if payload_bytes <= LAST_APPEND_BYTES_MAX:
            handle = active.handle
            self._last_append = LastAppend(
                base_offset, offset, bytes(buffer), handle, handle.truncations
            )
        else:
            self._last_append = None
        self._flush.appends_unflushed += 1
        assert active.next_offset == offset > base_offset
        return LogAppend(
            base_offset, offset - 1, now_ms, max_timestamp_ms, len(scanned), payload_bytes
        )

    def _note_failed_write(self, segment: LogSegment, error: StorageError) -> None:
        try:
            consistent = os.fstat(segment.handle.descriptor).st_size == segment.size_bytes
        except OSError:
            consistent = False
        self._logger.error("append failed", error=str(error), rolled_back=consistent)
        if not consistent:
            self._failure = str(error)

    def roll(self) -> None:
        """Seal the active segment and start a new one (no-op if it is empty).
        Raises StorageError."""
        self._check_usable()
        if not self._segments.active.is_empty:
            self._roll("requested")

    def _roll(self, reason: str) -> None:
        self._last_append = None  # only the active segment's latest append is kept
        new = self._segments.roll(self.directory, self.config)
        self._flush.directory_dirty = True
        self._logger.info("segment rolled", reason=reason, base_offset=new.base_offset)

    # -- reading ------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, *, end_offset_max: int | None = None) -> FileRegion:
        """A region of whole batches starting with the batch that contains ``offset``:
        about ``max_bytes`` of them, at least one, never past ``end_offset_max``
        (exclusive; e.g. the high watermark) and never across a segment boundary.
        Release the region when sent.  Empty at the log end.

        Stops before a range the scrubber found corrupt.  Raises
        OffsetOutOfRangeError (offset outside [start, end]), CorruptBatchError
        (``offset`` lies in a corrupt range: the message says where it ends),
        LogCorruptError (a damaged header met on the way), StorageError.
        """
        self._check_usable()
        end = self.end_offset
        if offset < self.start_offset or offset > end:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{self.start_offset}, {end}] in {self.directory}"
            )
        limit_offset = end if end_offset_max is None else min(end, end_offset_max)
        if self._corrupt_starts:  # a list: no Python call when empty
            limit_offset = self.corrupt.clip(offset, limit_offset, self.directory.name)
        if offset >= limit_offset:
            return FileRegion.empty(offset)
        last = self._last_append
        if (
            last is not None
            and last.base_offset == offset
            and last.next_offset <= limit_offset
            and len(last.data) <= max_bytes
            and last.handle.truncations == last.truncations
        ):
            # A live consumer reading what was just appended: the same batches
            # the file holds, without a read of it.
            return CachedRegion(last.data, offset, last.next_offset, last.handle, last.truncations)
        segment = self._segments.floor(offset)
        assert segment is not None and offset < segment.next_offset, (offset, segment)
        end_position = None
        if limit_offset < segment.next_offset:
            end_position = segment.locate(limit_offset).position
            if end_position <= segment.locate(offset).position:
                return FileRegion.empty(offset)
        return segment.read(offset, max_bytes, end_position)

    def read_bytes(
        self, offset: int, max_bytes: int, *, end_offset_max: int | None = None
    ) -> bytes:
        """Like :meth:`read`, but the bytes themselves (a copy).  Raises like read."""
        with self.read(offset, max_bytes, end_offset_max=end_offset_max) as region:
            return region.read_bytes()

    def tail_header_fields(self, bytes_max: int) -> Iterator[tuple[int, ...]]:
        """The header fields (client.records.header.HEADER order) of the batches in
        about the last ``bytes_max`` bytes of the log, oldest first (see
        LogSegments.tail_header_fields).  For rebuilding idempotent-producer state on
        open.  Raises StorageError."""
        self._check_usable()
        return self._segments.tail_header_fields(bytes_max)

    def batch_at(self, offset: int) -> ScannedBatch:
        """The batch holding ``offset`` (header fields and position).
        Raises OffsetOutOfRangeError (not in [start, end)), StorageError."""
        self._check_usable()
        if not self.start_offset <= offset < self.end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{self.start_offset}, {self.end_offset}) "
                f"in {self.directory}"
            )
        segment = self._segments.floor(offset)
        assert segment is not None and offset < segment.next_offset, (offset, segment)
        return segment.locate(offset)

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch whose max timestamp is >= ``timestamp_ms``
        (Kafka's ListOffsets by time, at batch granularity: the broker does not decode
        records), or None if every batch is older.  Raises StorageError."""
        self._check_usable()
        for segment in self._segments:
            found = segment.offset_for_timestamp(timestamp_ms)
            if found is not None:
                return found
        return None

    # -- flushing (see flush) -----------------------------------------------------------

    def needs_flush(self) -> bool:
        """Whether the flush policy asks for a flush now."""
        return self._flush.needs_flush(self.config, self._clock_ms)

    def flush_due_in_ms(self) -> int | None:
        """How long until the interval policy wants a flush (None: no timer needed)."""
        return self._flush.due_in_ms(self.config, self._clock_ms())

    def begin_flush(self) -> FlushTicket:
        """Capture what must be synced (event loop).  Pass the ticket to
        :func:`sync_to_disk` (any thread), then :meth:`finish_flush` (event loop).
        Raises StorageError (the log is closed or offline)."""
        self._check_usable()
        return self._flush.begin(self.directory, self._segments, self._recovery)

    def finish_flush(self, ticket: FlushTicket) -> int:
        """Adopt a synced ticket's recovery point (a failed one is forgotten) and
        release its files; returns the recovery offset.  Raises StorageError."""
        if self._flush.finish(ticket, self._clock_ms()):
            assert ticket.checkpoint.offset <= self.end_offset, "log truncated during a flush"
            self._recovery = ticket.checkpoint
        return self._recovery.offset

    def flush(self) -> int:
        """fsync everything appended so far and advance the recovery point; returns
        it.  Blocking (the async shell runs the fsyncs in a thread).
        Raises StorageError."""
        ticket = self.begin_flush()
        try:
            sync_to_disk(ticket)
        finally:
            self.finish_flush(ticket)
        return self._recovery.offset

    # -- retention and truncation -------------------------------------------------------

    def detach_expired_segments(self) -> RetentionResult:
        """Remove sealed segments past retention (see retention); their files are
        renamed to ``*.deleted``: unlink them with :func:`delete_files` (off the event
        loop).  Raises StorageError."""
        self._check_usable()
        result = detach_expired_segments(self._segments, self.config, self._clock_ms())
        if result.segments_deleted:
            self._flush.directory_dirty = True
            self._logger.info(
                "retention deleted segments",
                segments=result.segments_deleted,
                bytes=result.bytes_deleted,
                start_offset=result.start_offset,
            )
        return result

    def enforce_retention(self) -> RetentionResult:
        """Detach and delete expired segments (blocking).  Raises StorageError."""
        result = self.detach_expired_segments()
        delete_files(result.paths)
        return result

    def truncate_to(self, offset: int) -> int:
        """Drop every batch at or after ``offset`` (see truncation; a batch
        *containing* ``offset`` goes whole) and the last-append cache; returns the new
        log end.  A no-op when ``offset >= end``.  Then flushes (blocking), so the
        cut and everything below it are durable, and the checkpoint names the new
        end, before this returns.

        Raises OffsetOutOfRangeError (offset below the log start), StorageError (the
        log is then offline if the cut could not be made durable).
        """
        self._check_usable()
        assert not self._flush.in_progress, "truncate_to during a flush"
        end_before = self.end_offset
        if offset >= end_before:
            return end_before
        if offset < self.start_offset:
            raise OffsetOutOfRangeError(
                f"cannot truncate to {offset}: below log start {self.start_offset}"
            )
        self._last_append = None
        cut = truncate_segments(self._segments, offset)
        self.scrub.truncated(cut.end_offset)
        if cut.segments_deleted:
            self._flush.directory_dirty = True
        delete_files(cut.paths)
        new_end = cut.end_offset
        if self._recovery.offset > new_end:
            # Everything below the cut was already durable: only the cut segment
            # needs syncing, and the checkpoint must not name offsets that are gone.
            self._recovery = checkpoint_at_end(self._segments)
        try:
            self.flush()
        except StorageError as error:
            self._failure = f"truncation could not be made durable: {error}"
            raise
        self._logger.warning(
            "log truncated",
            offset=offset,
            end_offset=new_end,
            offsets_dropped=end_before - new_end,
            bytes_dropped=cut.bytes_dropped,
            segments_deleted=cut.segments_deleted,
        )
        return new_end

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Drop every batch and start the log empty at ``offset`` (a follower whose
        leader's log starts past this log's end).  Durable before it returns, like
        :meth:`truncate_to`.  Blocking.  Raises StorageError (the log is then
        offline)."""
        self._check_usable()
        assert not self._flush.in_progress, "truncate_fully_and_start_at during a flush"
        self._last_append = None
        try:
            cut = restart_segments(self._segments, self.directory, self.config, offset)
        except StorageError as error:
            self._failure = f"restart at {offset} failed: {error}"
            raise
        self.scrub.truncated(0)
        self._flush.directory_dirty = True
        delete_files(cut.paths)
        self._recovery = checkpoint_at_end(self._segments)
        try:
            self.flush()
        except StorageError as error:
            self._failure = f"restart at {offset} could not be made durable: {error}"
            raise
        self._logger.warning("log restarted", offset=offset, segments_deleted=cut.segments_deleted)

    # -- scrubbing ----------------------------------------------------------------------

    def begin_scrub_step(self, step_bytes: int) -> ScrubTicket | None:
        """See :meth:`LogScrub.begin_step`.  Event loop."""
        self._check_usable()
        return self.scrub.begin_step(step_bytes)

    def finish_scrub_step(self, ticket: ScrubTicket, result: StepResult) -> CorruptRange | None:
        """See :meth:`LogScrub.finish_step` (nothing once the log is closed)."""
        return None if self._closed else self.scrub.finish_step(ticket, result)

    @property
    def scrubbed_bytes(self) -> int:
        return self.scrub.scrubbed_bytes

    # -- compaction ---------------------------------------------------------------------

    def sealed_segment_sizes(self) -> list[tuple[int, int]]:
        """``(next_offset, size_bytes)`` of each sealed segment, oldest first (what a
        compaction pass may rewrite once flushed)."""
        return [
            (segment.next_offset, segment.size_bytes)
            for segment in self._segments
            if segment.sealed
        ]

    def begin_compaction(self) -> compaction.CompactionPlan | None:
        """Plan a compaction pass (event loop); None if no sealed segment lies before
        the recovery point (flush first to move it).  Pass the plan to
        :func:`compaction.build_compacted_segments` (worker thread), then to
        :meth:`finish_compaction`; never during truncation or retention (AsyncLog's
        lock).  Raises StorageError."""
        self._check_usable()
        return compaction.plan_compaction(
            self.directory,
            self.config,
            list(self._segments),
            self._recovery.segment_base_offset,
            self._clock_ms(),
        )

    def finish_compaction(
        self, plan: compaction.CompactionPlan, outputs: list[compaction_swap.CompactedSegment]
    ) -> list[Path]:
        """Swap each compacted segment in for the segments it replaces (event loop, see
        compaction_swap) and release the plan; returns the old files (``*.deleted``)
        to unlink with :func:`delete_files`.  Raises StorageError, LogCorruptError."""
        try:
            return compaction_swap.swap_in_all(
                self.directory, self.config, self._segments, outputs, self._logger
            )
        finally:
            plan.release()

    def compact(self) -> compaction.CompactionResult:
        """One whole compaction pass, blocking (tests and tools; the server uses
        AsyncLog.compact).  Raises StorageError, LogCorruptError."""
        result = compaction.CompactionResult()
        plan = self.begin_compaction()
        if plan is None:
            return result
        try:
            outputs = compaction.build_compacted_segments(plan)
        except BaseException:
            plan.release()
            raise
        result = compaction.summarize(plan, outputs)
        delete_files(self.finish_compaction(plan, outputs))
        return result

    # -- closing and checking -----------------------------------------------------------

    def set_config(self, config: LogConfig) -> None:
        """Take a new config (a topic's config was altered): the log and every segment
        read it at their next append, roll, retention pass or read."""
        self.config = config
        for segment in self._segments:
            segment.config = config

    def close(self) -> None:
        """Flush, record the max timestamp in the time index, write the clean-shutdown
        marker and close every file.  Idempotent.  Raises StorageError (the files are
        closed anyway; without the marker the next open recovers)."""
        if self._closed:
            return
        self._last_append = None
        try:
            if self._failure is None:
                self._segments.active.write_final_time_entry()
                self.flush()
                checkpoint.write_clean_shutdown_marker(self.directory)
        finally:
            self._closed = True
            for segment in self._segments:
                segment.close()
            self._logger.info("log closed", end_offset=self.end_offset)

    def verify(self) -> None:
        """Re-check every batch of every segment (CRC, offsets), like an offline log
        checker.  Reads the whole log.  Raises LogCorruptError naming file and
        position, StorageError."""
        self._check_usable()
        verify_segments(self._segments, self.config.batch_bytes_max)

    def check_invariants(self) -> None:
        """Assert the log's invariants (tests call this after every step)."""
        assert not self._closed
        self._segments.check_invariants()
        for segment in self._segments:
            segment.check_invariants()
        assert self.start_offset <= self.end_offset, (self.start_offset, self.end_offset)
        assert self._recovery.offset <= self.end_offset, (self._recovery, self.end_offset)
        self._flush.check_invariants()
        assert self._corrupt_starts is self.corrupt.starts
        self.corrupt.check_invariants()
        last = self._last_append
        if last is not None:
            active = self._segments.active
            assert last.next_offset == self.end_offset, (last.next_offset, self.end_offset)
            assert last.handle is active.handle and last.truncations == active.handle.truncations
            assert len(last.data) <= LAST_APPEND_BYTES_MAX

    def __repr__(self) -> str:
        return (
            f"Log({self.directory}, offsets=[{self.start_offset}, {self.end_offset}), "
            f"segments={len(self._segments)})"
        )
