"""The same public SDK API on asyncio (FastAPI/aiohttp programs): admin, produce, consume, seek.

pytest-trio runs ``async def`` tests on trio, so these are plain functions that
start a real asyncio loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import sniffio

from client import (
    Admin,
    BrokerUnavailableError,
    Consumer,
    NewTopic,
    Producer,
    TopicAlreadyExistsError,
    TopicPartition,
)


async def scenario(address: str) -> None:
    assert sniffio.current_async_library() == "asyncio"
    async with Admin(address) as admin:
        await admin.create_topics([NewTopic("events", 2)])
        with pytest.raises(TopicAlreadyExistsError):
            await admin.create_topic("events", 2)
    async with Producer(address, linger_ms=1, compression="zstd") as producer:
        first = await producer.send("events", "hello", key="user-1", headers=[("h", "v")])
        handles = [await producer.enqueue("events", f"e{i}", key="user-1") for i in range(99)]
        await producer.flush()
        offsets = [handle.result().offset for handle in handles]
    assert offsets == list(range(first.offset + 1, first.offset + 100))
    tp = TopicPartition("events", first.partition)
    async with Consumer(address, auto_offset_reset="earliest") as consumer:
        await consumer.assign([tp])
        records = []
        async for record in consumer:
            records.append(record)
            if len(records) == 100:
                break
        assert records[0].value == b"hello" and records[0].key == b"user-1"
        assert records[0].headers == (("h", b"v"),)
        assert [r.value for r in records[1:]] == [f"e{i}".encode() for i in range(99)]
        consumer.seek(tp, first.offset + 50)
        batch = await asyncio.wait_for(consumer.getmany(timeout_ms=5000), 10)
        assert batch[tp][0].value == b"e49"
        await consumer.seek_to_beginning()
        assert await consumer.position(tp) == 0


def test_public_api_on_asyncio(broker: Any) -> None:
    """Proves admin create, produce (send/enqueue/flush), consume (async for, getmany) and seek on asyncio."""
    asyncio.run(asyncio.wait_for(scenario(broker.address), 30))


def test_unreachable_broker_on_asyncio() -> None:
    """Proves asyncio programs get BrokerUnavailableError too, not OSError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def attempt() -> None:
        assert sniffio.current_async_library() == "asyncio"
        async with Producer(f"127.0.0.1:{port}", reconnect_attempts_max=2) as producer:
            with pytest.raises(BrokerUnavailableError):
                await producer.send("t", b"x")

    asyncio.run(asyncio.wait_for(attempt(), 20))


async def live_with_seeks(address: str) -> None:
    """A consumer following a partition while it is written, one record at a time
    (its fetches pipelined: a continuation always waits at the broker), seeking
    back and pausing half-way; every record must come exactly once, in order."""
    async with Admin(address) as admin:
        await admin.create_topic("live", 1)
    tp = TopicPartition("live", 0)
    total = 300

    async def produce() -> None:
        async with Producer(address, linger_ms=0) as producer:
            for i in range(total):
                await producer.send("live", f"v{i}", partition=0)
                if i % 10 == 0:
                    await asyncio.sleep(0.001)

    async def take(consumer: Consumer, count: int) -> list[bytes | None]:
        values: list[bytes | None] = []
        for _ in range(10 * total):  # bounded: each round waits at most 1 s
            if len(values) >= count:
                break
            batches = await consumer.getmany(timeout_ms=1000, max_records=count - len(values))
            values.extend(record.value for record in batches.get(tp, []))
        return values

    async with Consumer(address, fetch_max_wait_ms=500) as consumer:
        await consumer.assign([tp])
        consumer.seek(tp, 0)
        producing = asyncio.create_task(produce())
        first = await take(consumer, 100)
        consumer.seek(tp, 50)  # back, while continuations are on the wire
        second = await take(consumer, 100)
        consumer.pause(tp)
        await asyncio.sleep(0.05)
        consumer.resume(tp)
        rest = await take(consumer, total - 150)
        await producing
    expected = [f"v{i}".encode() for i in range(total)]
    assert first == expected[:100]
    assert second + rest == expected[50:]


def test_live_consumer_with_seek_and_pause_on_asyncio(
    broker: Any, streamed_answers: list[int]
) -> None:
    """Proves pipelined fetch streams deliver a live partition exactly once and in
    order across a seek and a pause on asyncio, part of it through answers
    flagged MORE (a stream's answers before its last)."""
    asyncio.run(asyncio.wait_for(live_with_seeks(broker.address), 60))
    assert streamed_answers and all(size > 0 for size in streamed_answers)
