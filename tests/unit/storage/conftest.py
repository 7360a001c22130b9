"""Helpers for the storage tests: a manual clock, small configs, batch makers, a
decoder that turns bytes read back from a log into (offset, value) pairs, and the two
kinds of crash: a process crash (:func:`crash`: the page cache survives) and a power
cut (:func:`power_cut`, on a :class:`SimulatedDisk`: what was not fsynced is lost)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.storage import disk
from broker.storage.config import LogConfig
from broker.storage.log import Log
from client.records.builder import build_batch
from client.records.decoder import decode_fetch

from .simulated_disk import SimulatedDisk

START_MS = 1_700_000_000_000


class ManualClock:
    """An injected clock the test moves by hand."""

    def __init__(self, now_ms: int = START_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, delta_ms: int) -> None:
        self.now_ms += delta_ms


def small_config(**changes: object) -> LogConfig:
    """Tiny segments and a dense index so a few batches exercise rolls and lookups."""
    values: dict[str, object] = {"segment_bytes": 4096, "index_interval_bytes": 256}
    values.update(changes)
    return LogConfig.from_mapping(values)


def make_batch(first_value: int, count: int, timestamp_ms: int = START_MS) -> bytearray:
    """A batch of ``count`` records with values b"v<first_value + i>"."""
    return build_batch(
        [b"v%d" % (first_value + index) for index in range(count)], timestamp_ms=timestamp_ms
    )


def decode_pairs(data: bytes, fetch_offset: int = 0) -> list[tuple[int, bytes | None]]:
    """(offset, value) of every record in whole batches ``data``."""
    fetched = decode_fetch(data, fetch_offset)
    assert fetched.partial_batch_bytes == 0
    return [(record.offset, record.value) for record in fetched.records]


def read_all(log: Log, max_bytes: int = 1 << 20) -> list[tuple[int, bytes | None]]:
    """Every record from the log start to its end, read region by region."""
    pairs: list[tuple[int, bytes | None]] = []
    offset = log.start_offset
    while offset < log.end_offset:  # each region holds a batch: the offset moves on
        with log.read(offset, max_bytes) as region:
            assert region.length > 0 and region.next_offset > offset
            pairs.extend(decode_pairs(region.read_bytes()))
            offset = region.next_offset
    return pairs


def crash(log: Log) -> None:
    """Simulate a process crash: drop the descriptors without flush or marker.  What
    was written stays (the kernel's page cache outlives the process)."""
    for segment in log._segments:
        segment.close()
    log._closed = True


def power_cut(log: Log, simulated: SimulatedDisk, *, torn_seed: int | None = None) -> None:
    """Simulate a power cut: crash the process, then lose what was not fsynced (with
    ``torn_seed``, a seeded random prefix of each file's unsynced appends survives)."""
    crash(log)
    simulated.power_cut(torn=None if torn_seed is None else random.Random(torn_seed))


@pytest.fixture
def simulated_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedDisk]:
    """A SimulatedDisk over ``tmp_path``, installed as the disk storage syncs through."""
    simulated = SimulatedDisk(tmp_path)
    monkeypatch.setattr(disk, "current", simulated)
    yield simulated
    simulated.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "topic-0"


@pytest.fixture
def log(log_dir: Path, clock: ManualClock) -> Iterator[Log]:
    opened = Log.open(log_dir, small_config(), clock_ms=clock)
    yield opened
    if not opened.closed:
        opened.close()
