"""A hypothesis state machine: the Log against a plain in-memory model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.storage.log import Log
from client.errors import OffsetOutOfRangeError
from client.records.builder import build_batch

from .conftest import START_MS, ManualClock, crash, decode_pairs, small_config

CONFIG = small_config(
    segment_bytes=2048, retention_bytes=3000, retention_ms=60_000, segment_ms=30_000
)


class LogModel(RuleBasedStateMachine):
    """Model: a list of batches (base offset, values, max timestamp) plus the start."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="log-model-"))
        self.clock = ManualClock()
        self.log = Log.open(self.directory, CONFIG, clock_ms=self.clock)
        self.batches: list[tuple[int, list[bytes], int]] = []
        self.start = 0
        self.end = 0

    def teardown(self) -> None:
        if not self.log.closed:
            self.log.close()
        shutil.rmtree(self.directory)

    def _drop_below(self, start: int) -> None:
        assert any(base == start for base, _, _ in self.batches) or start == self.end
        self.batches = [batch for batch in self.batches if batch[0] >= start]
        self.start = start

    @rule(count=st.integers(1, 6), jitter_ms=st.integers(-500, 500), size=st.integers(0, 200))
    def append(self, count: int, jitter_ms: int, size: int) -> None:
        timestamp_ms = self.clock.now_ms + jitter_ms
        values = [b"%d-%d-" % (self.end + index, index) + b"x" * size for index in range(count)]
        result = self.log.append(build_batch(values, timestamp_ms=timestamp_ms))
        assert result.base_offset == self.end and result.last_offset == self.end + count - 1
        self.batches.append((self.end, values, timestamp_ms))
        self.end += count

    @rule(data=st.data(), max_bytes=st.integers(1, 3000))
    def read(self, data: st.DataObject, max_bytes: int) -> None:
        offset = data.draw(st.integers(self.start, self.end))
        with self.log.read(offset, max_bytes) as region:
            pairs = decode_pairs(region.read_bytes())
            next_offset = region.next_offset
        if offset == self.end:
            assert pairs == [] and next_offset == offset
            return
        expected = {
            base + index: value
            for base, values, _ in self.batches
            for index, value in enumerate(values)
        }
        assert pairs and pairs[0][0] <= offset < next_offset
        assert all(expected[got_offset] == value for got_offset, value in pairs)
        assert next_offset == pairs[-1][0] + 1

    @rule(below=st.integers(1, 5), above=st.integers(1, 5))
    def read_out_of_range(self, below: int, above: int) -> None:
        for offset in (self.start - below, self.end + above):
            try:
                self.log.read(offset, 100)
            except OffsetOutOfRangeError:
                continue
            raise AssertionError(f"read at {offset} did not raise")

    @rule(delta_ms=st.integers(-1000, 40_000))
    def offset_for_timestamp(self, delta_ms: int) -> None:
        target_ms = START_MS + delta_ms
        expected = next((base for base, _, ts in self.batches if ts >= target_ms), None)
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
        self._drop_below(self.log.start_offset)

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(self.start, self.end))
        new_end = self.log.truncate_to(offset)
        if offset < self.end:
            kept = [batch for batch in self.batches if batch[0] + len(batch[1]) <= offset]
            self.batches = kept
            self.end = kept[-1][0] + len(kept[-1][1]) if kept else self.start
        assert new_end == self.end

    @rule()
    def flush(self) -> None:
        assert self.log.flush() == self.end

    @rule()
    def reopen_clean(self) -> None:
        self.log.close()
        self.log = Log.open(self.directory, CONFIG, clock_ms=self.clock)

    @rule(flush_first=st.booleans())
    def reopen_after_crash(self, flush_first: bool) -> None:
        if flush_first:
            self.log.flush()
        crash(self.log)
        self.log = Log.open(self.directory, CONFIG, clock_ms=self.clock)

    @invariant()
    def matches_model(self) -> None:
        self.log.check_invariants()
        assert (self.log.start_offset, self.log.end_offset) == (self.start, self.end)

    @precondition(lambda self: self.end > self.start)
    @invariant()
    def first_and_last_batches_read_back(self) -> None:
        for base, values, _ in (self.batches[0], self.batches[-1]):
            with self.log.read(base, 1) as region:
                assert [value for _, value in decode_pairs(region.read_bytes())] == values


LogModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLogModel = LogModel.TestCase
TestLogModel.__doc__ = "Proves the log behaves like a list of batches under every operation."
