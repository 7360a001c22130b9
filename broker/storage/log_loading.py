"""Opening a partition directory: listing its segments, loading or recovering each,
and choosing the recovery point; plus the offline check of every batch.

The directory holds the segments (``<base offset>.log`` / ``.index`` /
``.timeindex``, see segment) and ``recovery-checkpoint.json`` / ``clean-shutdown``
(see checkpoint).  Loading goes:

1. Leftovers of interrupted work first: a compaction swap is completed
   (compaction_swap.complete_interrupted_swaps); ``*.deleted`` and ``*.tmp`` files
   and indexes without a ``.log`` are removed.
2. After a clean shutdown every segment is trusted: its indexes are loaded and
   checked against the file's end (a walk of about one index interval).
3. Otherwise the segments wholly before the stored checkpoint's segment are trusted
   the same way; the checkpoint's segment is re-validated from the checkpoint's
   position (every batch's CRC, in order) and every later one from its start.  A bad
   batch in the last segment is a torn tail: cut off.  A bad batch in an earlier
   segment, or segments that do not line up, raise LogCorruptError.
4. A trusted segment whose index is missing or inconsistent is re-validated and its
   indexes rebuilt from its start.

The recovery point of the opened log is the stored checkpoint when recovery started
from it, the log end after a clean shutdown, and the log start otherwise.

Concurrency: runs before the Log exists, in whatever thread opens it (the async shell
uses a worker thread), on the directory it is given only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final, NamedTuple

from broker.storage import checkpoint, compaction_swap, disk
from broker.storage.atomic_file import TEMP_SUFFIX
from broker.storage.batch_scan import BadBatch, scan_batches
from broker.storage.config import LogConfig
from broker.storage.flush import checkpoint_at_end
from broker.storage.offset_index import SUFFIX as INDEX_SUFFIX
from broker.storage.segment import DELETED_SUFFIX, LOG_SUFFIX, LogSegment
from broker.storage.segments import LogSegments
from broker.storage.time_index import SUFFIX as TIME_INDEX_SUFFIX
from client.errors import LogCorruptError, StorageError

# A directory holds a few files per segment; this bounds the listing walk.
_DIRECTORY_ENTRIES_MAX: Final = 1 << 22


class LoadedLog(NamedTuple):
    """The segments of an opened directory and the recovery point to start from."""

    segments: LogSegments
    recovery: checkpoint.RecoveryCheckpoint
    clean: bool  # the last shutdown was clean


def load_directory(
    directory: Path, config: LogConfig, initial_offset: int, now_ms: int, logger: Any
) -> LoadedLog:
    """Load (creating it if empty) the log in an existing ``directory``, recovering it
    if the last shutdown was not clean, and forget the clean shutdown durably.
    ``initial_offset`` is the base offset of a new, empty log.

    Raises LogCorruptError (a sealed segment holds a bad batch, or segments do not
    line up) and StorageError (I/O errors).  Blocking.
    """
    compaction_swap.complete_interrupted_swaps(directory, config.batch_bytes_max)
    base_offsets = list_segments(directory)
    clean = checkpoint.clean_shutdown_marker_exists(directory)
    stored = checkpoint.read_checkpoint(directory)
    segments = LogSegments()
    checkpoint_used = False
    try:
        if not base_offsets:
            segments.add(LogSegment.create(directory, initial_offset, config))
            disk.current.fsync_directory(directory)
        else:
            checkpoint_used = _load_segments(
                directory, config, base_offsets, clean, stored, segments, logger
            )
    except BaseException:
        for segment in segments:
            segment.close()
        raise
    active = segments.active
    if active.rolling_timestamp_ms is not None:
        active.rolling_timestamp_ms = min(active.rolling_timestamp_ms, now_ms)
    if checkpoint_used:
        assert stored is not None
        recovery = stored
    elif clean:  # everything was flushed by close
        recovery = checkpoint_at_end(segments)
    else:
        first = segments.first
        recovery = checkpoint.RecoveryCheckpoint(
            offset=first.base_offset, segment_base_offset=first.base_offset, position=0
        )
    checkpoint.remove_clean_shutdown_marker(directory)
    return LoadedLog(segments, recovery, clean)


def list_segments(directory: Path) -> list[int]:
    """Base offsets of the segments in ``directory``; removes leftovers of interrupted
    deletes and writes (``*.deleted``, ``*.tmp``) and indexes without a log.
    Raises StorageError."""
    try:
        names = os.listdir(directory)
    except OSError as error:
        raise StorageError(f"cannot list {directory}: {error}") from error
    if len(names) >= _DIRECTORY_ENTRIES_MAX:
        raise StorageError(f"{directory} has {len(names)} entries: not a partition directory")
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


def verify_segments(segments: LogSegments, batch_bytes_max: int) -> None:
    """Re-check every batch of every segment (CRC, offsets), like an offline log
    checker.  Reads the whole log.  Raises LogCorruptError naming file and position,
    StorageError."""
    for segment in segments:
        batches = scan_batches(
            segment.handle.descriptor,
            0,
            segment.size_bytes,
            expected_offset=segment.base_offset,
            batch_bytes_max=batch_bytes_max,
        )
        try:
            last_next = segment.base_offset
            for batch in batches:
                last_next = batch.next_offset
        except BadBatch as bad:
            raise LogCorruptError(f"{segment.path}: {bad}") from bad
        if last_next != segment.next_offset:
            raise LogCorruptError(f"{segment.path}: ends at {last_next}, expected end")
