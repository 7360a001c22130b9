"""Truncation: cutting a log's tail at a batch boundary (a follower dropping what a new
leader does not have).

``truncate_segments(segments, offset)`` drops every batch at or after ``offset``; a
batch *containing* ``offset`` goes whole, so the new end may be below ``offset``.
Concretely:

* every segment after the one holding ``offset`` leaves the segment set and its
  files are renamed to ``*.deleted`` (the caller unlinks them);
* the segment holding ``offset`` is cut (``LogSegment.truncate_to``): its file is
  truncated at the batch's position, its offset-index and time-index entries at or
  after the batch are dropped (in memory and on disk), its in-memory tail of recent
  batches is forgotten, its max timestamp recomputed, and it becomes the active,
  unsealed segment again.

The Log around it drops its last-append cache first and makes the cut durable after
(a flush: fsync of the cut file, its indexes, the directory, and a checkpoint naming
the new end), so a power cut after ``truncate_to`` returns never brings the cut
batches back.  File regions handed out before the cut see it
(``FileRegion.is_intact`` turns false for the cut file; a deleted segment's regions
keep reading the old bytes).

Invariants after a cut: the segments are contiguous, the active one ends at the new
end, and no index entry points at or past the end (``LogSegment.check_invariants``).

``restart_segments(segments, directory, config, offset)`` drops *every* segment
and starts the log empty at ``offset`` (Kafka's truncateFullyAndStartAt: a
follower whose leader's log now starts past its own end): the old segments'
files are renamed to ``*.deleted`` first, then one new, empty segment is created
at ``offset``.

Concurrency: the caller owns the segment set (no append, flush, retention or
compaction runs meanwhile; AsyncLog's lock and the partition's append lock).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from broker.storage.config import LogConfig
from broker.storage.segment import LogSegment
from broker.storage.segments import LogSegments


class Truncation(NamedTuple):
    """What a cut removed."""

    end_offset: int  # the new log end
    bytes_dropped: int  # log bytes removed (cut segment and deleted segments)
    segments_deleted: int
    paths: list[Path]  # the deleted segments' files, renamed, to unlink


def truncate_segments(segments: LogSegments, offset: int) -> Truncation:
    """Cut ``segments`` so that they end at or below ``offset`` (see the module
    docstring).  ``offset`` must lie in [start, end).  Raises StorageError (a rename
    or truncation failed; what was cut before stays cut)."""
    segment = segments.floor(offset)
    assert segment is not None and offset < segments.active.next_offset, (offset, segment)
    bytes_before = segments.size_bytes
    paths: list[Path] = []
    deleted = 0
    for later in reversed(segments.from_offset(segment.next_offset)):
        if later is segment:
            break
        segments.remove(later)
        paths.extend(later.detach())
        deleted += 1
    new_end = segment.truncate_to(offset)
    assert segments.active is segment and new_end <= offset, (segment, new_end, offset)
    return Truncation(new_end, bytes_before - segments.size_bytes, deleted, paths)


def restart_segments(
    segments: LogSegments, directory: Path, config: LogConfig, offset: int
) -> Truncation:
    """Replace every segment by one empty segment based at ``offset`` (see the module
    docstring).  Raises StorageError: a rename failed (the segments not yet renamed
    stay) or the new segment could not be created (``segments`` is then empty: the
    caller takes the log offline)."""
    assert offset >= 0, offset
    bytes_before = segments.size_bytes
    paths: list[Path] = []
    old = list(segments)
    for segment in reversed(old):
        if len(segments) == 1:
            # The last one leaves only once its replacement can be created (a file
            # of the same base offset is renamed away first).
            break
        segments.remove(segment)
        paths.extend(segment.detach())
    last = segments.active
    segments.remove(last)
    paths.extend(last.detach())
    segments.add(LogSegment.create(directory, offset, config))
    return Truncation(offset, bytes_before, len(old), paths)
