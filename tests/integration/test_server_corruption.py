"""Corrupt data on disk against a real broker: the scrubber finds a flipped byte in a
sealed segment, the broker stops serving that batch, and a consumer gets every
record before it, then a typed error naming the partition and offsets, and goes
on after seeking past them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from client import Consumer, TopicPartition
from client.errors import CorruptBatchError, ErrorCode
from client.records.builder import build_batch

RawFactory = Callable[..., Any]
BATCHES = 12


def _corrupt_second_batch(broker: Any, raw_client: RawFactory) -> tuple[int, int]:
    """Produce 12 batches of 3 records to ``fragile`` (small segments), stop the
    broker cleanly, flip a byte inside the second batch's records, restart, and
    wait for the scrubber to report it.  Returns the bad batch's offsets."""
    client = raw_client(broker.address)
    client.create_topic("fragile", 1, {"segment_bytes": "1024"})
    for index in range(BATCHES):
        client.produce("fragile", {0: [build_batch([bytes([index]) * 100] * 3)]})
    client.close()
    broker.stop()
    first = sorted((broker.data_dir / "fragile-0").glob("*.log"))[0]
    data = bytearray(first.read_bytes())
    batch_bytes = int.from_bytes(data[8:12], "big") + 12
    data[batch_bytes + 120] ^= 0x01  # a record value byte of the second batch
    first.write_bytes(bytes(data))
    broker.start()
    found = broker.wait_for_log("corrupt batch found by the scrubber, not served from now on")
    assert found["topic"] == "fragile" and found["partition"] == 0
    return int(found["start_offset"]), int(found["end_offset"])


@pytest.fixture
def scrubbing_broker(broker_factory: Any) -> Any:
    return broker_factory(config={"limits": {"scrub_bytes_per_second": 64 * 1024 * 1024}})


def test_fetch_serves_up_to_the_corrupt_batch_then_refuses_it(
    scrubbing_broker: Any, raw_client: RawFactory
) -> None:
    """A fetch from the start gets the batch before the corrupt one and no error;
    a fetch at the corrupt batch gets CORRUPT_BATCH naming the offset to seek to;
    a fetch after it is served."""
    start, end = _corrupt_second_batch(scrubbing_broker, raw_client)
    assert (start, end) == (3, 6)
    client = raw_client(scrubbing_broker.address)
    body, data = client.fetch("fragile", {0: 0})
    part = body.topics[0].partitions[0]
    assert part.error_code == 0 and len(data[0]) > 0
    body, data = client.fetch("fragile", {0: 3})
    part = body.topics[0].partitions[0]
    assert part.error_code == ErrorCode.CORRUPT_BATCH
    assert "fragile-0" in part.error_message and "seek to 6" in part.error_message
    body, data = client.fetch("fragile", {0: 6})
    assert body.topics[0].partitions[0].error_code == 0 and data[0]


async def test_consumer_delivers_up_to_the_corrupt_batch_then_raises(
    scrubbing_broker: Any, raw_client: RawFactory
) -> None:
    """The consumer hands out every record before the corrupt batch, then raises
    CorruptBatchError naming the partition and offsets; seeking past them goes on
    with the rest."""
    start, end = await trio.to_thread.run_sync(_corrupt_second_batch, scrubbing_broker, raw_client)
    tp = TopicPartition("fragile", 0)
    with trio.fail_after(30):
        async with Consumer(scrubbing_broker.address) as consumer:
            await consumer.assign([tp])
            consumer.seek(tp, 0)
            offsets: list[int] = []
            with pytest.raises(CorruptBatchError, match="fragile-0") as raised:
                while True:  # bounded by fail_after: the error comes
                    batch = await consumer.getmany(timeout_ms=1000)
                    offsets += [record.offset for record in batch.get(tp, [])]
            assert offsets == list(range(start))
            assert f"seek to {end}" in str(raised.value)
            consumer.seek(tp, end)
            while len(offsets) < BATCHES * 3 - (end - start):  # bounded by fail_after
                batch = await consumer.getmany(timeout_ms=1000)
                offsets += [record.offset for record in batch.get(tp, [])]
            assert offsets == list(range(start)) + list(range(end, BATCHES * 3))
