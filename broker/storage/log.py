"""A partition's log: the synchronous core the broker's async shell (AsyncLog) wraps.

``<data_dir>/<topic>-<partition>/`` holds the segments (see segment) plus
``recovery-checkpoint.json`` and, between a clean close and the next open,
``clean-shutdown`` (see checkpoint).

* Append: validate every batch (header + CRC, per batch, in C), stamp base offset
  and leader epoch in place, write the bytes to the active segment's file (page
  cache), index them.  Roll first when the active segment is full or old.
* Read: a :class:`FileRegion` of whole batches starting at the batch holding the
  offset, for ``os.sendfile``.  Regions own a file reference (deferred close).
* Flush: fsync everything after the recovery point, then write the checkpoint.
  Split into begin (event loop) / sync (worker thread) / finish (event loop) so the
  async shell can keep fsync off the loop.
* Recovery on open: clean marker -> trust the files; otherwise trust what precedes
  the checkpoint and re-validate the rest (torn tail of the last segment truncated,
  a bad batch in a sealed segment refused with LogCorruptError).
* Retention deletes whole sealed segments by age/size; ``truncate_to`` cuts the log
  at a batch boundary (replication).  A compacted log (``CleanupPolicy.COMPACT``)
  has no retention; compaction (compaction.py) rewrites its sealed segments,
  split like a flush: begin (event loop) / build (worker thread) / finish.

Concurrency: one owner, the event-loop thread.  The only work done elsewhere is
what :meth:`begin_flush` / :func:`sync_to_disk` and :meth:`detach_expired_segments`
/ :func:`delete_files` hand to a worker thread, and reading handed-out regions.
AsyncLog serialises flush, retention, truncation and close with a lock; appends and
reads may interleave with them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import structlog

from broker.storage import checkpoint, compaction
from broker.storage.atomic_file import TEMP_SUFFIX, fsync_directory
from broker.storage.batch_scan import BadBatch, BatchInfo, scan_batches, walk_header_fields
from broker.storage.config import SEGMENT_BYTES_LIMIT, CleanupPolicy, FlushPolicy, LogConfig
from broker.storage.file_handle import CachedRegion, FileHandle, FileRegion
from broker.storage.offset_index import SUFFIX as INDEX_SUFFIX
from broker.storage.segment import DELETED_SUFFIX, LOG_SUFFIX, LogSegment
from broker.storage.segments import LogSegments
from broker.storage.time_index import SUFFIX as TIME_INDEX_SUFFIX
from client.errors import (
    BatchTooLargeError,
    InvalidBatchError,
    LogCorruptError,
    OffsetOutOfRangeError,
    StorageError,
)
from client.records.header import BatchHeader, iter_batches

_RELATIVE_OFFSET_MAX: Final = (1 << 31) - 1
# A directory holds a few files per segment; this bounds the listing walk.
_DIRECTORY_ENTRIES_MAX: Final = 1 << 22

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    """The default clock: wall time in ms (logic takes the clock as a parameter)."""
    return time.time_ns() // 1_000_000


# Appends of at most this many bytes (a live producer's) are kept in memory until
# the next one, for the live consumers' next read (Log.read); the size of a fetch
# answer the broker sends in one write.
RECENT_APPEND_BYTES_MAX: Final = 16 * 1024


class AppendResult(NamedTuple):
    """Where an append landed."""

    base_offset: int  # offset of the first record appended
    last_offset: int  # offset of the last record appended
    log_append_time_ms: int  # the log's clock when it appended
    max_timestamp_ms: int  # largest batch max_timestamp among the appended batches
    batch_count: int
    size_bytes: int


class RetentionResult(NamedTuple):
    """Segments removed from the log; ``paths`` still need unlinking (delete_files)."""

    segments_deleted: int
    bytes_deleted: int
    start_offset: int
    paths: list[Path]


@dataclass
class FlushTicket:
    """What a flush must sync, captured on the event loop.  The handles are
    references owned by the ticket (released by :meth:`Log.finish_flush`)."""

    checkpoint: checkpoint.RecoveryCheckpoint
    directory: Path
    handles: list[FileHandle]
    index_paths: list[Path]
    sync_directory: bool
    appends_covered: int
    done: bool = field(default=False)


def sync_to_disk(ticket: FlushTicket) -> None:
    """fsync the ticket's files and write its checkpoint.  Blocking; thread-safe
    (touches no log state).  Raises StorageError."""
    try:
        for handle in ticket.handles:
            os.fsync(handle.descriptor)
        for path in ticket.index_paths:
            _fsync_path(path)
    except OSError as error:
        raise StorageError(f"fsync in {ticket.directory} failed: {error}") from error
    if ticket.sync_directory:
        fsync_directory(ticket.directory)
    checkpoint.write_checkpoint(ticket.directory, ticket.checkpoint)
    ticket.done = True


def _fsync_path(path: Path) -> None:
    # Index writers may be closed (sealed) or closing concurrently; fsync through a
    # descriptor of our own.  A file renamed away meanwhile is being deleted.
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def delete_files(paths: list[Path]) -> None:
    """Unlink detached segment files.  Blocking on big files: run it off the event
    loop.  Raises StorageError."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise StorageError(f"cannot delete {path}: {error}") from error


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
        self._unflushed_appends = 0
        self._last_flush_ms = clock_ms()
        self._directory_dirty = False
        self._flush_in_progress = False
        self._closed = False
        self._failure: str | None = None
        # The latest append, if small: (base offset, next offset, its bytes, the
        # segment file, that file's truncation count then).  A live consumer's
        # next fetch reads it from here (see read).
        self._recent: tuple[int, int, bytes, FileHandle, int] | None = None

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
        last shutdown was not clean.  ``initial_offset`` is the base offset of a new,
        empty log.

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
        compaction.complete_interrupted_swaps(path, config.batch_bytes_max)
        base_offsets = _list_segments(path)
        clean = checkpoint.clean_shutdown_marker_exists(path)
        stored = checkpoint.read_checkpoint(path)
        segments = LogSegments()
        checkpoint_used = False
        try:
            if not base_offsets:
                segments.add(LogSegment.create(path, initial_offset, config))
                fsync_directory(path)
            else:
                checkpoint_used = _load_segments(
                    path, config, base_offsets, clean, stored, segments, logger
                )
        except BaseException:
            for segment in segments:
                segment.close()
            raise
        active = segments.active
        if active.rolling_timestamp_ms is not None:
            active.rolling_timestamp_ms = min(active.rolling_timestamp_ms, clock_ms())
        if checkpoint_used:
            assert stored is not None
            recovery = stored
        elif clean:  # everything was flushed by close
            recovery = checkpoint.RecoveryCheckpoint(
                offset=active.next_offset,
                segment_base_offset=active.base_offset,
                position=active.size_bytes,
                max_timestamp_ms=active.max_timestamp_ms,
                offset_of_max_timestamp=active.offset_of_max_timestamp,
            )
        else:
            first = segments.first
            recovery = checkpoint.RecoveryCheckpoint(
                offset=first.base_offset, segment_base_offset=first.base_offset, position=0
            )
        checkpoint.remove_clean_shutdown_marker(path)
        log = cls(path, config, segments, recovery, clock_ms, logger)
        logger.info(
            "log opened",
            clean=clean,
            start_offset=log.start_offset,
            end_offset=log.end_offset,
            segments=len(segments),
            recovery_offset=recovery.offset,
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

    # Kafka's names, for callers that prefer them.
    log_start_offset = start_offset
    log_end_offset = end_offset

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
    def unflushed_appends(self) -> int:
        return self._unflushed_appends

    @property
    def has_unflushed_changes(self) -> bool:
        """Whether a flush would sync anything."""
        return (
            self._unflushed_appends > 0
            or self._directory_dirty
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
    ) -> AppendResult:
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
        self._maybe_roll(payload_bytes, incoming_offsets, now_ms)
        active = self._segments.active
        was_empty = active.is_empty
        offset = base_offset = active.next_offset
        max_timestamp_ms = -1
        infos: list[BatchInfo] = []
        for header in headers:
            header.stamp(offset, leader_epoch)
            next_offset = header.next_offset
            infos.append(
                BatchInfo(
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
            active.append(buffer, infos)
        except StorageError as error:
            self._note_failed_write(active, error)
            raise
        if was_empty:
            active.rolling_timestamp_ms = now_ms  # segment age counts from its first append
        if payload_bytes <= RECENT_APPEND_BYTES_MAX:
            handle = active.handle
            self._recent = (base_offset, offset, bytes(buffer), handle, handle.truncations)
        else:
            self._recent = None
        self._unflushed_appends += 1
        assert active.next_offset == offset > base_offset
        return AppendResult(
            base_offset, offset - 1, now_ms, max_timestamp_ms, len(infos), payload_bytes
        )

    def _note_failed_write(self, segment: LogSegment, error: StorageError) -> None:
        try:
            consistent = os.fstat(segment.handle.descriptor).st_size == segment.size_bytes
        except OSError:
            consistent = False
        self._logger.error("append failed", error=str(error), rolled_back=consistent)
        if not consistent:
            self._failure = str(error)

    def _maybe_roll(self, incoming_bytes: int, incoming_offsets: int, now_ms: int) -> None:
        active = self._segments.active
        if active.is_empty:
            return
        rolling_ms = active.rolling_timestamp_ms
        reason = None
        if active.size_bytes + incoming_bytes > self.config.segment_bytes:
            reason = "size"
        elif rolling_ms is not None and now_ms - rolling_ms >= self.config.segment_ms:
            reason = "age"
        elif active.next_offset + incoming_offsets - active.base_offset > _RELATIVE_OFFSET_MAX:
            reason = "offsets"
        if reason is not None:
            self._roll(reason)

    def roll(self) -> None:
        """Seal the active segment and start a new one (no-op if it is empty).
        Raises StorageError."""
        self._check_usable()
        if not self._segments.active.is_empty:
            self._roll("requested")

    def _roll(self, reason: str) -> None:
        self._recent = None  # only the active segment's latest append is kept
        old = self._segments.active
        new = LogSegment.create(self.directory, old.next_offset, self.config)
        try:
            old.seal()
        except StorageError:
            delete_files(new.detach())
            raise
        self._segments.add(new)
        self._directory_dirty = True
        self._logger.info("segment rolled", reason=reason, base_offset=new.base_offset)

    # -- reading ------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, *, end_offset_max: int | None = None) -> FileRegion:
        """A region of whole batches starting with the batch that contains ``offset``:
        about ``max_bytes`` of them, at least one, never past ``end_offset_max``
        (exclusive; e.g. the high watermark) and never across a segment boundary.
        Release the region when sent.  Empty at the log end.

        Raises OffsetOutOfRangeError (offset outside [start, end]), StorageError.
        """
        self._check_usable()
        end = self.end_offset
        if offset < self.start_offset or offset > end:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{self.start_offset}, {end}] in {self.directory}"
            )
        limit_offset = end if end_offset_max is None else min(end, end_offset_max)
        if offset >= limit_offset:
            return FileRegion.empty(offset)
        recent = self._recent
        if (
            recent is not None
            and recent[0] == offset
            and recent[1] <= limit_offset
            and len(recent[2]) <= max_bytes
            and recent[3].truncations == recent[4]
        ):
            # A live consumer reading what was just appended: the same batches
            # the file holds, without a read of it.
            return CachedRegion(recent[2], offset, recent[1], recent[3], recent[4])
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
        about the last ``bytes_max`` bytes of the log, oldest first, from an indexed
        batch start (so a little more).  Per batch, headers only.  For rebuilding
        idempotent-producer state on open.  Raises StorageError."""
        assert bytes_max > 0
        self._check_usable()
        chosen: list[LogSegment] = []
        remaining = bytes_max
        for segment in reversed(list(self._segments)):  # few segments reach the budget
            chosen.append(segment)
            remaining -= segment.size_bytes
            if remaining <= 0:
                break
        chosen.reverse()
        for index, segment in enumerate(chosen):
            start = 0
            if index == 0 and remaining < 0:
                _offset, start = segment.offset_index.lookup_by_position(-remaining)
            for _position, fields in walk_header_fields(
                segment.handle.descriptor, start, segment.size_bytes
            ):
                yield fields

    def batch_at(self, offset: int) -> BatchInfo:
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

    # -- flushing -----------------------------------------------------------------------

    def needs_flush(self) -> bool:
        """Whether the flush policy asks for a flush now."""
        if self._unflushed_appends == 0 and not self._directory_dirty:
            return False
        policy = self.config.flush_policy
        if policy is FlushPolicy.EVERY_APPEND:
            return True
        if policy is FlushPolicy.INTERVAL:
            return self._clock_ms() - self._last_flush_ms >= self.config.flush_interval_ms
        return False

    def flush_due_in_ms(self) -> int | None:
        """How long until the interval policy wants a flush (None: no timer needed)."""
        if self.config.flush_policy is not FlushPolicy.INTERVAL:
            return None
        elapsed_ms = self._clock_ms() - self._last_flush_ms
        return max(0, self.config.flush_interval_ms - elapsed_ms)

    def begin_flush(self) -> FlushTicket:
        """Capture what must be synced (event loop).  Pass the ticket to
        :func:`sync_to_disk` (any thread), then :meth:`finish_flush` (event loop)."""
        self._check_usable()
        assert not self._flush_in_progress, "flushes must not overlap"
        active = self._segments.active
        segments = self._segments.from_offset(self._recovery.segment_base_offset)
        ticket = FlushTicket(
            checkpoint=checkpoint.RecoveryCheckpoint(
                offset=active.next_offset,
                segment_base_offset=active.base_offset,
                position=active.size_bytes,
                max_timestamp_ms=active.max_timestamp_ms,
                offset_of_max_timestamp=active.offset_of_max_timestamp,
            ),
            directory=self.directory,
            handles=[segment.handle.acquire() for segment in segments],
            index_paths=[
                path
                for segment in segments
                for path in (segment.offset_index.path, segment.time_index.path)
            ],
            sync_directory=self._directory_dirty,
            appends_covered=self._unflushed_appends,
        )
        self._directory_dirty = False
        self._flush_in_progress = True
        return ticket

    def finish_flush(self, ticket: FlushTicket) -> int:
        """Adopt a synced ticket's recovery point (or, if syncing failed, forget the
        ticket) and release its files.  Returns the recovery offset.
        Raises StorageError if releasing a file fails."""
        assert self._flush_in_progress
        self._flush_in_progress = False
        for handle in ticket.handles:
            handle.release()
        if not ticket.done:
            self._directory_dirty = self._directory_dirty or ticket.sync_directory
            return self._recovery.offset
        assert ticket.checkpoint.offset <= self.end_offset, "log truncated during a flush"
        self._recovery = ticket.checkpoint
        self._unflushed_appends -= ticket.appends_covered
        self._last_flush_ms = self._clock_ms()
        assert self._unflushed_appends >= 0
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
        """Remove sealed segments past retention (by age: newest timestamp older than
        retention_ms; by size: while the log exceeds retention_bytes), oldest first,
        never the active one.  Their files are renamed to ``*.deleted``; unlink them
        with :func:`delete_files` (off the event loop).  Raises StorageError."""
        self._check_usable()
        if self.config.cleanup_policy is CleanupPolicy.COMPACT:
            return RetentionResult(0, 0, self.start_offset, [])
        now_ms = self._clock_ms()
        retention_ms = self.config.retention_ms
        retention_bytes = self.config.retention_bytes
        excess_bytes = -1 if retention_bytes is None else self.size_bytes - retention_bytes
        deleted = 0
        deleted_bytes = 0
        paths: list[Path] = []
        for segment in list(self._segments):
            if segment is self._segments.active:
                break
            too_old = retention_ms is not None and segment.max_timestamp_ms < now_ms - retention_ms
            too_big = segment.size_bytes <= excess_bytes - deleted_bytes
            if not (too_old or too_big):
                break
            self._segments.remove(segment)
            paths.extend(segment.detach())
            deleted += 1
            deleted_bytes += segment.size_bytes
        if deleted:
            self._directory_dirty = True
            self._logger.info(
                "retention deleted segments",
                segments=deleted,
                bytes=deleted_bytes,
                start_offset=self.start_offset,
            )
        return RetentionResult(deleted, deleted_bytes, self.start_offset, paths)

    def enforce_retention(self) -> RetentionResult:
        """Detach and delete expired segments (blocking).  Raises StorageError."""
        result = self.detach_expired_segments()
        delete_files(result.paths)
        return result

    def truncate_to(self, offset: int) -> int:
        """Drop every batch at or after ``offset``; a batch *containing* ``offset`` is
        dropped whole, so the new end may be below ``offset``.  Returns the new log
        end.  A no-op when ``offset >= end``.  The cut is fsynced and the checkpoint
        rewritten before returning (blocking, but rare: replication after a leader
        change).  Regions handed out before may see their bytes cut
        (``FileRegion.is_intact``).

        Raises OffsetOutOfRangeError (offset below the log start), StorageError.
        """
        self._check_usable()
        assert not self._flush_in_progress, "truncate_to during a flush"
        self._recent = None
        if offset >= self.end_offset:
            return self.end_offset
        if offset < self.start_offset:
            raise OffsetOutOfRangeError(
                f"cannot truncate to {offset}: below log start {self.start_offset}"
            )
        segment = self._segments.floor(offset)
        assert segment is not None
        paths: list[Path] = []
        for later in reversed(self._segments.from_offset(segment.next_offset)):
            if later is segment:
                break
            self._segments.remove(later)
            paths.extend(later.detach())
        delete_files(paths)
        new_end = segment.truncate_to(offset)
        try:
            os.fsync(segment.handle.descriptor)
        except OSError as error:
            self._failure = f"fsync after truncation failed: {error}"
            raise StorageError(f"cannot fsync {segment.path}: {error}") from error
        fsync_directory(self.directory)
        if self._recovery.offset > new_end or self._recovery.segment_base_offset > (
            segment.base_offset
        ):
            self._recovery = checkpoint.RecoveryCheckpoint(
                offset=new_end,
                segment_base_offset=segment.base_offset,
                position=segment.size_bytes,
                max_timestamp_ms=segment.max_timestamp_ms,
                offset_of_max_timestamp=segment.offset_of_max_timestamp,
            )
            checkpoint.write_checkpoint(self.directory, self._recovery)
        self._logger.warning("log truncated", offset=offset, end_offset=new_end)
        return new_end

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
        :meth:`finish_compaction`.  Compaction must not overlap truncation or
        retention (AsyncLog's lock).  Raises StorageError."""
        self._check_usable()
        assert self.config.cleanup_policy is CleanupPolicy.COMPACT, "not a compacted log"
        return compaction.plan_compaction(
            self.directory,
            self.config,
            list(self._segments),
            self._recovery.segment_base_offset,
            self._clock_ms(),
        )

    def finish_compaction(
        self, plan: compaction.CompactionPlan, outputs: list[compaction.CompactedSegment]
    ) -> list[Path]:
        """Swap each compacted segment in for the segments it replaces (event loop) and
        release the plan; returns the old files (``*.deleted``) to unlink with
        :func:`delete_files`.  Raises StorageError, LogCorruptError."""
        paths: list[Path] = []
        try:
            for output in outputs:
                paths.extend(self._swap_in(output))
            compaction.finish_work_directory(self.directory)
        finally:
            plan.release()
        if outputs:
            fsync_directory(self.directory)
            self._logger.info(
                "log compacted",
                segments_written=len(outputs),
                segments=len(self._segments),
                records_removed=sum(output.records_removed for output in outputs),
            )
        return paths

    def _swap_in(self, output: compaction.CompactedSegment) -> list[Path]:
        old = self._segments.from_offset(output.base_offset)
        old = [segment for segment in old if segment.base_offset < output.next_offset]
        assert old and old[0].base_offset == output.base_offset, (output, old)
        assert old[-1].next_offset == output.next_offset, (output, old)
        assert all(segment.sealed for segment in old), old
        paths: list[Path] = []
        for segment in old:
            self._segments.remove(segment)
            paths.extend(segment.detach())
        compaction.install_swap(self.directory, output)
        segment = LogSegment.open(self.directory, output.base_offset, self.config)
        if not segment.load(output.next_offset):
            self._logger.warning("compacted segment index rebuilt", file=segment.path.name)
            segment.recover(is_last=False)
        if segment.next_offset != output.next_offset:
            raise LogCorruptError(f"{segment.path}: compacted segment ends at the wrong offset")
        segment.seal()
        self._segments.add(segment)
        self._directory_dirty = True
        return paths

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

    def close(self) -> None:
        """Flush, record the max timestamp in the time index, write the clean-shutdown
        marker and close every file.  Idempotent.  Raises StorageError (the files are
        closed anyway; without the marker the next open recovers)."""
        if self._closed:
            return
        self._recent = None
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
        for segment in self._segments:
            batches = scan_batches(
                segment.handle.descriptor,
                0,
                segment.size_bytes,
                expected_offset=segment.base_offset,
                batch_bytes_max=self.config.batch_bytes_max,
            )
            try:
                last_next = segment.base_offset
                for batch in batches:
                    last_next = batch.next_offset
            except BadBatch as bad:
                raise LogCorruptError(f"{segment.path}: {bad}") from bad
            if last_next != segment.next_offset:
                raise LogCorruptError(f"{segment.path}: ends at {last_next}, expected end")

    def check_invariants(self) -> None:
        """Assert the log's invariants (tests call this after every step)."""
        assert not self._closed
        self._segments.check_invariants()
        for segment in self._segments:
            segment.check_invariants()
        assert self.start_offset <= self.end_offset, (self.start_offset, self.end_offset)
        assert self._recovery.offset <= self.end_offset, (self._recovery, self.end_offset)
        assert self._unflushed_appends >= 0

    def __repr__(self) -> str:
        return (
            f"Log({self.directory}, offsets=[{self.start_offset}, {self.end_offset}), "
            f"segments={len(self._segments)})"
        )


def _list_segments(directory: Path) -> list[int]:
    """Base offsets of the segments in ``directory``; removes leftovers of interrupted
    deletes and writes (``*.deleted``, ``*.tmp``) and indexes without a log.
    Raises StorageError."""
    try:
        names = os.listdir(directory)
    except OSError as error:
        raise StorageError(f"cannot list {directory}: {error}") from error
    assert len(names) < _DIRECTORY_ENTRIES_MAX, f"{directory} has {len(names)} entries"
    stems = {name[: -len(LOG_SUFFIX)] for name in names if name.endswith(LOG_SUFFIX)}
    base_offsets = sorted(int(stem) for stem in stems if len(stem) == 20 and stem.isdigit())
    leftovers = [
        name
        for name in names
        if name.endswith((DELETED_SUFFIX, TEMP_SUFFIX))
        or (name.endswith((INDEX_SUFFIX, TIME_INDEX_SUFFIX)) and name.split(".")[0] not in stems)
    ]
    for name in leftovers:
        try:
            os.unlink(directory / name)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise StorageError(f"cannot remove leftover {directory / name}: {error}") from error
    return base_offsets


def _load_segments(
    directory: Path,
    config: LogConfig,
    base_offsets: list[int],
    clean: bool,
    stored: checkpoint.RecoveryCheckpoint | None,
    segments: LogSegments,
    logger: Any,
) -> bool:
    """Open every segment; trust or recover each (see the module docstring).
    Returns whether recovery started from the stored checkpoint."""
    checkpoint_used = False
    recovery_base = None
    if not clean and stored is not None and stored.segment_base_offset in base_offsets:
        recovery_base = stored.segment_base_offset
    for number, base_offset in enumerate(base_offsets):
        is_last = number == len(base_offsets) - 1
        next_base = None if is_last else base_offsets[number + 1]
        segment = LogSegment.open(directory, base_offset, config)
        segments.add(segment)
        trusted = clean or (recovery_base is not None and base_offset < recovery_base)
        if trusted and segment.load(next_base):
            pass
        elif (
            stored is not None
            and base_offset == recovery_base
            and stored.position <= segment.size_bytes
        ):
            dropped = segment.recover(
                start_position=stored.position,
                start_offset=stored.offset,
                max_timestamp_ms=stored.max_timestamp_ms,
                offset_of_max_timestamp=stored.offset_of_max_timestamp,
                is_last=is_last,
            )
            checkpoint_used = True
            logger.info("segment recovered", file=segment.path.name, bytes_dropped=dropped)
        else:
            if trusted:
                logger.warning("index missing or inconsistent, rebuilding", file=segment.path.name)
            dropped = segment.recover(is_last=is_last)
            logger.info("segment recovered", file=segment.path.name, bytes_dropped=dropped)
        if not is_last:
            if segment.next_offset != next_base:
                raise LogCorruptError(
                    f"{segment.path}: ends at offset {segment.next_offset} but the next "
                    f"segment starts at {next_base}; refusing to open the partition"
                )
            segment.seal()
    return checkpoint_used
