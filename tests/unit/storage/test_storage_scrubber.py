"""The scrubber's storage side: re-verifying sealed segments step by step, and the
corrupt ranges it finds being refused by reads (records before them still served)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.storage.log import Log
from broker.storage.scrubber import CorruptRange
from client.errors import CorruptBatchError

from .conftest import ManualClock, decode_pairs, make_batch, small_config


def _filled(log_dir: Path, clock: ManualClock) -> Log:
    """40 batches of 2 records in four sealed segments, closed and reopened
    cleanly (so sealed segments are trusted, not re-read)."""
    log = Log.open(log_dir, small_config(), clock_ms=clock)
    for number in range(40):
        log.append(make_batch(number * 2, 2))
        if number % 10 == 9:
            log.roll()
    log.close()
    return Log.open(log_dir, small_config(), clock_ms=clock)


def _scrub_pass(log: Log, step_bytes: int) -> list[CorruptRange]:
    """Run scrub steps until one full pass over the sealed segments is done."""
    target = log.scrubbed_bytes + sum(size for _, size in log.sealed_segment_sizes())
    found: list[CorruptRange] = []
    for _ in range(10_000):  # far more steps than a pass needs
        ticket = log.begin_scrub_step(step_bytes)
        assert ticket is not None
        bad = log.finish_scrub_step(ticket, ticket.run())
        if bad is not None:
            found.append(bad)
        if log.scrubbed_bytes >= target:
            return found
    raise AssertionError("the scrub did not finish a pass")


@pytest.mark.parametrize("step_bytes", [1, 300, 1 << 20])
def test_intact_log_scrubs_clean(log_dir: Path, clock: ManualClock, step_bytes: int) -> None:
    """A pass over intact sealed segments finds nothing and refuses no read, at any
    step size (a step always verifies at least one whole batch)."""
    log = _filled(log_dir, clock)
    try:
        assert len(log.segment_base_offsets) >= 3
        assert _scrub_pass(log, step_bytes) == []
        assert not log.corrupt
        log.check_invariants()
    finally:
        log.close()


def test_flipped_byte_in_a_sealed_segment_is_found_and_fenced(
    log_dir: Path, clock: ManualClock
) -> None:
    """A byte flipped inside a sealed segment's batch (after a clean start, which
    trusts the segment) is found by the scrubber; reads then serve the records
    before it, refuse the batch with CorruptBatchError naming where to seek, and
    serve what follows."""
    log = _filled(log_dir, clock)
    log.close()
    batch_bytes = len(make_batch(0, 2))
    segment = log_dir / f"{0:020d}.log"
    data = bytearray(segment.read_bytes())
    data[batch_bytes * 5 + 70] ^= 0x10  # the sixth batch: offsets 10 and 11
    segment.write_bytes(data)
    log = Log.open(log_dir, small_config(), clock_ms=clock)
    try:
        with log.read(0, 1 << 20) as region:  # served before the scrub: not yet known
            assert region.next_offset > 12
        found = _scrub_pass(log, 512)
        assert [(bad.start_offset, bad.end_offset) for bad in found] == [(10, 12)]
        assert "position" in found[0].reason
        with log.read(0, 1 << 20) as region:
            assert region.next_offset == 10
            assert [offset for offset, _ in decode_pairs(region.read_bytes())] == list(range(10))
        with pytest.raises(CorruptBatchError, match="seek to 12"):
            log.read(10, 1 << 20)
        with pytest.raises(CorruptBatchError):
            log.read(11, 1 << 20)
        with log.read(12, 1 << 20) as region:
            assert region.base_offset == 12
        assert _scrub_pass(log, 512) == []  # already known: not reported twice
        assert len(log.corrupt) == 1
        log.corrupt.check_invariants()
    finally:
        log.close()


def test_truncation_forgets_corrupt_ranges_it_removes(log_dir: Path, clock: ManualClock) -> None:
    """A corrupt range at or past a truncation point is forgotten with the data."""
    log = _filled(log_dir, clock)
    try:
        log.corrupt.add(CorruptRange(10, 12, "test"))
        log.truncate_to(8)
        assert not log.corrupt
        log.check_invariants()
        log.read(0, 1 << 20).release()
    finally:
        log.close()
