"""Re-verifying sealed segments in the background, and the ranges found corrupt.

A sealed segment is trusted after a clean start (only its last index interval is
read), so a byte that flips on disk later would be served as is, and a consumer
would stop for ever at that batch.  The scrubber walks every sealed segment of a
log, a step of about ``step_bytes`` at a time, checking each batch's header,
CRC-32C and offset like recovery does (:func:`verify_step`).  A bad batch is
reported as a :class:`CorruptRange` of offsets; the log then refuses to serve
that range (:class:`CorruptRanges`): a fetch gets the records before it, and a
fetch at it gets CorruptBatchError naming the offsets to skip.

Split like the rest of storage: :func:`verify_step` is a plain function over a
file descriptor (run in a worker thread, on a handle reference the caller holds);
:class:`LogScrub` (the scrub's position in a log, and the log's
:class:`CorruptRanges`) is plain state owned by the log on the event-loop thread.  The pace (bytes per second) is the caller's
(broker/scrubbing.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any, NamedTuple

from broker.storage.file_handle import FileHandle, read_exactly
from broker.storage.segment import LogSegment
from broker.storage.segments import LogSegments
from client.errors import CorruptBatchError, RecordBatchError
from client.records.header import HEADER_BYTES, BatchHeader, batch_size_at


class CorruptRange(NamedTuple):
    """Offsets ``[start_offset, end_offset)`` of a batch that failed verification."""

    start_offset: int
    end_offset: int
    reason: str


class StepResult(NamedTuple):
    """Where a verification step stopped: ``position`` (a batch start, or the end)
    with ``next_offset``; ``bad`` when it stopped at a bad batch, with ``skip_to``
    the position after it (None: the rest of the segment cannot be walked)."""

    position: int
    next_offset: int
    bytes_read: int
    bad: CorruptRange | None = None
    skip_to: int | None = None


def verify_step(
    descriptor: int,
    position: int,
    end_position: int,
    expected_offset: int,
    *,
    step_bytes: int,
    batch_bytes_max: int,
    segment_next_offset: int,
) -> StepResult:
    """Verify the whole batches in about ``step_bytes`` from ``position`` (a batch
    start at ``expected_offset``; at least one batch) up to ``end_position``.
    Raises StorageError on an I/O error."""
    assert 0 <= position < end_position and step_bytes > 0
    remaining = end_position - position
    chunk = read_exactly(descriptor, position, min(max(step_bytes, HEADER_BYTES), remaining))
    size = batch_size_at(chunk, 0)
    if size is not None and len(chunk) < size <= min(batch_bytes_max, remaining):
        chunk = read_exactly(descriptor, position, size)  # one batch bigger than a step
    view = memoryview(chunk)
    offset_in_chunk = 0
    next_offset = expected_offset
    for _ in range(len(view) // HEADER_BYTES + 1):  # a batch is at least a header
        if offset_in_chunk >= len(view):
            break
        size = batch_size_at(view, offset_in_chunk)
        if offset_in_chunk > 0 and (size is None or offset_in_chunk + size > len(view)):
            break  # the next step starts at this batch
        try:
            header = BatchHeader.parse(view, offset_in_chunk, batch_bytes_max=batch_bytes_max)
            header.verify_crc()
            if header.base_offset != next_offset:
                raise CorruptBatchError(f"base offset {header.base_offset}, expected {next_offset}")
        except RecordBatchError as error:
            return _bad_batch(
                view,
                offset_in_chunk,
                position,
                next_offset,
                error,
                end_position,
                segment_next_offset,
                batch_bytes_max,
            )
        next_offset = header.next_offset
        offset_in_chunk = header.end
    return StepResult(position + offset_in_chunk, next_offset, len(chunk))


def _bad_batch(
    view: memoryview,
    offset_in_chunk: int,
    position: int,
    expected_offset: int,
    error: RecordBatchError,
    end_position: int,
    segment_next_offset: int,
    batch_bytes_max: int,
) -> StepResult:
    """The range a bad batch covers: to its own end when its header still says
    where that is (a flipped byte in the records), else to the segment's end."""
    bad_position = position + offset_in_chunk
    end_offset, skip_to = segment_next_offset, None
    try:
        header = BatchHeader.parse(view, offset_in_chunk, batch_bytes_max=batch_bytes_max)
    except RecordBatchError:
        header = None
    if (
        header is not None
        and header.base_offset == expected_offset
        and expected_offset < header.next_offset <= segment_next_offset
        and bad_position + header.batch_bytes <= end_position
    ):
        end_offset, skip_to = header.next_offset, bad_position + header.batch_bytes
    bad = CorruptRange(expected_offset, end_offset, f"position {bad_position}: {error.message}")
    return StepResult(bad_position, expected_offset, len(view), bad, skip_to)


class ScrubTicket(NamedTuple):
    """One verification step handed to a worker thread: the arguments of
    :func:`verify_step` and the handle reference it reads through (released by
    :meth:`run`)."""

    handle: FileHandle
    segment_base_offset: int
    position: int
    end_position: int
    expected_offset: int
    segment_next_offset: int
    step_bytes: int
    batch_bytes_max: int

    def run(self) -> StepResult:
        """Verify (blocking), then release the handle reference.  Raises
        StorageError."""
        try:
            return verify_step(
                self.handle.descriptor,
                self.position,
                self.end_position,
                self.expected_offset,
                step_bytes=self.step_bytes,
                batch_bytes_max=self.batch_bytes_max,
                segment_next_offset=self.segment_next_offset,
            )
        finally:
            self.handle.release()


class CorruptRanges:
    """The offset ranges of a log that must not be served, sorted, few."""

    __slots__ = ("_ranges", "_starts")

    def __init__(self) -> None:
        # Sorted by start.  The read path tests ``_starts`` for emptiness directly
        # (a list's truth value costs no Python call).
        self._ranges: list[CorruptRange] = []
        self._starts: list[int] = []

    @property
    def starts(self) -> list[int]:
        """The start offsets, sorted (empty: nothing to fence)."""
        return self._starts

    def __len__(self) -> int:
        return len(self._ranges)

    def __iter__(self) -> Iterator[CorruptRange]:
        return iter(self._ranges)

    def add(self, corrupt: CorruptRange) -> bool:
        """Remember ``corrupt``; False if a range starting there is known."""
        index = bisect.bisect_left(self._starts, corrupt.start_offset)
        if index < len(self._starts) and self._starts[index] == corrupt.start_offset:
            return False
        self._starts.insert(index, corrupt.start_offset)
        self._ranges.insert(index, corrupt)
        return True

    def forget_below(self, offset: int) -> None:
        """Drop ranges that end at or below ``offset`` (retention removed them)."""
        keep = [r for r in self._ranges if r.end_offset > offset]
        self._ranges[:] = keep
        self._starts[:] = [r.start_offset for r in keep]  # in place: Log holds the list

    def forget_from(self, offset: int) -> None:
        """Drop ranges at or past ``offset`` (a truncation removed them)."""
        keep = [r for r in self._ranges if r.start_offset < offset]
        self._ranges[:] = keep
        self._starts[:] = [r.start_offset for r in keep]  # in place: Log holds the list

    def clip(self, offset: int, limit_offset: int, name: str) -> int:
        """The bound a read from ``offset`` must stop at (at most ``limit_offset``):
        the start of the next corrupt range.  Raises CorruptBatchError (naming the
        partition ``name``) when ``offset`` lies inside a corrupt range."""
        index = bisect.bisect_right(self._starts, offset) - 1
        if index >= 0 and offset < self._ranges[index].end_offset:
            bad = self._ranges[index]
            raise CorruptBatchError(
                f"{name}: offsets {bad.start_offset}..{bad.end_offset - 1} are corrupt on disk "
                f"({bad.reason}); seek to {bad.end_offset} to skip them"
            )
        if index + 1 < len(self._starts):
            return min(limit_offset, self._starts[index + 1])
        return limit_offset

    def check_invariants(self) -> None:
        assert self._starts == [r.start_offset for r in self._ranges]
        for earlier, later in zip(self._ranges, self._ranges[1:], strict=False):
            assert earlier.end_offset <= later.start_offset, (earlier, later)
        for corrupt in self._ranges:
            assert corrupt.start_offset < corrupt.end_offset, corrupt


class LogScrub:
    """One log's scrub: where it goes on, what it verified, what it found corrupt.

    The cursor is (segment base offset, batch position, offset at it); it moves
    through the sealed segments in order and wraps to the first after the last.
    Event-loop thread; the owning Log checks that it is open first.
    """

    __slots__ = ("_at", "_batch_bytes_max", "_logger", "_segments", "corrupt", "scrubbed_bytes")

    def __init__(self, segments: LogSegments, batch_bytes_max: int, logger: Any) -> None:
        self._segments = segments
        self._batch_bytes_max = batch_bytes_max
        self._logger = logger
        self._at: tuple[int, int, int] | None = None
        self.corrupt = CorruptRanges()
        self.scrubbed_bytes = 0  # verified since open

    def begin_step(self, step_bytes: int) -> ScrubTicket | None:
        """The next step, or None when there is no sealed segment.  Run the ticket
        in a worker thread, then :meth:`finish_step`."""
        sealed = [segment for segment in self._segments if segment.sealed and segment.size_bytes]
        if not sealed:
            self._at = None
            return None
        at = self._at
        segment = next((s for s in sealed if at is not None and s.base_offset == at[0]), None)
        if at is None or segment is None or at[1] >= segment.size_bytes:
            # Start (again) with the first sealed segment at or after the cursor's.
            after = 0 if at is None else at[0]
            segment = next((s for s in sealed if s.base_offset >= after), sealed[0])
            at = (segment.base_offset, 0, segment.base_offset)
        self._at = at
        return ScrubTicket(
            segment.handle.acquire(),
            segment.base_offset,
            at[1],
            segment.size_bytes,
            at[2],
            segment.next_offset,
            step_bytes,
            self._batch_bytes_max,
        )

    def finish_step(self, ticket: ScrubTicket, result: StepResult) -> CorruptRange | None:
        """Move on past ``result`` and remember a corrupt range it found (logged
        and returned when new).  A segment replaced or truncated meanwhile is
        scrubbed again from its start."""
        segment = self._segments.floor(ticket.segment_base_offset)
        if (
            self._at != (ticket.segment_base_offset, ticket.position, ticket.expected_offset)
            or segment is None
            or segment.handle is not ticket.handle
            or not segment.sealed
        ):
            self._at = None
            return None
        self.scrubbed_bytes += result.bytes_read
        bad = result.bad
        if bad is None:
            self._at = _position_after(segment, result.position, result.next_offset)
            return None
        known = not self.corrupt.add(bad)
        if not known:
            self._logger.error(
                "corrupt batch found by the scrubber, not served from now on",
                file=segment.path.name,
                start_offset=bad.start_offset,
                end_offset=bad.end_offset,
                reason=bad.reason,
            )
        skip_to = segment.size_bytes if result.skip_to is None else result.skip_to
        self._at = _position_after(segment, skip_to, bad.end_offset)
        return None if known else bad

    def truncated(self, end_offset: int) -> None:
        """The log was cut at ``end_offset``: forget what lay past it, start over."""
        self._at = None
        self.corrupt.forget_from(end_offset)


def _position_after(segment: LogSegment, position: int, offset: int) -> tuple[int, int, int]:
    """The cursor at ``position`` of ``segment``, or at the start of the next
    segment once past its end (the first one again after the last sealed)."""
    if position < segment.size_bytes:
        return (segment.base_offset, position, offset)
    return (segment.next_offset, 0, segment.next_offset)
