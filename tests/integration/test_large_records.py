"""Large records end to end: a 20 MB record travels through the SDK and through
`publish --whole` / `tail` when the topic's batch_bytes_max and the broker's
frame_bytes_max allow it, and the limits refuse each other with clear errors."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_cli_commands import Cli, assert_one_line_error

from broker.testing import BrokerProcess
from client import Consumer, Producer, TopicPartition
from client.admin import Admin
from client.errors import InvalidConfigError

MIB = 1024 * 1024
RECORD_BYTES = 20 * 1000 * 1000
TOPIC_BATCH_BYTES_MAX = 32 * MIB


@pytest.fixture
def big_broker(broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    return broker_factory(config={"limits": {"frame_bytes_max": 96 * MIB}})


def _blob() -> bytes:
    return hashlib.sha256(b"seed").digest() * (RECORD_BYTES // 32) + b"end"


async def test_a_20_mb_record_travels_through_the_sdk(big_broker: BrokerProcess) -> None:
    """A 20 MB record produced with batch_bytes_max=32 MiB to a topic that allows it
    is acknowledged and consumed back byte for byte."""
    blob = _blob()
    async with Admin(big_broker.address) as admin:
        await admin.create_topic("big", configs={"batch_bytes_max": str(TOPIC_BATCH_BYTES_MAX)})
    async with Producer(big_broker.address, batch_bytes_max=TOPIC_BATCH_BYTES_MAX) as producer:
        metadata = await producer.send("big", blob)
    assert metadata.offset == 0
    async with Consumer(big_broker.address, auto_offset_reset="earliest") as consumer:
        await consumer.assign(["big"])
        records = (await consumer.getmany(timeout_ms=20_000))[TopicPartition("big", 0)]
    assert len(records) == 1 and records[0].value == blob


async def test_topic_batch_bytes_max_above_the_frame_limit_is_refused(broker: Any) -> None:
    """A topic whose batch_bytes_max cannot fit in the broker's frame_bytes_max is
    refused at creation and at an alter with INVALID_CONFIG naming both limits."""
    async with Admin(broker.address) as admin:
        with pytest.raises(InvalidConfigError, match="frame_bytes_max") as raised:
            await admin.create_topic("huge", configs={"batch_bytes_max": str(100 * MIB)})
        assert "batch_bytes_max" in str(raised.value)
        await admin.create_topic("small")
        with pytest.raises(InvalidConfigError, match="frame_bytes_max"):
            await admin.alter_topic_configs("small", {"batch.bytes.max": str(100 * MIB)})


def test_producer_batch_bytes_max_out_of_range_is_a_value_error() -> None:
    """Producer(batch_bytes_max=...) out of range is a ValueError with a message, not an
    AssertionError; 32 MiB is accepted."""
    with pytest.raises(ValueError, match="batch_bytes_max"):
        Producer(batch_bytes_max=0)
    with pytest.raises(ValueError, match="batch_bytes_max"):
        Producer(batch_bytes_max=1 << 40)
    Producer(batch_bytes_max=TOPIC_BATCH_BYTES_MAX)


def test_a_20_mb_record_travels_through_publish_and_tail(
    big_broker: BrokerProcess, tmp_path: Path
) -> None:
    """`publish --whole --batch-bytes-max` sends a 20 MB file as one record and `tail`
    prints it back whole."""
    cli = Cli(big_broker.address)
    cli.ok("topics", "create", "blobs", "-c", f"batch_bytes_max={TOPIC_BATCH_BYTES_MAX}")
    blob = _blob()
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    published = cli.run(
        "publish", "blobs", "--whole", str(path), "--batch-bytes-max", str(TOPIC_BATCH_BYTES_MAX)
    )
    assert published.returncode == 0, published.stderr
    tailed = cli.run("tail", "blobs", "-o", "beginning", "-e", "-f", "%s")
    assert tailed.returncode == 0, tailed.stderr
    assert tailed.stdout == blob


def test_publish_of_a_record_over_the_batch_limit_says_so(
    big_broker: BrokerProcess, tmp_path: Path
) -> None:
    """Without --batch-bytes-max a 20 MB record is refused in one line naming the
    option to raise."""
    cli = Cli(big_broker.address)
    path = tmp_path / "blob.bin"
    path.write_bytes(_blob())
    result = cli.run("publish", "blobs2", "--whole", str(path))
    assert_one_line_error(result, "batch")
    assert isinstance(result, subprocess.CompletedProcess)
