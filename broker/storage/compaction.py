"""Log compaction for compacted topics: keep the newest record per key.

A topic with ``cleanup_policy = "compact"`` (``__consumer_offsets``, and any topic
that asks) is not trimmed by age or size; instead the cleaner rewrites its sealed
segments keeping, for every key, only the record with the highest offset.  A
record whose value is None (a *tombstone*) deletes its key: it is kept like any
newest record until it is ``delete_retention_ms`` old, so readers have time to
see the deletion, then dropped.  Records without a key are kept.

**The one place the broker decodes records.**  The broker never decodes records
on the produce and fetch paths (docs/storage.md).  Compaction cannot avoid it
(it must know each record's key), so it is confined here: it runs only for
compacted topics, in a worker thread, in the background (the maintenance task),
batch by batch in C (msgspec) with one dictionary update per record.

**Offsets never change.**  A consumer's position and committed offsets must stay
valid, so kept records keep their offsets.  Our batch format has no gaps inside a
batch (``record_count == last_offset_delta + 1``), so each run of removed
records becomes one *compaction gap*: a 61-byte control batch (attributes bit 5)
with an empty records section whose header covers the removed offsets.
Consumers skip control batches (client/records/decoder.py) and move past them,
and segments stay contiguous, which the storage layer relies on.

**Steps.**  ``Log.begin_compaction`` (event loop) picks the sealed segments that
lie wholly before the recovery point (flushed, so recovery never re-reads them)
and groups neighbours whose combined size fits in one segment.  It takes file
references on every segment up to the active one's current end.
:func:`build_compacted_segments` (worker thread) decodes all of them once to map
each key to its newest offset, then writes one new segment per group into
``<partition>/cleaner/`` (with its indexes), fsyncs it and renames its ``.log``
to ``<partition>/<base>.log.swap``: that rename is the commit point.
``Log.finish_compaction`` (event loop) swaps each new segment in for its group
(compaction_swap.py, which also completes a swap a crash interrupted).

Memory: the key map holds every distinct key of the log (bounded by
``COMPACTION_KEYS_MAX``: past it the cleaner gives up with a warning rather than
grow without bound), and the writer holds at most one run of records.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from broker.storage import disk
from broker.storage.batch_scan import ScannedBatch
from broker.storage.compaction_swap import (
    SWAP_SUFFIX,
    WORK_DIRECTORY,
    CompactedSegment,
    remove_work_directory,
)
from broker.storage.config import SEGMENT_BYTES_LIMIT, CleanupPolicy, LogConfig
from broker.storage.file_handle import FileHandle, read_exactly
from broker.storage.segment import LOG_SUFFIX, LogSegment, file_stem
from client.errors import LogCorruptError, RecordBatchError, StorageError
from client.records.builder import BatchBuilder, frame_batch
from client.records.decoder import Record, RecordDecoder
from client.records.header import (
    CONTROL_FLAG,
    HEADER_BYTES,
    BatchHeader,
    Compression,
    batch_size_at,
)

# Read segments 8 MiB at a time (as recovery does).
READ_CHUNK_BYTES: Final = 8 * 1024 * 1024
# A run of kept records becomes one batch of at most about this many bytes
# (uncompressed): big enough that per-batch costs vanish, small next to any
# batch_bytes_max a topic would sensibly set.
RUN_BYTES_MAX: Final = 1024 * 1024
# Output is written to the new segment in pieces of about this size.
WRITE_BYTES: Final = 4 * 1024 * 1024
# Distinct keys the cleaner maps in one pass (about 100 bytes each): a guard,
# not a tuning knob.  __consumer_offsets holds one key per group and partition.
COMPACTION_KEYS_MAX: Final = 10_000_000
# Compact when at least this share of the compactable bytes was written since the
# last pass (Kafka's min.cleanable.dirty.ratio).
DIRTY_RATIO_MIN: Final = 0.5

_logger = structlog.get_logger("distributary.storage.compaction")


@dataclass(frozen=True)
class SourceSegment:
    """A segment the cleaner reads: plain values copied on the event loop, and a file
    reference the plan owns."""

    handle: FileHandle
    base_offset: int
    next_offset: int
    size_bytes: int


@dataclass
class CompactionPlan:
    """What one compaction pass reads and rewrites.  Built by ``Log.begin_compaction``;
    :meth:`release` gives the file references back (``Log.finish_compaction`` does)."""

    directory: Path
    config: LogConfig
    now_ms: int
    # Every segment up to the active one's end at planning time, oldest first.
    sources: list[SourceSegment]
    # Groups of neighbouring sources to rewrite, each into one new segment.
    groups: list[list[SourceSegment]]
    released: bool = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        for source in self.sources:
            source.handle.release()


@dataclass
class CompactionResult:
    segments_before: int = 0
    segments_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    records_kept: int = 0
    records_removed: int = 0
    # Offsets below this were compacted by the pass (-1: nothing was).
    cleaned_until: int = -1


def plan_compaction(
    directory: Path,
    config: LogConfig,
    segments: list[LogSegment],
    recovery_segment_base_offset: int,
    now_ms: int,
) -> CompactionPlan | None:
    """Choose what to compact (see the module docstring), or None if nothing can be.
    Takes a file reference on every source segment."""
    assert config.cleanup_policy is CleanupPolicy.COMPACT, "not a compacted log"
    active = segments[-1]
    eligible = [
        segment
        for segment in segments[:-1]
        if segment.sealed and segment.next_offset <= recovery_segment_base_offset
    ]
    if not eligible:
        return None
    sources = [
        SourceSegment(
            segment.handle.acquire(), segment.base_offset, segment.next_offset, segment.size_bytes
        )
        for segment in segments
        if segment is not active or not segment.is_empty
    ]
    by_base = {source.base_offset: source for source in sources}
    groups: list[list[SourceSegment]] = []
    current: list[SourceSegment] = []
    current_bytes = 0
    for segment in eligible:
        source = by_base[segment.base_offset]
        fits = (
            current
            and current_bytes + source.size_bytes <= config.segment_bytes
            and source.next_offset - current[0].base_offset < SEGMENT_BYTES_LIMIT
        )
        if current and not fits:
            groups.append(current)
            current, current_bytes = [], 0
        current.append(source)
        current_bytes += source.size_bytes
    groups.append(current)
    return CompactionPlan(directory, config, now_ms, sources, groups)


# -- the worker-thread part -----------------------------------------------------------


def build_compacted_segments(plan: CompactionPlan) -> list[CompactedSegment]:
    """Map keys to their newest offsets, then write one compacted segment per group
    and rename it to its swap name.  Blocking (run it in a worker thread); touches
    no log state.  Raises StorageError, LogCorruptError (a batch does not decode)."""
    assert not plan.released
    decoder: RecordDecoder[bytes] = RecordDecoder(batch_bytes_max=plan.config.batch_bytes_max)
    latest = _map_newest_offsets(plan, decoder)
    work = plan.directory / WORK_DIRECTORY
    remove_work_directory(plan.directory)
    try:
        work.mkdir()
    except OSError as error:
        raise StorageError(f"cannot create {work}: {error}") from error
    horizon_ms = plan.now_ms - plan.config.delete_retention_ms
    outputs: list[CompactedSegment] = []
    for group in plan.groups:
        output = _rewrite_group(plan, group, latest, decoder, horizon_ms, work)
        if output is not None:
            outputs.append(output)
    disk.current.fsync_directory(plan.directory)
    return outputs


def _map_newest_offsets(plan: CompactionPlan, decoder: RecordDecoder[bytes]) -> dict[bytes, int]:
    latest: dict[bytes, int] = {}
    for source in plan.sources:
        for view, header in _read_batches(source, plan.config.batch_bytes_max):
            if header.attributes & CONTROL_FLAG:
                continue
            records = _decode(decoder, view, header, source)
            latest.update((r.key, r.batch.base_offset + r.offset_delta) for r in records if r.key)
            if len(latest) > COMPACTION_KEYS_MAX:
                raise StorageError(
                    f"{plan.directory}: more than {COMPACTION_KEYS_MAX} distinct keys; "
                    "not compacting"
                )
    return latest


def _decode(
    decoder: RecordDecoder[bytes], view: memoryview, header: BatchHeader, source: SourceSegment
) -> list[Record[bytes]]:
    try:
        return decoder.decode_batch(view, header.position)
    except RecordBatchError as error:
        raise LogCorruptError(
            f"segment {file_stem(source.base_offset)}: batch at offset {header.base_offset} "
            f"does not decode: {error}"
        ) from error


def _read_batches(
    source: SourceSegment, batch_bytes_max: int
) -> Iterator[tuple[memoryview, BatchHeader]]:
    """Every batch of a source segment, read in large chunks (headers parsed, CRCs
    checked by the decoder).  Raises StorageError."""
    position = 0
    descriptor = source.handle.descriptor
    # Each round consumes at least one batch (>= HEADER_BYTES) or stops.
    for _ in range(source.size_bytes // HEADER_BYTES + 1):
        if position >= source.size_bytes:
            return
        chunk = read_exactly(
            descriptor, position, min(READ_CHUNK_BYTES, source.size_bytes - position)
        )
        view = memoryview(chunk)
        first = batch_size_at(view, 0)
        assert first is not None, f"short read at {position}"
        if first > len(view):  # one batch bigger than a chunk
            view = memoryview(read_exactly(descriptor, position, first))
        consumed = 0
        for _ in range(len(view) // HEADER_BYTES + 1):
            size = batch_size_at(view, consumed)
            if size is None or consumed + size > len(view):
                break
            header = BatchHeader.parse(view, consumed, batch_bytes_max=batch_bytes_max)
            yield view, header
            consumed = header.end
        assert consumed > 0, f"no batch at {position}"
        position += consumed
    raise AssertionError("reading a segment made no progress")  # pragma: no cover


def _rewrite_group(
    plan: CompactionPlan,
    group: list[SourceSegment],
    latest: dict[bytes, int],
    decoder: RecordDecoder[bytes],
    horizon_ms: int,
    work: Path,
) -> CompactedSegment | None:
    base_offset, next_offset = group[0].base_offset, group[-1].next_offset
    writer = _SegmentWriter(work, base_offset, plan.config)
    try:
        for source in group:
            for view, header in _read_batches(source, plan.config.batch_bytes_max):
                epoch = header.leader_epoch
                if header.attributes & CONTROL_FLAG:
                    writer.remove(
                        header.base_offset, header.record_count, epoch, header.max_timestamp
                    )
                    continue
                codec = header.compression
                for record in _decode(decoder, view, header, source):
                    offset = record.batch.base_offset + record.offset_delta
                    key = record.key
                    keep = key is None or (
                        latest.get(key) == offset
                        and (record.value is not None or record.timestamp_ms >= horizon_ms)
                    )
                    if keep:
                        writer.keep(offset, record, epoch, codec)
                    else:
                        writer.remove(offset, 1, epoch, record.timestamp_ms)
        segment = writer.finish(next_offset)
    except BaseException:
        writer.abandon()
        raise
    if writer.records_removed == 0 and len(group) == 1:
        writer.abandon()  # nothing to gain
        return None
    swap_path = plan.directory / (file_stem(base_offset) + LOG_SUFFIX + SWAP_SUFFIX)
    try:
        os.replace(segment.path, swap_path)
    except OSError as error:
        writer.abandon()
        raise StorageError(f"cannot rename {segment.path} to {swap_path}: {error}") from error
    return CompactedSegment(
        base_offset,
        next_offset,
        swap_path,
        [segment.offset_index.path, segment.time_index.path],
        segment.size_bytes,
        writer.records_kept,
        writer.records_removed,
    )


class _SegmentWriter:
    """Writes a compacted segment: runs of kept records become batches, runs of
    removed offsets become compaction gaps.  Offsets must arrive contiguous."""

    def __init__(self, work: Path, base_offset: int, config: LogConfig) -> None:
        self.segment = LogSegment.create(work, base_offset, config)
        self.next_offset = base_offset
        self.records_kept = 0
        self.records_removed = 0
        self._builder: BatchBuilder | None = None
        self._run_base = base_offset
        self._run_epoch = -1
        self._run_codec = Compression.NONE
        self._gap_count = 0
        self._gap_max_timestamp_ms = -1
        self._pending = bytearray()
        self._pending_infos: list[ScannedBatch] = []
        self._finished = False

    def keep(self, offset: int, record: Record[bytes], epoch: int, codec: Compression) -> None:
        assert offset == self.next_offset, (offset, self.next_offset)
        self._flush_gap()
        builder = self._builder
        if (
            builder is None
            or epoch != self._run_epoch
            or codec != self._run_codec
            or builder.estimated_bytes >= RUN_BYTES_MAX
        ):
            self._flush_run()
            builder = self._builder = BatchBuilder(codec)
            self._run_base, self._run_epoch, self._run_codec = offset, epoch, codec
        builder.append(record.value, record.key, record.headers, record.timestamp_ms)
        self.next_offset = offset + 1
        self.records_kept += 1

    def remove(self, offset: int, count: int, epoch: int, timestamp_ms: int) -> None:
        assert offset == self.next_offset and count > 0, (offset, self.next_offset, count)
        self._flush_run()
        if self._gap_count and epoch != self._run_epoch:
            self._flush_gap()
        if not self._gap_count:
            self._run_base, self._run_epoch = offset, epoch
        self._gap_count += count
        self._gap_max_timestamp_ms = max(self._gap_max_timestamp_ms, timestamp_ms)
        self.next_offset = offset + count
        self.records_removed += count

    def _flush_run(self) -> None:
        builder, self._builder = self._builder, None
        if builder is None:
            return
        self._add_batch(builder.build(), self._run_base, self._run_epoch)

    def _flush_gap(self) -> None:
        if not self._gap_count:
            return
        timestamp_ms = max(self._gap_max_timestamp_ms, 0)
        gap = frame_batch(
            b"",
            attributes=CONTROL_FLAG,
            record_count=self._gap_count,
            first_timestamp_ms=timestamp_ms,
            max_timestamp_ms=timestamp_ms,
        )
        self._gap_count, self._gap_max_timestamp_ms = 0, -1
        self._add_batch(gap, self._run_base, self._run_epoch)

    def _add_batch(self, batch: bytearray, base_offset: int, epoch: int) -> None:
        header = BatchHeader.parse(batch)
        header.verify_crc()
        header.stamp(base_offset, epoch)
        self._pending_infos.append(
            ScannedBatch(
                len(self._pending),
                base_offset,
                header.next_offset,
                header.batch_bytes,
                header.first_timestamp,
                header.max_timestamp,
            )
        )
        self._pending += batch
        if len(self._pending) >= WRITE_BYTES:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending_infos:
            self.segment.append(self._pending, self._pending_infos)
        self._pending = bytearray()
        self._pending_infos = []

    def finish(self, next_offset: int) -> LogSegment:
        """Flush, seal and fsync the new segment.  Raises StorageError."""
        assert self.next_offset == next_offset, (self.next_offset, next_offset)
        self._flush_run()
        self._flush_gap()
        self._write_pending()
        segment = self.segment
        assert segment.next_offset == next_offset, (segment, next_offset)
        segment.seal()
        try:
            syncer = disk.current
            syncer.fsync(segment.handle.descriptor)
            syncer.fsync_path(segment.offset_index.path)
            syncer.fsync_path(segment.time_index.path)
        except OSError as error:
            raise StorageError(f"cannot fsync {segment.path}: {error}") from error
        segment.close()
        self._finished = True
        return segment

    def abandon(self) -> None:
        """Drop the partial output (its files go with the work directory)."""
        if not self._finished:
            self._finished = True
            self.segment.close()


def summarize(plan: CompactionPlan, outputs: list[CompactedSegment]) -> CompactionResult:
    """What a pass did (for logs and tests)."""
    groups = {group[0].base_offset: group for group in plan.groups}
    result = CompactionResult(cleaned_until=plan.groups[-1][-1].next_offset)
    for output in outputs:
        group = groups[output.base_offset]
        result.segments_before += len(group)
        result.segments_after += 1
        result.bytes_before += sum(source.size_bytes for source in group)
        result.bytes_after += output.size_bytes
        result.records_kept += output.records_kept
        result.records_removed += output.records_removed
    return result


def dirty_ratio(sizes: list[tuple[int, int]], cleaned_until: int) -> float:
    """Share of the bytes of sealed segments (``(next_offset, size_bytes)`` each)
    that lie after ``cleaned_until``, i.e. were written since the last pass."""
    total = sum(size for _, size in sizes)
    if total == 0:
        return 0.0
    dirty = sum(size for next_offset, size in sizes if next_offset > cleaned_until)
    return dirty / total
