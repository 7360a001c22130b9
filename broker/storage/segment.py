"""One log segment: a ``.log`` file of batches plus its two sparse indexes.

Files, named by the segment's base offset in 20 digits (``00000000000000000042``):

* ``.log``: record batches back to back, byte for byte as produced (61-byte header
  + records), with base_offset and leader_epoch stamped by the log.  No other
  framing: the file is a valid Fetch payload at every batch boundary.
* ``.index`` / ``.timeindex``: see offset_index and time_index.

Invariants (``check_invariants``): batches are contiguous (each starts at the
offset the previous one ended at); ``base_offset <= next_offset``; the file size is
``size_bytes``; every index entry points below the end.  A sealed segment is never
appended to again (only truncated, by ``Log.truncate_to``, which makes it active).

Concurrency: the owning Log calls everything from the event-loop thread.  Regions
handed out by :meth:`read` hold their own reference on the file handle, so they stay
readable (from any thread) after the segment is truncated or deleted.  A flush
fsyncs from a worker thread through descriptors it holds references on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Final

import structlog

from broker.storage import file_handle, offset_index, time_index
from broker.storage.batch_scan import BadBatch, ScannedBatch, scan_batches, walk_headers
from broker.storage.config import LogConfig
from broker.storage.file_handle import FileHandle, FileRegion
from broker.storage.index_repair import find_batch, rebuild_after_bad_entry, walk_checked
from broker.storage.offset_index import OffsetIndex
from broker.storage.time_index import TimeIndex
from client.errors import LogCorruptError, StorageError

LOG_SUFFIX: Final = ".log"
DELETED_SUFFIX: Final = ".deleted"
_logger = structlog.get_logger("distributary.storage.segment")


def file_stem(base_offset: int) -> str:
    """The 20-digit name every file of a segment starts with."""
    assert base_offset >= 0, base_offset
    return f"{base_offset:020d}"


class LogSegment:
    """A ``.log`` file and its indexes, covering offsets [base_offset, next_offset)."""

    __slots__ = (
        "base_offset",
        "bytes_since_index_entry",
        "config",
        "handle",
        "index_rebuilds",
        "max_timestamp_ms",
        "next_offset",
        "offset_index",
        "offset_of_max_timestamp",
        "rolling_timestamp_ms",
        "sealed",
        "size_bytes",
        "tail",
        "time_index",
    )

    def __init__(
        self, directory: Path, base_offset: int, handle: FileHandle, config: LogConfig
    ) -> None:
        stem = directory / file_stem(base_offset)
        self.base_offset = base_offset
        self.handle = handle
        self.config = config
        self.offset_index = OffsetIndex(
            stem.with_suffix(offset_index.SUFFIX), base_offset, bytearray()
        )
        self.time_index = TimeIndex(stem.with_suffix(time_index.SUFFIX), base_offset, bytearray())
        self.next_offset = base_offset
        self.size_bytes = 0
        self.max_timestamp_ms = -1
        self.offset_of_max_timestamp = base_offset
        # Max timestamp of the segment's first batch: segment_ms counts from it (as
        # Kafka's rollingBasedTimestamp).  None while empty.
        self.rolling_timestamp_ms: int | None = None
        self.bytes_since_index_entry = 0
        self.sealed = False
        self.index_rebuilds = 0  # offset index rebuilt after a lookup found it wrong (index_repair)
        # The batches from the last offset-index entry's to the end, in order, while
        # known (None after opening, a rollback or a truncation, until the next
        # index entry): a live consumer's fetch finds its batch here instead of
        # reading headers from the file.  At most one index interval of batches.
        self.tail: list[ScannedBatch] | None = []

    # -- creating and opening -----------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, config: LogConfig) -> LogSegment:
        """A new, empty segment (stale index files of that name are replaced).
        Raises StorageError."""
        stem = directory / file_stem(base_offset)
        for suffix in (offset_index.SUFFIX, time_index.SUFFIX):
            try:
                os.unlink(stem.with_suffix(suffix))
            except FileNotFoundError:
                pass
            except OSError as error:
                raise StorageError(f"cannot remove stale {stem}{suffix}: {error}") from error
        handle = FileHandle.open(stem.with_suffix(LOG_SUFFIX), create=True)
        segment = cls(directory, base_offset, handle, config)
        try:
            segment.offset_index.rewrite()
            segment.time_index.rewrite()
        except OSError as error:
            handle.release()
            raise StorageError(f"cannot create index files for {stem}: {error}") from error
        return segment

    @classmethod
    def open(cls, directory: Path, base_offset: int, config: LogConfig) -> LogSegment:
        """Open an existing segment's ``.log`` (its state is loaded by :meth:`load` or
        :meth:`recover`).  Raises StorageError."""
        path = directory / (file_stem(base_offset) + LOG_SUFFIX)
        segment = cls(directory, base_offset, FileHandle.open(path, create=False), config)
        try:
            segment.size_bytes = os.fstat(segment.handle.descriptor).st_size
        except OSError as error:
            segment.handle.release()
            raise StorageError(f"cannot stat {path}: {error}") from error
        return segment

    @property
    def path(self) -> Path:
        return self.handle.path

    @property
    def is_empty(self) -> bool:
        return self.size_bytes == 0

    def load(self, next_offset: int | None) -> bool:
        """Trust the file (it was flushed, or shut down cleanly) and load the indexes.

        ``next_offset`` is the next segment's base offset for a sealed segment, or
        None for the last one (found by walking headers from the last index entry).
        Returns False when an index is missing or inconsistent: the caller must then
        :meth:`recover` the segment from its start.  Raises StorageError.
        """
        loaded_offsets = OffsetIndex.load(self.offset_index.path, self.base_offset)
        loaded_times = TimeIndex.load(self.time_index.path, self.base_offset)
        if loaded_offsets is None or loaded_times is None:
            return False
        indexed_offset, indexed_position = loaded_offsets.last_entry()
        if indexed_position >= max(self.size_bytes, 1) and loaded_offsets.entry_count:
            return False
        if self.size_bytes == 0:
            if loaded_offsets.entry_count or loaded_times.entry_count:
                return False
            self.offset_index, self.time_index = loaded_offsets, loaded_times
            self.tail = None
            self.next_offset = self.base_offset if next_offset is None else next_offset
            return next_offset is None or next_offset == self.base_offset
        last: ScannedBatch | None = None
        # Walk from the last indexed batch to the end (about one index interval): it
        # checks that the entry points at a batch and yields the segment's end.
        batches = scan_batches(
            self.handle.descriptor,
            indexed_position,
            self.size_bytes,
            expected_offset=indexed_offset,
            batch_bytes_max=self.config.batch_bytes_max,
            verify_crc=False,
        )
        try:
            for last in batches:  # noqa: B007 - bounded by the file size
                pass
        except BadBatch:
            return False
        if last is None:
            return False
        if last.end != self.size_bytes or (
            next_offset is not None and last.next_offset != next_offset
        ):
            return False
        if loaded_times.entry_count and loaded_times.last_offset >= last.next_offset:
            return False
        self.offset_index, self.time_index = loaded_offsets, loaded_times
        self.tail = None
        self.next_offset = last.next_offset
        self.max_timestamp_ms = max(loaded_times.last_timestamp_ms, last.max_timestamp_ms)
        self.offset_of_max_timestamp = (
            loaded_times.last_offset
            if loaded_times.last_timestamp_ms >= last.max_timestamp_ms
            else last.base_offset
        )
        self.bytes_since_index_entry = self.size_bytes - indexed_position
        self._load_rolling_timestamp()
        return True

    def _load_rolling_timestamp(self) -> None:
        first = next(walk_headers(self.handle.descriptor, 0, min(self.size_bytes, 1)), None)
        self.rolling_timestamp_ms = None if first is None else first.max_timestamp_ms

    def recover(
        self,
        *,
        start_position: int = 0,
        start_offset: int | None = None,
        max_timestamp_ms: int = -1,
        offset_of_max_timestamp: int | None = None,
        is_last: bool,
    ) -> int:
        """Re-validate every batch from ``start_position`` (a batch boundary at
        ``start_offset``; everything before it is trusted), rebuild the indexes past
        it and truncate a torn tail.  Returns the number of bytes dropped.

        Raises LogCorruptError (naming file and position) when a bad batch is found
        and this is not the last segment: a sealed segment is never torn by a crash
        of this process, so a bad batch there is corruption, and serving the data
        after it would be wrong.  Raises StorageError on an I/O error.
        """
        start_offset = self.base_offset if start_offset is None else start_offset
        assert 0 <= start_position <= self.size_bytes, (start_position, self.size_bytes)
        start_position, start_offset = self._reset_state_to(
            start_position, start_offset, max_timestamp_ms, offset_of_max_timestamp
        )
        batches = scan_batches(
            self.handle.descriptor,
            start_position,
            self.size_bytes,
            expected_offset=start_offset,
            batch_bytes_max=self.config.batch_bytes_max,
        )
        valid_end = start_position
        try:
            for batch in batches:
                self._account(batch)
                valid_end = batch.end
        except BadBatch as bad:
            if not is_last:
                raise LogCorruptError(
                    f"{self.path}: corrupt batch at position {bad.position} in a sealed "
                    f"segment ({bad.reason}); refusing to open the partition"
                ) from bad
            _logger.warning(
                "truncating torn tail",
                file=str(self.path),
                position=bad.position,
                reason=bad.reason,
                bytes_dropped=self.size_bytes - bad.position,
            )
        dropped = self.size_bytes - valid_end
        try:
            if dropped:
                os.ftruncate(self.handle.descriptor, valid_end)
                self.handle.truncations += 1
            self.offset_index.write_pending()
            self.time_index.write_pending()
        except OSError as error:
            raise StorageError(f"cannot repair {self.path}: {error}") from error
        self.size_bytes = valid_end
        return dropped

    def _reset_state_to(
        self,
        position: int,
        offset: int,
        max_timestamp_ms: int,
        offset_of_max_timestamp: int | None,
    ) -> tuple[int, int]:
        """Load whatever index prefix is usable below ``position`` and drop the rest.
        Returns the (position, offset) the caller's scan must start from: the ones
        given, or the segment's start when an index is unusable and both are rebuilt."""
        loaded_offsets = OffsetIndex.load(self.offset_index.path, self.base_offset)
        loaded_times = TimeIndex.load(self.time_index.path, self.base_offset)
        if position == 0 or loaded_offsets is None or loaded_times is None:
            # Rebuild both from scratch: the scan must then start at the beginning.
            position, offset, max_timestamp_ms, offset_of_max_timestamp = (
                0,
                self.base_offset,
                -1,
                None,
            )
            loaded_offsets = OffsetIndex(self.offset_index.path, self.base_offset, bytearray())
            loaded_times = TimeIndex(self.time_index.path, self.base_offset, bytearray())
        self.offset_index, self.time_index = loaded_offsets, loaded_times
        self.tail = None
        try:
            self.offset_index.truncate_from_position(position)
            self.time_index.truncate_from_offset(offset)
            if position == 0:
                self.offset_index.rewrite()
                self.time_index.rewrite()
        except OSError as error:
            raise StorageError(f"cannot reset indexes of {self.path}: {error}") from error
        self.next_offset = offset
        if self.time_index.last_timestamp_ms > max_timestamp_ms:
            max_timestamp_ms = self.time_index.last_timestamp_ms
            offset_of_max_timestamp = self.time_index.last_offset
        self.max_timestamp_ms = max_timestamp_ms
        self.offset_of_max_timestamp = (
            self.base_offset if offset_of_max_timestamp is None else offset_of_max_timestamp
        )
        _, indexed_position = self.offset_index.lookup_by_position(position)
        self.bytes_since_index_entry = position - indexed_position
        self.rolling_timestamp_ms = None
        if position > 0:
            self._load_rolling_timestamp()
        return position, offset

    # -- appending ----------------------------------------------------------------------

    def _account(self, batch: ScannedBatch) -> None:
        """Advance the in-memory state over one written batch and index it if due
        (the same rule for appends, recovery and rebuilds)."""
        assert batch.base_offset == self.next_offset, (batch.base_offset, self.next_offset)
        if self.rolling_timestamp_ms is None:
            self.rolling_timestamp_ms = batch.max_timestamp_ms
        if batch.max_timestamp_ms > self.max_timestamp_ms:
            self.max_timestamp_ms = batch.max_timestamp_ms
            self.offset_of_max_timestamp = batch.base_offset
        if self.bytes_since_index_entry >= self.config.index_interval_bytes:
            self.offset_index.append(batch.base_offset, batch.position)
            self.time_index.maybe_append(self.max_timestamp_ms, self.offset_of_max_timestamp)
            self.bytes_since_index_entry = 0
            self.tail = [batch]
        elif self.tail is not None:
            self.tail.append(batch)
        self.bytes_since_index_entry += batch.batch_bytes
        self.next_offset = batch.next_offset

    def append(self, data: bytes | bytearray | memoryview, batches: Sequence[ScannedBatch]) -> None:
        """Write ``data`` (the stamped batches described by ``batches``, positions
        relative to ``data``) at the end of the file and index them.

        All or nothing: on an OSError the file and indexes are cut back to where they
        were and StorageError is raised.  If even that fails, StorageError says so and
        the caller must stop using the segment.
        """
        assert not self.sealed, f"append to sealed segment {self.path}"
        assert batches and batches[0].base_offset == self.next_offset
        saved = (
            self.next_offset,
            self.size_bytes,
            self.max_timestamp_ms,
            self.offset_of_max_timestamp,
            self.rolling_timestamp_ms,
            self.bytes_since_index_entry,
            self.offset_index.entry_count,
            self.time_index.entry_count,
        )
        start = self.size_bytes
        assert start + len(data) < 1 << 32, "segment position would overflow the index"
        try:
            file_handle.write_all(self.handle.descriptor, data)
            for batch in batches:
                if start:
                    batch = ScannedBatch(start + batch.position, *batch[1:])
                self._account(batch)
            self.size_bytes = start + len(data)
            self.offset_index.write_pending()
            self.time_index.write_pending()
        except OSError as error:
            self._roll_back(saved, error)
            raise StorageError(f"append to {self.path} failed: {error}") from error

    def _roll_back(
        self, saved: tuple[int, int, int, int, int | None, int, int, int], error: OSError
    ) -> None:
        (
            self.next_offset,
            self.size_bytes,
            self.max_timestamp_ms,
            self.offset_of_max_timestamp,
            self.rolling_timestamp_ms,
            self.bytes_since_index_entry,
            offset_entries,
            time_entries,
        ) = saved
        self.tail = None
        try:
            os.ftruncate(self.handle.descriptor, self.size_bytes)
            self.offset_index.truncate_entries(offset_entries)
            self.time_index.truncate_entries(time_entries)
        except OSError as rollback_error:
            raise StorageError(
                f"{self.path}: append failed ({error}) and so did the rollback "
                f"({rollback_error}); the segment is unusable until reopened"
            ) from rollback_error

    def seal(self) -> None:
        """Stop appending: record the final max timestamp and close index writers.
        Raises StorageError."""
        self.write_final_time_entry()
        self.offset_index.close()
        self.time_index.close()
        self.sealed = True
        self.tail = None  # reads of sealed segments go through the index

    def write_final_time_entry(self) -> None:
        """Index the segment's current max timestamp (done on seal and close, so the
        time index's last entry is the max).  Raises StorageError."""
        if self.max_timestamp_ms > self.time_index.last_timestamp_ms:
            self.time_index.maybe_append(self.max_timestamp_ms, self.offset_of_max_timestamp)
            try:
                self.time_index.write_pending()
            except OSError as error:
                self.time_index.truncate_entries(self.time_index.entry_count - 1)
                raise StorageError(f"cannot write {self.time_index.path}: {error}") from error

    # -- reading ------------------------------------------------------------------------

    def _tail_index(self, offset: int) -> int | None:
        """Where the batch containing ``offset`` is in ``tail``, if it is there.
        Searched from the end: live consumers read the newest batches."""
        tail = self.tail
        if not tail or tail[0].base_offset > offset:
            return None
        for index in range(len(tail) - 1, -1, -1):  # bounded by one index interval
            if tail[index].base_offset <= offset:
                return index
        return None

    def locate(self, offset: int) -> ScannedBatch:
        """The batch containing ``offset`` (base_offset <= offset < next_offset).
        An index entry that does not lead to it is logged and the index rebuilt.
        Raises LogCorruptError (a damaged header on the way), StorageError."""
        assert self.base_offset <= offset < self.next_offset, (offset, self.base_offset)
        index = self._tail_index(offset)
        if index is not None:
            assert self.tail is not None
            return self.tail[index]
        indexed_offset, indexed_position = self.offset_index.lookup(offset)
        descriptor = self.handle.descriptor
        found = find_batch(descriptor, offset, indexed_offset, indexed_position, self.size_bytes)
        if found is not None:
            return found
        # The entry is off (or a header past it damaged): rebuild, walk from the start.
        rebuild_after_bad_entry(self, indexed_offset, indexed_position)
        found = find_batch(descriptor, offset, self.base_offset, 0, self.size_bytes)
        if found is None:  # pragma: no cover - the rebuild walked past offset
            raise LogCorruptError(f"{self.path}: offset {offset} not found")
        return found

    def read(self, offset: int, max_bytes: int, end_position: int | None = None) -> FileRegion:
        """Whole batches from the one containing ``offset``, at most ``max_bytes`` of
        them unless the first alone is bigger (it is then returned whole, so a reader
        always makes progress), ending at or before ``end_position``."""
        tail = self.tail
        first_index = self._tail_index(offset)
        first = self.locate(offset) if first_index is None or tail is None else tail[first_index]
        limit_position = self.size_bytes if end_position is None else end_position
        assert first.position < limit_position <= self.size_bytes
        limit_position = min(limit_position, first.position + max(max_bytes, first.batch_bytes))
        later: Iterable[ScannedBatch]
        if first_index is not None and tail is not None:
            later = islice(tail, first_index + 1, None)  # in memory, bounded by the tail
        else:
            # Every batch before the last indexed batch starting below the limit fits,
            # so walking from the entry before that one crosses at most two index
            # intervals.
            number = self.offset_index.floor_entry_number(limit_position - 1, field=1)
            walk_from = first.position
            if number >= 1:
                relative, entry_position = self.offset_index.entry(number - 1)
                if entry_position > walk_from:
                    entry_offset = self.base_offset + relative
                    checked = walk_checked(
                        self.handle.descriptor, entry_offset, entry_position, limit_position
                    )
                    if checked is None:  # the entry is off: rebuild, walk from ``first``
                        rebuild_after_bad_entry(self, entry_offset, entry_position)
                    else:
                        walk_from, later = entry_position, checked
            if walk_from == first.position:
                later = walk_headers(self.handle.descriptor, walk_from, limit_position)
        last = first
        for batch in later:
            if batch.end > limit_position:
                break
            last = batch
        return FileRegion(
            self.handle,
            first.position,
            last.end - first.position,
            first.base_offset,
            last.next_offset,
        )

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Base offset of the first batch whose max timestamp is >= ``timestamp_ms``,
        or None.  Per batch: a batch holding both older and newer records is
        returned whole (the broker does not decode records)."""
        if self.max_timestamp_ms < timestamp_ms or self.is_empty:
            return None
        start_offset = self.time_index.lookup_before(timestamp_ms)
        start = self.locate(self.base_offset if start_offset is None else start_offset)
        for batch in walk_headers(self.handle.descriptor, start.position, self.size_bytes):
            if batch.max_timestamp_ms >= timestamp_ms:
                return batch.base_offset
        return None

    # -- truncating, deleting -------------------------------------------------

    def truncate_to(self, offset: int) -> int:
        """Drop the batch containing ``offset`` and everything after it; returns the
        new next offset (<= ``offset``).  Makes the segment active again.
        Raises StorageError."""
        if offset >= self.next_offset:
            return self.next_offset
        batch = self.locate(max(offset, self.base_offset))
        try:
            os.ftruncate(self.handle.descriptor, batch.position)
            self.handle.truncations += 1
            self.offset_index.truncate_from_offset(batch.base_offset)
            self.time_index.truncate_from_offset(batch.base_offset)
        except OSError as error:
            raise StorageError(f"cannot truncate {self.path}: {error}") from error
        self.size_bytes = batch.position
        self.next_offset = batch.base_offset
        self.sealed = False
        self.tail = None
        # Recompute the max timestamp: batches before the last time entry's batch are
        # covered by it; walk the rest.
        self.max_timestamp_ms = self.time_index.last_timestamp_ms
        self.offset_of_max_timestamp = self.time_index.last_offset
        walk_from = 0
        if self.time_index.entry_count:
            walk_from = self.locate(self.time_index.last_offset).position
        for later in walk_headers(self.handle.descriptor, walk_from, self.size_bytes):
            if later.max_timestamp_ms > self.max_timestamp_ms:
                self.max_timestamp_ms = later.max_timestamp_ms
                self.offset_of_max_timestamp = later.base_offset
        _, indexed_position = self.offset_index.lookup_by_position(self.size_bytes)
        self.bytes_since_index_entry = self.size_bytes - indexed_position
        if self.is_empty:
            self.rolling_timestamp_ms = None
            self.offset_of_max_timestamp = self.base_offset
        return self.next_offset

    def detach(self) -> list[Path]:
        """Rename the files to ``*.deleted`` (fast, metadata only) and drop the
        segment's file reference; returns the paths for a worker thread to unlink.
        Open regions keep reading the unlinked file.  Raises StorageError."""
        self.offset_index.close()
        self.time_index.close()
        renamed: list[Path] = []
        for path in (self.path, self.offset_index.path, self.time_index.path):
            target = path.with_name(path.name + DELETED_SUFFIX)
            try:
                os.replace(path, target)
            except FileNotFoundError:
                continue
            except OSError as error:
                raise StorageError(f"cannot rename {path} for deletion: {error}") from error
            renamed.append(target)
        self.handle.release()
        return renamed

    def close(self) -> None:
        """Close the index writers and drop the segment's reference on the file."""
        self.offset_index.close()
        self.time_index.close()
        self.handle.release()

    def check_invariants(self) -> None:
        """Size matches the file; indexes are consistent and point below the end."""
        assert self.base_offset <= self.next_offset, (self.base_offset, self.next_offset)
        assert self.handle.is_open
        assert os.fstat(self.handle.descriptor).st_size == self.size_bytes, self.path
        assert (self.size_bytes == 0) == (self.next_offset == self.base_offset), self.path
        self.offset_index.check_invariants(max(self.size_bytes, 1))
        self.time_index.check_invariants(max(self.next_offset, self.base_offset + 1))
        if self.time_index.entry_count:
            assert self.time_index.last_timestamp_ms <= self.max_timestamp_ms
        assert (self.rolling_timestamp_ms is None) == self.is_empty, self.path
        if self.tail:
            # Contiguous batches ending at the segment's end, as the file has them.
            assert self.tail[-1].end == self.size_bytes, self.path
            assert self.tail[-1].next_offset == self.next_offset, self.path
            for earlier, later in zip(self.tail, self.tail[1:], strict=False):
                assert earlier.end == later.position, self.path
                assert earlier.next_offset == later.base_offset, self.path
            on_disk = list(
                walk_headers(self.handle.descriptor, self.tail[0].position, self.size_bytes)
            )
            assert on_disk == self.tail, self.path

    def __repr__(self) -> str:
        return (
            f"LogSegment({self.path.name}, offsets=[{self.base_offset}, {self.next_offset}), "
            f"bytes={self.size_bytes}, sealed={self.sealed})"
        )
