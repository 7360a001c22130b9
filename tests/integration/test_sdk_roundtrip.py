"""The async SDK against a real broker: produce, consume, keys, headers, seeks, long polls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import trio

from client import (
    Admin,
    Consumer,
    NewTopic,
    OffsetAndTimestamp,
    Producer,
    TooManyRequestsError,
    TopicPartition,
    UnknownTopicOrPartitionError,
    partition_for_key,
)

BrokerFactory = Callable[..., Any]


async def create(address: str, name: str, partitions: int) -> None:
    async with Admin(address) as admin:
        await admin.create_topics([NewTopic(name, partitions)])


async def test_produce_then_consume_identical_records(broker: Any) -> None:
    """Proves records sent to several partitions come back identical: offsets, keys, headers."""
    with trio.fail_after(30):
        await create(broker.address, "orders", 3)
        sent: dict[int, list[tuple[int, bytes, bytes, tuple[tuple[str, bytes], ...]]]] = {}
        async with Producer(broker.address, linger_ms=2) as producer:
            handles = []
            for index in range(3000):
                key = f"customer-{index % 17}".encode()
                headers = (("seq", str(index).encode()), ("kind", b"order"))
                value = f"order-{index}".encode() * (1 + index % 5)
                handles.append(
                    (
                        key,
                        value,
                        headers,
                        await producer.enqueue("orders", value, key=key, headers=list(headers)),
                    )
                )
            await producer.flush()
            for key, value, headers, handle in handles:
                metadata = handle.result()
                assert metadata.topic == "orders"
                sent.setdefault(metadata.partition, []).append(
                    (metadata.offset, key, value, headers)
                )
        assert len(sent) > 1
        async with Consumer(broker.address, auto_offset_reset="earliest") as consumer:
            await consumer.assign(["orders"])
            received: dict[int, list[tuple[int, bytes | None, Any, Any]]] = {}
            total = 0
            while total < 3000:
                batch = await consumer.getmany(timeout_ms=5000)
                assert batch, "no records within 5 s"
                for tp, records in batch.items():
                    received.setdefault(tp.partition, []).extend(
                        (r.offset, r.key, r.value, r.headers) for r in records
                    )
                    total += len(records)
            for partition, records in sent.items():
                expected = sorted(records)
                assert [offset for offset, *_ in expected] == list(range(len(expected)))
                assert received[partition] == expected
                assert await consumer.position(TopicPartition("orders", partition)) == len(expected)


async def test_same_key_always_lands_on_the_same_partition(broker: Any) -> None:
    """Proves a key maps to one partition, the documented CRC-32C one, across producers."""
    with trio.fail_after(30):
        await create(broker.address, "keyed", 6)
        seen: dict[bytes, set[int]] = {}
        for _ in range(2):
            async with Producer(broker.address) as producer:
                results = await producer.send_many(
                    "keyed", [b"v"] * 60, keys=[f"k{i % 12}".encode() for i in range(60)]
                )
                for index, metadata in enumerate(results):
                    seen.setdefault(f"k{index % 12}".encode(), set()).add(metadata.partition)
        for key, partitions in seen.items():
            assert partitions == {partition_for_key(key, 6)}


async def test_long_poll_sees_a_record_produced_later(broker: Any) -> None:
    """Proves a consumer waiting at the log end gets a record produced after it started."""
    with trio.fail_after(30):
        await create(broker.address, "later", 1)
        async with Consumer(broker.address, fetch_max_wait_ms=2000) as consumer:
            tp = TopicPartition("later", 0)
            await consumer.assign([tp])
            await consumer.seek_to_end()
            assert await consumer.getmany(timeout_ms=300) == {}
            async with trio.open_nursery() as nursery:

                async def produce_soon() -> None:
                    await trio.sleep(0.3)
                    async with Producer(broker.address) as producer:
                        await producer.send("later", b"late news")

                nursery.start_soon(produce_soon)
                started = trio.current_time()
                record = await consumer.__anext__()
                assert trio.current_time() - started < 5
            assert record.value == b"late news" and record.offset == 0
            assert await consumer.position(tp) == 1


async def test_live_tail_on_trio_comes_through_fetch_streams(
    broker: Any, streamed_answers: list[int]
) -> None:
    """Proves a trio consumer following a partition written one record at a time
    gets every record once and in order, across a seek back while its stream is
    open, part of them as answers flagged MORE of its fetch stream (no request
    of its own per answer)."""
    total = 200
    with trio.fail_after(60):
        await create(broker.address, "tail", 1)
        tp = TopicPartition("tail", 0)
        async with Consumer(broker.address, fetch_max_wait_ms=500) as consumer:
            await consumer.assign([tp])
            consumer.seek(tp, 0)
            async with trio.open_nursery() as nursery:

                async def produce() -> None:
                    async with Producer(broker.address, linger_ms=0) as producer:
                        for index in range(total):
                            await producer.send("tail", f"r{index}", partition=0)

                async def take(count: int) -> list[bytes | None]:
                    taken: list[bytes | None] = []
                    for _ in range(10 * total):  # bounded: each round waits at most 1 s
                        if len(taken) >= count:
                            break
                        batches = await consumer.getmany(
                            timeout_ms=1000, max_records=count - len(taken)
                        )
                        taken.extend(record.value for record in batches.get(tp, []))
                    return taken

                nursery.start_soon(produce)
                first = await take(100)
                consumer.seek(tp, 50)  # back, while the stream is open
                rest = await take(total - 50)
    expected = [f"r{index}".encode() for index in range(total)]
    assert first == expected[:100] and rest == expected[50:]
    assert streamed_answers and all(size > 0 for size in streamed_answers)


class Reading(msgspec.Struct):
    sensor: str
    celsius: float


async def test_seek_variants_and_typed_values(broker: Any) -> None:
    """Proves seek, seek_to_beginning/end/timestamp and msgspec value decoding."""
    with trio.fail_after(30):
        await create(broker.address, "readings", 1)
        tp = TopicPartition("readings", 0)
        async with Producer(broker.address) as producer:
            for index in range(10):
                value = msgspec.json.encode(Reading(f"s{index}", index / 2))
                await producer.send("readings", value, timestamp_ms=1_000_000 + index * 1000)
        async with Consumer(
            broker.address, value_type=Reading, auto_offset_reset="earliest"
        ) as consumer:
            await consumer.assign([tp])
            records = (await consumer.getmany(timeout_ms=5000))[tp]
            assert records[0].value == Reading("s0", 0.0)
            consumer.seek(tp, 7)
            assert [r.offset for r in (await consumer.getmany(timeout_ms=5000))[tp]] == [7, 8, 9]
            await consumer.seek_to_timestamp(1_004_500)
            assert await consumer.position(tp) == 5
            await consumer.seek_to_beginning(tp)
            assert await consumer.position(tp) == 0
            await consumer.seek_to_end(tp)
            assert await consumer.position(tp) == 10
            assert await consumer.getmany(timeout_ms=200) == {}


async def test_admin_lists_describes_and_deletes(broker: Any) -> None:
    """Proves the admin calls: create, list, describe (offsets), metadata, delete."""
    with trio.fail_after(30):
        async with Admin(broker.address) as admin:
            await admin.create_topics([NewTopic("a", 2), NewTopic("b", 1, configs={})])
            assert {"a", "b"} <= set(await admin.list_topics())
            async with Producer(broker.address) as producer:
                await producer.send("a", b"x", partition=1)
            (description,) = await admin.describe_topics(["a"])
            assert [p.log_end_offset for p in description.partitions] == [0, 1]
            metadata = await admin.cluster_metadata()
            assert metadata.brokers and metadata.brokers[0].port == broker.port
            await admin.delete_topics(["b"])
            assert "b" not in await admin.list_topics()


async def test_send_nowait_fast_path_and_its_typed_refusals(broker: Any) -> None:
    """Proves send_nowait appends without awaiting, and refuses typed before metadata."""
    with trio.fail_after(30):
        await create(broker.address, "nowait", 2)
        async with Producer(broker.address, buffer_bytes_max=1 << 20) as producer:
            with pytest.raises(UnknownTopicOrPartitionError):
                producer.send_nowait("nowait", b"x")
            assert await producer.partitions_for("nowait") == [0, 1]
            handles = []
            for index in range(20_000):
                try:
                    handles.append(producer.send_nowait("nowait", b"v" * 100, key=str(index)))
                except TooManyRequestsError:
                    await producer.wait_for_space()
                    handles.append(producer.send_nowait("nowait", b"v" * 100, key=str(index)))
            await producer.flush()
            offsets: dict[int, list[int]] = {}
            for handle in handles:
                metadata = handle.result()
                offsets.setdefault(metadata.partition, []).append(metadata.offset)
            for partition_offsets in offsets.values():
                assert partition_offsets == list(range(len(partition_offsets)))


async def test_offsets_for_times_gives_offset_and_timestamp(broker: Any) -> None:
    """Proves a time maps to the first batch reaching it, with that record's
    timestamp, and a time after every record to None (aiokafka's offsets_for_times)."""
    with trio.fail_after(30):
        await create(broker.address, "timed", 1)
        tp = TopicPartition("timed", 0)
        async with Producer(broker.address, linger_ms=0) as producer:
            for index, timestamp_ms in enumerate((1_000, 2_000, 3_000)):
                sent = await producer.send("timed", b"v", partition=0, timestamp_ms=timestamp_ms)
                assert sent.offset == index
        async with Consumer(broker.address) as consumer:
            found = await consumer.offsets_for_times({tp: 1_500})
            assert found == {tp: OffsetAndTimestamp(1, 2_000)}
            assert await consumer.offsets_for_times({tp: 3_000}) == {
                tp: OffsetAndTimestamp(2, 3_000)
            }
            assert await consumer.offsets_for_times({tp: 3_001}) == {tp: None}
            assert await consumer.list_offsets({tp: 1_500}) == {tp: 1}
