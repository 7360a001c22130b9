"""Flushing a log: what was appended since the last flush, and making it durable.

A flush fsyncs every segment file (and its two indexes) from the recovery point's
segment to the active one, fsyncs the directory if segments were created, renamed or
removed since the last flush, then writes the recovery checkpoint (checkpoint.py)
naming the log end captured at the start.  Once the checkpoint is written, every
batch below that offset survives a power cut.

It runs in three steps so the async shell keeps the fsyncs off the event loop:

1. :meth:`FlushTracker.begin` (event loop) captures a :class:`FlushTicket`: the
   checkpoint to write, a reference on each segment file, the index paths.
2. :func:`sync_to_disk` (any thread) fsyncs through the ticket's own references and
   writes the checkpoint; it touches no log state, so appends, rolls and reads go
   on meanwhile.
3. :meth:`FlushTracker.finish` (event loop) releases the references and tells the
   log whether to adopt the ticket's checkpoint as its recovery point.

Invariants (``FlushTracker.check_invariants``): ``appends_unflushed >= 0``; at most
one flush in progress.  Every fsync goes through :mod:`disk`.

Concurrency: the tracker belongs to the log's owner thread; a ticket is handed to a
worker thread between begin and finish and read-only there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from broker.storage import checkpoint, disk
from broker.storage.config import FlushPolicy, LogConfig
from broker.storage.file_handle import FileHandle
from broker.storage.segments import LogSegments
from client.errors import StorageError


@dataclass
class FlushTicket:
    """What a flush must sync, captured on the event loop.  The handles are
    references owned by the ticket (released by :meth:`FlushTracker.finish`)."""

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
    syncer = disk.current
    try:
        for handle in ticket.handles:
            syncer.fsync(handle.descriptor)
        for path in ticket.index_paths:
            syncer.fsync_path(path)
    except OSError as error:
        raise StorageError(f"fsync in {ticket.directory} failed: {error}") from error
    if ticket.sync_directory:
        syncer.fsync_directory(ticket.directory)
    checkpoint.write_checkpoint(ticket.directory, ticket.checkpoint)
    ticket.done = True


def checkpoint_at_end(segments: LogSegments) -> checkpoint.RecoveryCheckpoint:
    """A checkpoint naming the log's current end (the active segment's)."""
    active = segments.active
    return checkpoint.RecoveryCheckpoint(
        offset=active.next_offset,
        segment_base_offset=active.base_offset,
        position=active.size_bytes,
        max_timestamp_ms=active.max_timestamp_ms,
        offset_of_max_timestamp=active.offset_of_max_timestamp,
    )


class FlushTracker:
    """A log's flush bookkeeping: appends since the last flush, whether the directory
    changed, when the last flush ended, and whether one is in progress."""

    __slots__ = ("appends_unflushed", "directory_dirty", "in_progress", "last_flush_ms")

    def __init__(self, now_ms: int) -> None:
        self.appends_unflushed = 0
        self.directory_dirty = False
        self.in_progress = False
        self.last_flush_ms = now_ms

    def needs_flush(self, config: LogConfig, clock_ms: Callable[[], int]) -> bool:
        """Whether the flush policy asks for a flush now."""
        if self.appends_unflushed == 0 and not self.directory_dirty:
            return False
        policy = config.flush_policy
        if policy is FlushPolicy.EVERY_APPEND:
            return True
        if policy is FlushPolicy.INTERVAL:
            return clock_ms() - self.last_flush_ms >= config.flush_interval_ms
        return False

    def due_in_ms(self, config: LogConfig, now_ms: int) -> int | None:
        """How long until the interval policy wants a flush (None: no timer needed)."""
        if config.flush_policy is not FlushPolicy.INTERVAL:
            return None
        return max(0, config.flush_interval_ms - (now_ms - self.last_flush_ms))

    def begin(
        self,
        directory: Path,
        segments: LogSegments,
        recovery: checkpoint.RecoveryCheckpoint,
    ) -> FlushTicket:
        """Capture what must be synced: every segment from the recovery point's on."""
        assert not self.in_progress, "flushes must not overlap"
        covered = segments.from_offset(recovery.segment_base_offset)
        ticket = FlushTicket(
            checkpoint=checkpoint_at_end(segments),
            directory=directory,
            handles=[segment.handle.acquire() for segment in covered],
            index_paths=[
                path
                for segment in covered
                for path in (segment.offset_index.path, segment.time_index.path)
            ],
            sync_directory=self.directory_dirty,
            appends_covered=self.appends_unflushed,
        )
        self.directory_dirty = False
        self.in_progress = True
        return ticket

    def finish(self, ticket: FlushTicket, now_ms: int) -> bool:
        """Release the ticket's files; returns whether it was synced (the log then
        adopts its checkpoint).  A failed ticket leaves its work for the next flush.
        Raises StorageError if releasing a file fails."""
        assert self.in_progress
        self.in_progress = False
        for handle in ticket.handles:
            handle.release()
        if not ticket.done:
            self.directory_dirty = self.directory_dirty or ticket.sync_directory
            return False
        self.appends_unflushed -= ticket.appends_covered
        self.last_flush_ms = now_ms
        assert self.appends_unflushed >= 0
        return True

    def check_invariants(self) -> None:
        assert self.appends_unflushed >= 0, self.appends_unflushed
