"""A hypothesis state machine: the Log against a plain in-memory model, on a simulated
disk, through appends, reads, rolls, retention, truncation, flushes, clean reopens,
process crashes and power cuts."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.storage import disk
from broker.storage.log import Log
from client.errors import OffsetOutOfRangeError
from client.records.builder import build_batch

from .conftest import START_MS, ManualClock, crash, decode_pairs, power_cut, read_all, small_config
from .simulated_disk import SimulatedDisk

CONFIG = small_config(
    segment_bytes=1024, retention_bytes=3000, retention_ms=60_000, segment_ms=30_000
)


class LogModel(RuleBasedStateMachine):
    """Model: every batch of the log's history (base offset, values, max timestamp),
    including those retention removed since, plus the start, the end, and the end
    below which everything was flushed (``durable_end``: acknowledged as under
    FlushPolicy.EVERY_APPEND, or flushed explicitly)."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="log-model-"))
        self.disk = SimulatedDisk(self.directory)
        self.real_disk, disk.current = disk.current, self.disk
        self.clock = ManualClock()
        self.log = Log.open(self.directory / "t-0", CONFIG, clock_ms=self.clock)
        self.batches: list[tuple[int, list[bytes], int]] = []
        self.start = 0
        self.end = 0
        self.durable_end = 0

    def teardown(self) -> None:
        try:
            if not self.log.closed:
                self.log.close()
        finally:
            disk.current = self.real_disk
            self.disk.close()
            shutil.rmtree(self.directory)

    def _visible(self) -> list[tuple[int, list[bytes], int]]:
        return [batch for batch in self.batches if batch[0] >= self.start]

    def _reopen(self) -> None:
        self.log = Log.open(self.directory / "t-0", CONFIG, clock_ms=self.clock)

    @rule(
        count=st.integers(1, 6),
        jitter_ms=st.integers(-500, 500),
        size=st.integers(0, 200),
        durably=st.sampled_from([False, False, False, True]),
    )
    def append(self, count: int, jitter_ms: int, size: int, durably: bool) -> None:
        """Append a batch; ``durably`` acknowledges it as the every-append policy does
        (AsyncLog.append: append, then flush)."""
        timestamp_ms = self.clock.now_ms + jitter_ms
        values = [b"%d-%d-" % (self.end + index, index) + b"x" * size for index in range(count)]
        result = self.log.append(build_batch(values, timestamp_ms=timestamp_ms))
        assert result.base_offset == self.end and result.last_offset == self.end + count - 1
        self.batches.append((self.end, values, timestamp_ms))
        self.end += count
        if durably:
            assert self.log.flush() == self.end
            self.durable_end = self.end

    @rule(
        data=st.data(),
        max_bytes=st.integers(1, 3000),
        below=st.integers(1, 5),
        above=st.integers(1, 5),
    )
    def read(self, data: st.DataObject, max_bytes: int, below: int, above: int) -> None:
        """A read returns whole batches from the one holding the offset; outside
        [start, end] it raises."""
        for outside in (self.start - below, self.end + above):
            try:
                self.log.read(outside, 100)
            except OffsetOutOfRangeError:
                continue
            raise AssertionError(f"read at {outside} did not raise")
        offset = data.draw(st.integers(self.start, self.end))
        with self.log.read(offset, max_bytes) as region:
            pairs = decode_pairs(region.read_bytes())
            next_offset = region.next_offset
        if offset == self.end:
            assert pairs == [] and next_offset == offset
            return
        expected = self._expected_values()
        assert pairs and pairs[0][0] <= offset < next_offset
        assert all(expected[got_offset] == value for got_offset, value in pairs)
        assert next_offset == pairs[-1][0] + 1

    def _expected_values(self) -> dict[int, bytes]:
        return {
            base + index: value
            for base, values, _ in self._visible()
            for index, value in enumerate(values)
        }

    @rule(delta_ms=st.integers(-1000, 40_000))
    def offset_for_timestamp(self, delta_ms: int) -> None:
        target_ms = START_MS + delta_ms
        expected = next((base for base, _, ts in self._visible() if ts >= target_ms), None)
        assert self.log.offset_for_timestamp(target_ms) == expected

    @rule()
    def roll(self) -> None:
        self.log.roll()

    @rule(advance_ms=st.integers(0, 40_000))
    def advance_clock_and_retain(self, advance_ms: int) -> None:
        self.clock.advance(advance_ms)
        before = self.log.segment_base_offsets
        result = self.log.enforce_retention()
        assert result.start_offset == self.log.start_offset
        assert self.log.segment_base_offsets == before[result.segments_deleted :]
        start = self.log.start_offset
        assert any(base == start for base, _, _ in self.batches) or start == self.end
        self.start = start

    @rule(data=st.data(), then_power_cut=st.booleans())
    def truncate(self, data: st.DataObject, then_power_cut: bool) -> None:
        """Truncation cuts at a batch boundary and is durable when it returns: a power
        cut right after it keeps every batch below the cut and none above."""
        offset = data.draw(st.integers(self.start, self.end))
        new_end = self.log.truncate_to(offset)
        if offset < self.end:
            self.batches = [batch for batch in self.batches if batch[0] + len(batch[1]) <= offset]
            kept_end = self.batches[-1][0] + len(self.batches[-1][1]) if self.batches else 0
            self.end = max(self.start, kept_end)
            self.durable_end = self.end
        assert new_end == self.end
        if then_power_cut:
            power_cut(self.log, self.disk)
            self._reopen()
            self._check_power_cut_contract()

    @rule()
    def flush(self) -> None:
        assert self.log.flush() == self.end
        self.durable_end = self.end

    @rule(
        kind=st.sampled_from(["clean", "process crash", "power cut"]),
        flush_first=st.booleans(),
        torn_seed=st.none() | st.integers(0, 2**32 - 1),
    )
    def reopen(self, kind: str, flush_first: bool, torn_seed: int | None) -> None:
        """Close cleanly, crash the process (nothing written is lost: the page cache
        survives) or cut the power, then reopen."""
        if flush_first:
            self.flush()
        if kind == "clean":
            self.log.close()
            self.durable_end = self.end
        elif kind == "process crash":
            crash(self.log)
        else:
            power_cut(self.log, self.disk, torn_seed=torn_seed)
        self._reopen()
        if kind == "power cut":
            self._check_power_cut_contract()

    def _check_power_cut_contract(self) -> None:
        """Every flushed offset is still there, nothing but the written batches
        appears, and the log ends at a batch boundary in between (retention's
        removals may come back: the start only moves back)."""
        start, end = self.log.start_offset, self.log.end_offset
        boundaries = {base for base, _, _ in self.batches} | {self.end}
        assert start <= self.start and start in boundaries, (start, self.start)
        assert self.durable_end <= end <= self.end and end in boundaries, (
            self.durable_end,
            end,
            self.end,
        )
        self.batches = [batch for batch in self.batches if batch[0] < end]
        self.start, self.end, self.durable_end = start, end, end
        expected = self._expected_values()
        assert read_all(self.log) == sorted(expected.items())

    @invariant()
    def matches_model(self) -> None:
        self.log.check_invariants()
        assert (self.log.start_offset, self.log.end_offset) == (self.start, self.end)
        assert self.durable_end <= self.end

    @precondition(lambda self: self.end > self.start)
    @invariant()
    def first_and_last_batches_read_back(self) -> None:
        visible = self._visible()
        for base, values, _ in (visible[0], visible[-1]):
            with self.log.read(base, 1) as region:
                assert [value for _, value in decode_pairs(region.read_bytes())] == values


LogModel.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLogModel = LogModel.TestCase
TestLogModel.__doc__ = (
    "Proves the log behaves like a list of batches under every operation, and keeps "
    "every flushed batch and nothing unwritten across power cuts."
)
