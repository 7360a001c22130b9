"""An idempotent producer whose records retention removed starts over (KIP-360).

The topic rolls a segment per record and keeps old-timestamped records for
1 ms, so retention deletes every sealed segment and the broker forgets the
producers whose records all went (broker/producer_state.py).  The idle
producer's next batch is then answered UNKNOWN_PRODUCER_ID with a log start
offset past its last acknowledged offset: the SDK starts a new producer epoch
from sequence 0 and resends, with no duplicate and no reordering.
"""

from __future__ import annotations

from typing import Any

import trio

from client import Admin, Consumer, NewTopic, Producer, TopicPartition
from client.protocol.messages import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP

TOPIC = "forgotten"
TP = TopicPartition(TOPIC, 0)
OLD_TIMESTAMP_MS = 1_000  # long past retention_ms: deleted once its segment is sealed
RECORD_BYTES = 600  # with segment_bytes 1024: one record per segment
FIRST = [b"first-%d" % index for index in range(3)]
LATER = [b"later-%d" % index for index in range(8)]


async def wait_for_log_start_past(consumer: Consumer, offset: int) -> int:
    """The log start once retention moved it past ``offset`` (the caller's
    fail_after bounds the wait)."""
    while True:
        start = (await consumer.list_offsets({TP: EARLIEST_TIMESTAMP}))[TP]
        if start > offset:
            return start
        await trio.sleep(0.05)


async def test_idle_producer_whose_records_retention_removed_resends_once_in_order(
    broker: Any,
) -> None:
    """Proves an idempotent producer idle while retention deleted every record it
    wrote (so the broker forgot it) gets its next batches -- five in flight at
    once -- written exactly once and in order, without a failed record: the
    broker answered UNKNOWN_PRODUCER_ID and the producer re-sequenced."""
    configs = {"segment_bytes": "1024", "retention_ms": "1", "retention_check_interval_ms": "100"}
    with trio.fail_after(60):
        async with Admin(broker.address) as admin:
            await admin.create_topics([NewTopic(TOPIC, 1, configs=configs)])
        async with Producer(
            broker.address, linger_ms=0, inflight_batches_per_partition_max=5
        ) as producer:
            assert producer.idempotent
            for value in FIRST:
                padded = value.ljust(RECORD_BYTES, b".")
                sent = await producer.send(
                    TOPIC, padded, partition=0, timestamp_ms=OLD_TIMESTAMP_MS
                )
            last_acknowledged = sent.offset
            # Another writer seals the segment of the producer's last record.
            async with Producer(broker.address, linger_ms=0, idempotent=False) as filler:
                for _ in range(2):
                    await filler.send(
                        TOPIC, b"f" * RECORD_BYTES, partition=0, timestamp_ms=OLD_TIMESTAMP_MS
                    )
            async with Consumer(broker.address) as consumer:
                start = await wait_for_log_start_past(consumer, last_acknowledged)
            handles = [await producer.enqueue(TOPIC, value, partition=0) for value in LATER]
            offsets = [(await handle).offset for handle in handles]
            metrics = producer.metrics()
        assert metrics.errors_by_code.get("UNKNOWN_PRODUCER_ID", 0) >= 1, metrics.errors_by_code
        assert metrics.batches_failed == 0
        assert offsets == sorted(offsets) and len(set(offsets)) == len(LATER)

        async with Consumer(broker.address, auto_offset_reset="earliest") as consumer:
            await consumer.assign([TP])
            end = (await consumer.list_offsets({TP: LATEST_TIMESTAMP}))[TP]
            values: list[bytes] = []
            while await consumer.position(TP) < end:  # bounded by fail_after
                for records in (await consumer.getmany(timeout_ms=1_000)).values():
                    values.extend(bytes(record.value or b"") for record in records)
        later = [value for value in values if value.startswith(b"later-")]
        assert later == LATER, values
        assert start > last_acknowledged
