"""An index entry that points off a batch start is survived: lookups fall back to a
walk from the segment start and the index is rebuilt."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from broker.storage.log import Log
from client.errors import LogCorruptError

from .conftest import ManualClock, make_batch, read_all, small_config


def _filled(log_dir: Path, clock: ManualClock) -> list[tuple[int, bytes | None]]:
    log = Log.open(log_dir, small_config(), clock_ms=clock)
    for number in range(40):
        log.append(make_batch(number * 2, 2))
        if number % 15 == 14:
            log.roll()
    expected = read_all(log)
    log.close()
    return expected


@pytest.mark.parametrize("shift", [1, -1, 7])
@pytest.mark.parametrize("entry", [0, 1])
def test_index_entry_off_by_bytes_is_rebuilt(
    log_dir: Path, clock: ManualClock, shift: int, entry: int
) -> None:
    """An offset index entry of a sealed segment moved by a few bytes is accepted at
    open; every offset stays readable (each read is the right batch) and the index
    is rewritten correctly on the first lookup that meets it."""
    expected = _filled(log_dir, clock)
    index_path = log_dir / f"{0:020d}.index"
    entries = bytearray(index_path.read_bytes())
    original = bytes(entries)
    assert len(entries) > 8 * (entry + 1)  # not the last entry (checked at open)
    relative, position = struct.unpack_from(">II", entries, 8 * entry)
    struct.pack_into(">II", entries, 8 * entry, relative, position + shift)
    index_path.write_bytes(entries)

    log = Log.open(log_dir, small_config(), clock_ms=clock)
    try:
        for offset in range(log.end_offset):
            with log.read(offset, 1) as region:
                assert region.base_offset <= offset < region.next_offset
        assert read_all(log, 300) == expected
        assert index_path.read_bytes() == original
        log.check_invariants()
    finally:
        log.close()


def test_damaged_header_inside_a_sealed_segment_is_a_typed_error(
    log_dir: Path, clock: ManualClock
) -> None:
    """A read that meets a header that is not a batch raises LogCorruptError naming
    the position, never an AssertionError; the partition's other offsets serve."""
    _filled(log_dir, clock)
    segment = log_dir / f"{0:020d}.log"
    data = bytearray(segment.read_bytes())
    batch_bytes = len(make_batch(0, 2))
    data[batch_bytes * 3 + 16] = 9  # the fourth batch's magic byte
    segment.write_bytes(data)
    log = Log.open(log_dir, small_config(), clock_ms=clock)
    try:
        with pytest.raises(LogCorruptError, match=f"position {batch_bytes * 3}"):
            log.read(7, 1 << 20).release()
        with log.read(40, 1 << 20) as region:
            assert region.base_offset == 40
    finally:
        log.close()
