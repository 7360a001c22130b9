"""The SDK's metrics against a real broker: the snapshots count exactly what was sent
and fetched, on trio and asyncio."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from client import Admin, Consumer, NewTopic, Producer, TopicPartition

RECORDS = 2_000


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_snapshots_count_what_was_sent_and_fetched(broker: Any, backend: str) -> None:
    """Proves producer.metrics() counts every acknowledged record and batch and one
    latency per request, and consumer.metrics() counts every fetched record with lag 0
    on each assigned partition once it has read the topic to its end."""

    async def main() -> None:
        with anyio.fail_after(60):
            topic = f"metrics-{backend}"
            async with Admin(broker.address) as admin:
                await admin.create_topics([NewTopic(topic, 3)])
            async with Producer(broker.address, linger_ms=2) as producer:
                handles = await producer.enqueue_many(
                    topic, [b"x" * 50] * RECORDS, keys=[str(i).encode() for i in range(RECORDS)]
                )
                await producer.flush()
                batches = {id(handle.batch) for handle in handles}
                sent = producer.metrics()
            assert (sent.records_sent, sent.batches_sent) == (RECORDS, len(batches))
            assert sent.records_failed == sent.retries == 0 and sent.errors_by_code == {}
            assert sent.requests_sent == sent.request_latency.count >= 1
            assert sent.requests_sent <= len(batches)
            assert sent.buffer_bytes_used == 0 and sent.batches_pending == 0
            async with Consumer(broker.address, auto_offset_reset="earliest") as consumer:
                await consumer.assign([topic])
                received = 0
                while received < RECORDS:
                    batch = await consumer.getmany(timeout_ms=5_000)
                    assert batch, "no records within 5 s"
                    received += sum(len(records) for records in batch.values())
                fetched = consumer.metrics()
            assert fetched.records_fetched == RECORDS == received
            assert fetched.bytes_fetched >= sent.bytes_sent
            assert [(row.topic, row.partition) for row in fetched.partitions] == [
                (topic, partition) for partition in range(3)
            ]
            for row in fetched.partitions:
                assert row.lag == 0 and row.high_watermark == row.position > 0, row
            assert sum(row.high_watermark for row in fetched.partitions) == RECORDS

    anyio.run(main, backend=backend)


def test_lag_per_partition_follows_the_high_watermark(broker: Any) -> None:
    """Proves a consumer that has read nothing yet shows its whole partition as lag once
    a fetch answer brought the high watermark."""

    async def main() -> None:
        with anyio.fail_after(60):
            async with Admin(broker.address) as admin:
                await admin.create_topics([NewTopic("lagging", 1)])
            async with Producer(broker.address) as producer:
                await producer.send_many("lagging", [b"v"] * 30)
            tp = TopicPartition("lagging", 0)
            async with Consumer(
                broker.address, auto_offset_reset="earliest", partition_fetch_bytes_max=1
            ) as consumer:
                await consumer.assign([tp])
                batch = await consumer.getmany(timeout_ms=5_000, max_records=1)
                assert batch
                row = consumer.metrics().partitions[0]
                assert row.high_watermark == 30
                assert row.lag == 30 - row.position > 0

    anyio.run(main, backend="trio")
