"""Installing compacted segments: online, and completing a swap a crash interrupted.

The cleaner (compaction.py) writes each new segment into ``<partition>/cleaner/``
(the work directory), fsyncs it and renames its ``.log`` to
``<partition>/<base>.log.swap``; that rename is the commit point.  Then, on the
event loop, :func:`swap_in` takes the old segments the new one replaces out of the
log (their files renamed to ``*.deleted``), renames the swap file to ``<base>.log``,
moves its indexes beside it and adds the new segment to the log.

**Crash safety.**  Opening a log calls :func:`complete_interrupted_swaps` first: a
``.swap`` file means the new segment was complete, so every old segment whose base
offset lies in the swap's offset range is deleted and the swap is renamed into place
(its indexes are rebuilt by the usual recovery if missing).  Without a ``.swap`` file
the old segments are intact; the work directory is removed either way.

Invariants: a swapped-in segment covers exactly the offsets of the sealed segments
it replaces (same first base offset, same end), so the log stays contiguous.

Concurrency: :func:`swap_in` on the log's owner thread (it changes the segment set),
never during truncation or retention (AsyncLog's lock); the rest runs before the log
is open or from the cleaner's worker thread.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from broker.storage import disk, offset_index, time_index
from broker.storage.batch_scan import BadBatch, scan_batches
from broker.storage.config import LogConfig
from broker.storage.segment import LOG_SUFFIX, LogSegment, file_stem
from broker.storage.segments import LogSegments
from client.errors import LogCorruptError, StorageError

SWAP_SUFFIX: Final = ".swap"
WORK_DIRECTORY: Final = "cleaner"

_logger = structlog.get_logger("distributary.storage.compaction")


@dataclass
class CompactedSegment:
    """One new segment, written and renamed to its swap name, not yet in the log."""

    base_offset: int
    next_offset: int
    swap_path: Path
    index_paths: list[Path]  # in the work directory; moved beside the .log on swap
    size_bytes: int
    records_kept: int
    records_removed: int


def remove_work_directory(directory: Path) -> None:
    """Remove the cleaner's work directory of a partition, if any.  Raises StorageError."""
    work = directory / WORK_DIRECTORY
    try:
        shutil.rmtree(work)
    except FileNotFoundError:
        return
    except OSError as error:
        raise StorageError(f"cannot remove {work}: {error}") from error


def swap_in_all(
    directory: Path,
    config: LogConfig,
    segments: LogSegments,
    outputs: list[CompactedSegment],
    logger: Any,
) -> list[Path]:
    """Swap each output in (:func:`swap_in`), remove the work directory and fsync the
    partition directory; returns the old files (``*.deleted``) to unlink.
    Raises StorageError, LogCorruptError."""
    paths: list[Path] = []
    for output in outputs:
        paths.extend(swap_in(directory, config, segments, output, logger))
    remove_work_directory(directory)
    if outputs:
        disk.current.fsync_directory(directory)
        logger.info(
            "log compacted",
            segments_written=len(outputs),
            segments=len(segments),
            records_removed=sum(output.records_removed for output in outputs),
        )
    return paths


def swap_in(
    directory: Path,
    config: LogConfig,
    segments: LogSegments,
    output: CompactedSegment,
    logger: Any,
) -> list[Path]:
    """Replace the sealed segments ``output`` covers with it, in ``segments`` and on
    disk; returns the old files (``*.deleted``) to unlink.  The directory still
    needs an fsync.  Raises StorageError, LogCorruptError."""
    old = segments.from_offset(output.base_offset)
    old = [segment for segment in old if segment.base_offset < output.next_offset]
    assert old and old[0].base_offset == output.base_offset, (output, old)
    assert old[-1].next_offset == output.next_offset, (output, old)
    assert all(segment.sealed for segment in old), old
    paths: list[Path] = []
    for segment in old:
        segments.remove(segment)
        paths.extend(segment.detach())
    _install_swap(directory, output)
    segment = LogSegment.open(directory, output.base_offset, config)
    if not segment.load(output.next_offset):
        logger.warning("compacted segment index rebuilt", file=segment.path.name)
        segment.recover(is_last=False)
    if segment.next_offset != output.next_offset:
        raise LogCorruptError(f"{segment.path}: compacted segment ends at the wrong offset")
    segment.seal()
    segments.add(segment)
    return paths


def _install_swap(directory: Path, output: CompactedSegment) -> None:
    """Rename a swap file to its segment name and move its indexes beside it (the old
    segments must already be detached).  Raises StorageError."""
    stem = file_stem(output.base_offset)
    try:
        os.replace(output.swap_path, directory / (stem + LOG_SUFFIX))
        for path in output.index_paths:
            os.replace(path, directory / path.name)
    except OSError as error:
        raise StorageError(f"cannot install compacted segment {stem}: {error}") from error


def complete_interrupted_swaps(directory: Path, batch_bytes_max: int) -> int:
    """Finish any swap a crash interrupted (see the module docstring); returns how
    many.  Called before a log lists its segments.  Raises StorageError,
    LogCorruptError (a swap file that does not scan: it was fsynced before being
    named, so that is corruption)."""
    try:
        names = os.listdir(directory)
    except OSError as error:
        raise StorageError(f"cannot list {directory}: {error}") from error
    suffix = LOG_SUFFIX + SWAP_SUFFIX
    swaps = sorted(
        name
        for name in names
        if name.endswith(suffix) and len(name) == 20 + len(suffix) and name[:20].isdigit()
    )
    for name in swaps:
        stem = name[:20]
        base_offset = int(stem)
        swap_path = directory / name
        end_offset = _swap_end_offset(swap_path, base_offset, batch_bytes_max)
        for other in names:
            if not other.endswith(LOG_SUFFIX) or not other[:20].isdigit() or len(other) != 24:
                continue
            other_base = int(other[:20])
            if base_offset <= other_base < end_offset:
                _unlink_segment_files(directory, other[:20])
        try:
            os.replace(swap_path, directory / (stem + LOG_SUFFIX))
        except OSError as error:
            raise StorageError(f"cannot rename {swap_path}: {error}") from error
        _logger.warning(
            "completed an interrupted compaction swap",
            directory=str(directory),
            base_offset=base_offset,
            end_offset=end_offset,
        )
    remove_work_directory(directory)
    if swaps:
        disk.current.fsync_directory(directory)
    return len(swaps)


def _swap_end_offset(path: Path, base_offset: int, batch_bytes_max: int) -> int:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise StorageError(f"cannot open {path}: {error}") from error
    try:
        size = os.fstat(descriptor).st_size
        end = base_offset
        for batch in scan_batches(
            descriptor, 0, size, expected_offset=base_offset, batch_bytes_max=batch_bytes_max
        ):
            end = batch.next_offset
        return end
    except BadBatch as bad:
        raise LogCorruptError(f"{path}: compacted segment is corrupt: {bad}") from bad
    except OSError as error:
        raise StorageError(f"cannot read {path}: {error}") from error
    finally:
        os.close(descriptor)


def _unlink_segment_files(directory: Path, stem: str) -> None:
    for suffix in (LOG_SUFFIX, offset_index.SUFFIX, time_index.SUFFIX):
        try:
            os.unlink(directory / (stem + suffix))
        except FileNotFoundError:
            continue
        except OSError as error:
            raise StorageError(f"cannot remove {directory / (stem + suffix)}: {error}") from error
