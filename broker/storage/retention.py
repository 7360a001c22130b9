"""Retention: dropping a log's oldest whole segments by age or size.

A sealed segment goes when its newest timestamp is older than ``retention_ms``, or
while the log is bigger than ``retention_bytes``; oldest first, never the active
segment, and never a segment after one that stays (the log start only moves
forward, segment by segment).  A compacted log (``CleanupPolicy.COMPACT``) has no
retention: compaction keeps it small instead.

Removal has two steps so the event loop never waits for an unlink of a big file:
:func:`detach_expired_segments` (event loop) takes the segments out of the log and
renames their files to ``*.deleted`` (metadata only; a fetch still sending from one
keeps reading it through its own file reference), then :func:`delete_files` (worker
thread) unlinks them.  A crash between the two leaves ``*.deleted`` files, which
opening the log removes.  The renames become durable with the next flush, which
fsyncs the directory: after a power cut before it, removed segments may come back,
which only moves the log start back.

Concurrency: :func:`detach_expired_segments` on the log's owner thread (it changes
the segment set); :func:`delete_files` from any thread (it touches no log state).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from broker.storage.config import CleanupPolicy, LogConfig
from broker.storage.segments import LogSegments
from client.errors import StorageError


class RetentionResult(NamedTuple):
    """Segments removed from the log; ``paths`` still need unlinking (delete_files)."""

    segments_deleted: int
    bytes_deleted: int
    start_offset: int
    paths: list[Path]


def detach_expired_segments(
    segments: LogSegments, config: LogConfig, now_ms: int
) -> RetentionResult:
    """Take the sealed segments past retention out of ``segments``, oldest first, and
    rename their files to ``*.deleted``.  Raises StorageError (a rename failed; the
    segments detached before it stay detached)."""
    if config.cleanup_policy is CleanupPolicy.COMPACT:
        return RetentionResult(0, 0, segments.first.base_offset, [])
    retention_ms = config.retention_ms
    retention_bytes = config.retention_bytes
    excess_bytes = -1 if retention_bytes is None else segments.size_bytes - retention_bytes
    deleted = 0
    deleted_bytes = 0
    paths: list[Path] = []
    for segment in list(segments):
        if segment is segments.active:
            break
        too_old = retention_ms is not None and segment.max_timestamp_ms < now_ms - retention_ms
        too_big = segment.size_bytes <= excess_bytes - deleted_bytes
        if not (too_old or too_big):
            break
        segments.remove(segment)
        paths.extend(segment.detach())
        deleted += 1
        deleted_bytes += segment.size_bytes
    return RetentionResult(deleted, deleted_bytes, segments.first.base_offset, paths)


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
