"""The async SDK on asyncio when things go wrong, and its latency path.

On asyncio the producer writes a batch straight from ``enqueue`` or from the
callback of the previous batch's acknowledgement, and the consumer sends each
fetch from the callback of the previous response; these prove that path keeps
the guarantees the trio tests prove for the sender task (test_sdk_failures.py):
order and exactly-once through a broker crash, and a consumer that carries on.

pytest-trio runs ``async def`` tests on trio, so these are plain functions that
start a real asyncio loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sniffio

from client import Admin, Consumer, NewTopic, Producer, RecordHandle, TopicPartition


async def _consume(address: str, tp: TopicPartition, count: int) -> list[bytes]:
    async with Consumer(address, auto_offset_reset="earliest") as consumer:
        await consumer.assign([tp])
        values: list[bytes] = []
        while len(values) < count:
            batch = await consumer.getmany(timeout_ms=5_000)
            assert batch, f"only {len(values)} of {count} records came back"
            values.extend(record.value for record in batch[tp])
        return values


async def _produce_through_a_crash(broker: Any, topic: str, inflight: int) -> None:
    assert sniffio.current_async_library() == "asyncio"
    tp = TopicPartition(topic, 0)
    async with Admin(broker.address) as admin:
        await admin.create_topics([NewTopic(topic, 1)])
    count = 5_000
    handles: list[RecordHandle] = []
    async with Producer(
        broker.address,
        linger_ms=0,
        batch_bytes_max=2_000,
        retries_max=30,
        retry_backoff_ms=50,
        inflight_batches_per_partition_max=inflight,
    ) as producer:
        assert producer.idempotent

        async def produce() -> None:
            for index in range(count):
                handles.append(await producer.enqueue(topic, str(index).encode(), partition=0))
                if index % 50 == 0:
                    await asyncio.sleep(0.001)  # records trickle in, as in a service

        producing = asyncio.create_task(produce())
        while len(handles) < count // 4:
            await asyncio.sleep(0.001)
        await asyncio.to_thread(broker.kill)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(broker.start)
        await producing
        await producer.flush()
        acknowledged = [await handle for handle in handles]
    offsets = [metadata.offset for metadata in acknowledged]
    assert offsets == sorted(offsets) and len(set(offsets)) == count
    values = [int(value) for value in await _consume(broker.address, tp, offsets[-1] + 1)]
    # Every record once, in order, each at the offset its handle reported.
    assert values == list(range(count))
    for metadata, index in zip(acknowledged, range(count), strict=True):
        assert values[metadata.offset] == index


@pytest.mark.parametrize("inflight", [1, 5])
def test_producer_keeps_order_and_exactly_once_through_a_crash_on_asyncio(
    broker: Any, inflight: int
) -> None:
    """Proves batches written from enqueue and from ack callbacks (asyncio) keep
    per-partition order and exactly-once delivery through a broker crash, with one
    and with five batches in flight."""
    asyncio.run(
        asyncio.wait_for(_produce_through_a_crash(broker, f"crash-{inflight}", inflight), 60)
    )


async def _live_consume(broker: Any) -> None:
    tp = TopicPartition("live", 0)
    async with Admin(broker.address) as admin:
        await admin.create_topics([NewTopic("live", 1)])
    async with (
        Consumer(broker.address, fetch_max_wait_ms=200, auto_offset_reset="earliest") as consumer,
        Producer(broker.address, linger_ms=0) as producer,
    ):
        await consumer.assign([tp])
        assert await consumer.getmany(timeout_ms=50) == {}  # nothing yet: the timeout
        got: list[bytes] = []
        for round_ in range(3):
            for index in range(100):
                await producer.send("live", f"{round_}-{index}".encode(), partition=0)
                while batch := await consumer.getmany(timeout_ms=0):
                    got.extend(record.value for record in batch[tp])
            if round_ == 0:
                # The fetch chain breaks on the crash; the fetcher task takes over.
                await asyncio.to_thread(broker.kill)
                await asyncio.to_thread(broker.start)
        while len(got) < 300:
            batch = await consumer.getmany(timeout_ms=5_000)
            assert batch, f"only {len(got)} of 300 records came back"
            got.extend(record.value for record in batch[tp])
        assert got == [f"{r}-{i}".encode() for r in range(3) for i in range(100)]
        assert await consumer.getmany(timeout_ms=20) == {}


def test_consumer_follows_a_live_partition_through_a_crash_on_asyncio(broker: Any) -> None:
    """Proves the asyncio consumer, fetching from its response callbacks, hands out
    records produced while it polls, in order and once, honours getmany timeouts,
    and carries on after a broker crash."""
    asyncio.run(asyncio.wait_for(_live_consume(broker), 60))


async def _send_restart_send(broker: Any) -> None:
    tp = TopicPartition("again", 0)
    async with Admin(broker.address) as admin:
        await admin.create_topics([NewTopic("again", 1)])
    async with Producer(
        broker.address,
        linger_ms=0,
        batch_bytes_max=2_000,
        retries_max=30,
        retry_backoff_ms=50,
        inflight_batches_per_partition_max=5,
    ) as producer:
        assert producer.idempotent
        first = await producer.send_many("again", [f"a{i}".encode() for i in range(300)])
        await asyncio.to_thread(broker.kill)
        await asyncio.to_thread(broker.start)
        second = await producer.send_many("again", [f"b{i}".encode() for i in range(300)])
    assert [metadata.offset for metadata in first + second] == list(range(600))
    expected = [f"a{i}".encode() for i in range(300)] + [f"b{i}".encode() for i in range(300)]
    assert await _consume(broker.address, tp, 600) == expected


def test_idempotent_producer_sends_again_after_a_crash_exactly_once_on_asyncio(
    broker: Any,
) -> None:
    """Proves one idempotent producer on asyncio that sends, sees the broker crash and
    come back, then sends again, has every record written once, in order."""
    asyncio.run(asyncio.wait_for(_send_restart_send(broker), 60))
