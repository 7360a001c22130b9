"""Tests for broker.storage.offset_index and broker.storage.time_index."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.storage.offset_index import OffsetIndex
from broker.storage.time_index import TimeIndex


def _offset_index(tmp_path: Path, base_offset: int = 100) -> OffsetIndex:
    index = OffsetIndex(tmp_path / "x.index", base_offset, bytearray())
    index.rewrite()
    return index


def test_offset_index_entry_format(tmp_path: Path) -> None:
    """Entries are 8 bytes: relative offset u32 BE, position u32 BE."""
    index = _offset_index(tmp_path)
    index.append(105, 4096)
    index.write_pending()
    assert (tmp_path / "x.index").read_bytes() == bytes.fromhex("0000000500001000")
    index.check_invariants(log_bytes=5000)


def test_offset_index_lookup_floor(tmp_path: Path) -> None:
    """lookup returns the last entry at or before the offset, else (base, 0)."""
    index = _offset_index(tmp_path)
    for number in range(1, 50):
        index.append(100 + number * 10, number * 1000)
    index.write_pending()
    assert index.lookup(100) == (100, 0)
    assert index.lookup(109) == (100, 0)
    assert index.lookup(110) == (110, 1000)
    assert index.lookup(255) == (250, 15000)
    assert index.lookup(10**9) == (590, 49000)
    assert index.lookup_by_position(15999) == (250, 15000)
    assert index.lookup_by_position(999) == (100, 0)


def test_offset_index_truncation_and_reload(tmp_path: Path) -> None:
    """Truncation drops entries on disk too, and a reload sees the same entries."""
    index = _offset_index(tmp_path)
    for number in range(1, 11):
        index.append(100 + number, number * 100)
    index.write_pending()
    index.truncate_from_offset(106)
    assert index.entry_count == 5
    index.truncate_from_position(300)
    assert index.entry_count == 2
    index.check_invariants(log_bytes=1000)
    index.close()
    reloaded = OffsetIndex.load(tmp_path / "x.index", 100)
    assert reloaded is not None and reloaded.entries == index.entries


@pytest.mark.parametrize(
    "content",
    [b"\x00" * 7, bytes.fromhex("00000002 00000010 00000001 00000020"), b"\x00" * 16],
)
def test_offset_index_rejects_malformed_files(tmp_path: Path, content: bytes) -> None:
    """A partial entry or non-increasing entries make load return None (rebuild)."""
    (tmp_path / "x.index").write_bytes(content)
    assert OffsetIndex.load(tmp_path / "x.index", 0) is None


def test_offset_index_missing_file_loads_as_none(tmp_path: Path) -> None:
    """A missing index file loads as None."""
    assert OffsetIndex.load(tmp_path / "missing.index", 0) is None


def test_time_index_entry_format_and_lookup(tmp_path: Path) -> None:
    """Entries are 12 bytes (i64 timestamp, u32 relative offset); only growth is kept."""
    index = TimeIndex(tmp_path / "x.timeindex", 100, bytearray())
    index.rewrite()
    assert index.maybe_append(1000, 100)
    assert not index.maybe_append(900, 105)  # timestamps only grow
    assert index.maybe_append(2000, 110)
    index.write_pending()
    data = (tmp_path / "x.timeindex").read_bytes()
    assert data[:12] == (1000).to_bytes(8, "big") + (0).to_bytes(4, "big")
    assert index.lookup_before(1000) is None
    assert index.lookup_before(1001) == 100
    assert index.lookup_before(5000) == 110
    assert index.last_timestamp_ms == 2000 and index.last_offset == 110
    index.check_invariants(end_offset=111)


def test_time_index_truncation_and_reload(tmp_path: Path) -> None:
    """Truncating by offset keeps earlier entries; a reload is identical."""
    index = TimeIndex(tmp_path / "x.timeindex", 0, bytearray())
    index.rewrite()
    for number in range(10):
        index.maybe_append(1000 + number, number * 5)
    index.write_pending()
    index.truncate_from_offset(20)
    assert index.entry_count == 4
    index.close()
    reloaded = TimeIndex.load(tmp_path / "x.timeindex", 0)
    assert reloaded is not None and reloaded.entries == index.entries


def test_time_index_rejects_decreasing_timestamps(tmp_path: Path) -> None:
    """A time index whose timestamps go down loads as None."""
    path = tmp_path / "x.timeindex"
    path.write_bytes(
        (2000).to_bytes(8, "big") + bytes(4) + (1000).to_bytes(8, "big") + (1).to_bytes(4, "big")
    )
    assert TimeIndex.load(path, 0) is None
