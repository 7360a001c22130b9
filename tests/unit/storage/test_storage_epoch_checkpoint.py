"""Tests for broker.storage.epoch_checkpoint: the leader-epoch checkpoint file, and the
cache a partition opens with (read, clipped to the log, or rebuilt from headers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.replication.epochs import EpochEntry, LeaderEpochCache
from broker.storage.epoch_checkpoint import (
    EPOCH_CHECKPOINT_FILE,
    LoadedEpochs,
    decode_entries,
    encode_entries,
    load_epochs,
    read_epoch_checkpoint,
    rebuild_entries,
    write_epoch_checkpoint,
)
from broker.storage.log import Log

from .conftest import ManualClock, make_batch, small_config


def load(log: Log) -> LoadedEpochs:
    return load_epochs(
        log.directory,
        log_start_offset=log.start_offset,
        log_end_offset=log.end_offset,
        log_size_bytes=log.size_bytes,
        header_fields=log.tail_header_fields,
    )


def fill(log: Log) -> None:
    """Epoch 0 at 0-3, epoch 2 at 4-9, epoch 5 at 10-11 (across several segments)."""
    log.append(make_batch(0, 4), leader_epoch=0)
    for value in range(4, 10, 2):
        log.append(make_batch(value, 2), leader_epoch=2)
    log.roll()
    log.append(make_batch(10, 2), leader_epoch=5)


EXPECTED = [EpochEntry(0, 0), EpochEntry(2, 4), EpochEntry(5, 10)]


def test_encoding_is_kafkas_text_format() -> None:
    """Proves the file holds version, count, then one 'epoch start' line per entry,
    and decodes back."""
    data = encode_entries(EXPECTED)
    assert data == b"0\n3\n0 0\n2 4\n5 10\n"
    assert decode_entries(data) == EXPECTED
    assert decode_entries(encode_entries([])) == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"1\n1\n0 0\n",  # unknown version
        b"0\n2\n0 0\n",  # count says 2, one line
        b"0\n1\n0 0",  # no final newline (torn)
        b"0\n1\nzero 0\n",
        b"0\n2\n3 0\n2 5\n",  # epochs go back
        b"0\n2\n1 5\n2 5\n",  # start offsets do not increase
        b"0\n1\n-1 0\n",
        b"\xff\xfe",
    ],
)
def test_malformed_files_decode_to_nothing(data: bytes) -> None:
    """Proves every malformed checkpoint is recognised (None), never half-used."""
    assert decode_entries(data) is None


def test_write_then_read(tmp_path: Path) -> None:
    """Proves a written checkpoint reads back, with no temp file left behind."""
    write_epoch_checkpoint(tmp_path, EXPECTED)
    assert read_epoch_checkpoint(tmp_path) == EXPECTED
    assert sorted(path.name for path in tmp_path.iterdir()) == [EPOCH_CHECKPOINT_FILE]


def test_missing_file_is_rebuilt_from_batch_headers(log: Log) -> None:
    """Proves a log without a checkpoint gets its entries from the batch headers,
    one per epoch change."""
    fill(log)
    loaded = load(log)
    assert loaded.source == "rebuilt" and loaded.cache.entries() == EXPECTED
    loaded.cache.check_invariants()


def test_corrupt_file_is_rebuilt_from_batch_headers(log: Log) -> None:
    """Proves an unreadable checkpoint is replaced by what the headers say."""
    fill(log)
    (log.directory / EPOCH_CHECKPOINT_FILE).write_bytes(b"0\n3\n0 0\n2 4\n5")
    loaded = load(log)
    assert loaded.source == "rebuilt" and loaded.cache.entries() == EXPECTED


def test_good_file_is_trusted_as_is(log: Log) -> None:
    """Proves a checkpoint that agrees with the log's last batch is used as stored,
    without a walk over every header (an entry a walk would not give survives)."""
    fill(log)
    stored = [EpochEntry(0, 0), EpochEntry(1, 2), EpochEntry(2, 4), EpochEntry(5, 10)]
    write_epoch_checkpoint(log.directory, stored)
    loaded = load(log)
    assert loaded.source == "read" and loaded.cache.entries() == stored


def test_entries_past_the_log_end_are_clipped(log: Log) -> None:
    """Proves entries starting at or past the log end (the log lost an unflushed
    tail) are dropped, and the caller is told to write the file back."""
    fill(log)
    write_epoch_checkpoint(log.directory, [*EXPECTED, EpochEntry(7, 12), EpochEntry(8, 20)])
    loaded = load(log)
    assert loaded.source == "clipped" and loaded.cache.entries() == EXPECTED


def test_file_missing_the_last_epoch_is_rebuilt(log: Log) -> None:
    """Proves a checkpoint that does not give the last batch its epoch (the file lost
    a write the log kept) is not trusted: the entries are rebuilt."""
    fill(log)
    write_epoch_checkpoint(log.directory, EXPECTED[:2])
    loaded = load(log)
    assert loaded.source == "rebuilt" and loaded.cache.entries() == EXPECTED


def test_empty_log_keeps_an_entry_moved_to_its_start(log_dir: Path, clock: ManualClock) -> None:
    """Proves an emptied log (retention took every batch) keeps the entry of its
    latest epoch, moved up to the log start; a fresh empty log has none."""
    log = Log.open(log_dir, small_config(), clock_ms=clock, initial_offset=12)
    try:
        assert load(log).cache.entries() == []
        write_epoch_checkpoint(log.directory, EXPECTED)
        loaded = load(log)
        assert loaded.cache.entries() == [EpochEntry(5, 12)] and loaded.source == "clipped"
    finally:
        log.close()


def test_rebuild_skips_lower_epochs() -> None:
    """Proves a header walk ignores a batch whose epoch is lower than an earlier
    one's, and never yields an entry for an unstamped (-1) batch."""

    def fields(base_offset: int, epoch: int) -> tuple[int, ...]:
        return (base_offset, 0, epoch)

    cache = rebuild_entries([fields(0, -1), fields(1, 3), fields(2, 1), fields(3, 4)])
    assert cache.entries() == [EpochEntry(3, 1), EpochEntry(4, 3)]
    assert isinstance(cache, LeaderEpochCache)
