"""A partition whose files are damaged fails to open alone: the broker starts,
the other partitions serve, requests for the damaged one get a typed error."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.storage.config import LogConfig
from broker.topics import TopicManager
from client.errors import LogCorruptError
from client.records.builder import BatchBuilder, build_batch


def clock() -> int:
    return 1_700_000_000_000


def _manager(data_dir: Path) -> TopicManager:
    defaults = LogConfig.from_mapping({"segment_bytes": 2048, "index_interval_bytes": 256})
    return TopicManager(data_dir, defaults, clock, partitions_max=8)


async def _filled(data_dir: Path) -> None:
    """Two topics of two partitions, each partition several segments long, written
    by an idempotent producer (so opening replays producer state), closed cleanly."""
    topics = _manager(data_dir)
    await topics.load()
    await topics.create("good", 2, {})
    await topics.create("bad", 2, {})
    for partition in topics.all_partitions():
        for number in range(40):
            builder = BatchBuilder(producer_id=7, producer_epoch=0, base_sequence=number * 3)
            for _ in range(3):
                builder.append(b"value-%d" % number, timestamp_ms=clock())
            batch = builder.build()
            await partition.append(memoryview(batch))
    await topics.close()


def _damage_header(data_dir: Path, offset_in_batch: int, value: bytes) -> Path:
    """Overwrite header bytes of the second batch of bad-0's first (sealed) segment."""
    segment = data_dir / "bad-0" / f"{0:020d}.log"
    data = bytearray(segment.read_bytes())
    batch_bytes = int.from_bytes(data[8:12], "big") + 12
    position = batch_bytes + offset_in_batch
    data[position : position + len(value)] = value
    segment.write_bytes(data)
    return segment


@pytest.mark.parametrize(
    ("field_offset", "value"),
    [
        (8, b"\xff\xff\xff\xf0"),  # batch length negative
        (16, b"\x07"),  # magic
        (0, b"\x00\x00\x00\x00\x00\x00\x00\x63"),  # base offset
    ],
    ids=["length", "magic", "base-offset"],
)
async def test_damaged_header_fails_only_its_partition(
    tmp_path: Path, field_offset: int, value: bytes
) -> None:
    """A damaged batch header in a sealed segment makes that partition fail to open
    with LogCorruptError naming it; every other partition opens and serves."""
    await _filled(tmp_path)
    _damage_header(tmp_path, field_offset, value)
    topics = _manager(tmp_path)
    await topics.load()
    try:
        assert topics.names() == ["bad", "good"]
        for index in (0, 1):
            good = topics.partition("good", index)
            with good.read(0, 1 << 20, whole_batch=True) as region:
                assert region.length > 0
        topics.partition("bad", 1).read(0, 100, whole_batch=True).release()
        damaged = topics.partition("bad", 0)
        assert damaged.failure is not None
        with pytest.raises(LogCorruptError, match="bad-0"):
            damaged.read(0, 100, whole_batch=True)
        with pytest.raises(LogCorruptError):
            await damaged.append(memoryview(build_batch([b"x"], timestamp_ms=clock())))
        assert damaged.stats().log_end_offset == 0
        assert topics.corrupt_partitions() == [("bad", 0)]
        for partition in topics.all_partitions():
            partition.check_invariants()
    finally:
        await topics.close()
