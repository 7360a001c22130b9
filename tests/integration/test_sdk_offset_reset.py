"""A consumer whose position falls out of range follows its auto_offset_reset policy.

The topic rolls a segment per record and keeps them for 1 ms, so the broker's
retention deletes the old segments and the log start moves past offset 0.
"""

from __future__ import annotations

from typing import Any

import pytest
import structlog
import trio

from client import Admin, Consumer, NewTopic, OffsetOutOfRangeError, Producer, TopicPartition
from client.protocol.messages import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP

TOPIC = "short"
TP = TopicPartition(TOPIC, 0)
RECORDS = 6
RESET_EVENT = "position out of range, reset by policy"


async def truncated_topic(address: str) -> tuple[int, int]:
    """Create the topic, write a record per segment, wait for retention to delete
    the sealed ones; returns (log start, log end)."""
    configs = {"segment_bytes": "1024", "retention_ms": "1", "retention_check_interval_ms": "100"}
    async with Admin(address) as admin:
        await admin.create_topics([NewTopic(TOPIC, 1, configs=configs)])
    async with Producer(address, linger_ms=0) as producer:
        for index in range(RECORDS):
            await producer.send(TOPIC, bytes([index]) * 600, partition=0, timestamp_ms=1_000)
    async with Consumer(address) as consumer:
        while True:  # until retention ran (the caller's fail_after bounds it)
            found = await consumer.list_offsets({TP: EARLIEST_TIMESTAMP})
            if found[TP] > 0:
                break
            await trio.sleep(0.05)
        end = (await consumer.list_offsets({TP: LATEST_TIMESTAMP}))[TP]
        start = (await consumer.list_offsets({TP: EARLIEST_TIMESTAMP}))[TP]
    assert 0 < start < end == RECORDS
    return start, end


async def first_records(consumer: Consumer) -> list[int]:
    while True:  # the caller's fail_after bounds it
        batch = await consumer.getmany(timeout_ms=5_000)
        if batch:
            return [record.offset for record in batch[TP]]


@pytest.mark.parametrize("beyond", ["before the log start", "past the log end"])
async def test_out_of_range_position_follows_the_policy(broker: Any, beyond: str) -> None:
    """Proves a position before the log start (retention deleted it) or past the end
    resets to the log start with "earliest" and to the log end with "latest"
    (a warning says what was skipped), and raises OffsetOutOfRangeError naming the
    partition and offset with "none", until a seek."""
    with trio.fail_after(60):
        start, end = await truncated_topic(broker.address)
        position = 0 if beyond == "before the log start" else end + 100

        with structlog.testing.capture_logs() as logs:
            async with Consumer(broker.address, auto_offset_reset="earliest") as consumer:
                await consumer.assign([TP])
                consumer.seek(TP, position)
                assert await first_records(consumer) == list(range(start, end))
        (entry,) = [e for e in logs if e["event"] == RESET_EVENT]
        assert (entry["topic"], entry["partition"]) == (TOPIC, 0)
        assert (entry["old_position"], entry["new_position"]) == (position, start)
        assert entry["skipped_offsets"] == max(0, start - position)

        with structlog.testing.capture_logs() as logs:
            async with Consumer(broker.address, auto_offset_reset="latest") as consumer:
                await consumer.assign([TP])
                consumer.seek(TP, position)
                while await consumer.position(TP) != end:  # until the reset (fail_after)
                    assert await consumer.getmany(timeout_ms=100) == {}
                async with Producer(broker.address) as producer:
                    await producer.send(TOPIC, b"new", partition=0)
                assert await first_records(consumer) == [end]
        (entry,) = [e for e in logs if e["event"] == RESET_EVENT]
        assert (entry["old_position"], entry["new_position"]) == (position, end)

        async with Consumer(broker.address, auto_offset_reset="none") as consumer:
            await consumer.assign([TP])
            consumer.seek(TP, position)
            with pytest.raises(OffsetOutOfRangeError) as raised:
                await first_records(consumer)
            assert f"{TOPIC}-0" in raised.value.message
            assert f"offset {position}" in raised.value.message
            assert await consumer.getmany(timeout_ms=200) == {}  # waits for a seek
            consumer.seek(TP, start)
            assert (await first_records(consumer))[0] == start
