"""Fault injection (``make soak``): the broker is SIGKILLed again and again under load.

A producer writes numbered records to three partitions without pause while the
test kills the broker at random moments and restarts it on the same address and
data directory.  Afterwards a checker reads every partition and proves: every
acknowledged record is there, at the offset its acknowledgement named; offsets
are dense and increasing; nothing that was never sent appears; and, since the
producer is idempotent (the default) and the broker rebuilds producer state from
its log tail on restart, no record appears twice.
"""

from __future__ import annotations

import random
import signal
from typing import Any

import pytest
import trio

from client import (
    Admin,
    Consumer,
    DistributaryError,
    NewTopic,
    Producer,
    RecordHandle,
)

pytestmark = pytest.mark.slow

PARTITIONS = 3
KILLS = 12
SOAK_SECONDS_MAX = 240


async def read_everything(address: str, topic: str) -> dict[int, list[tuple[int, bytes]]]:
    found: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(PARTITIONS)}
    async with Consumer(address, auto_offset_reset="earliest") as consumer:
        await consumer.assign([topic])
        for _ in range(100_000):  # bounded: each pass returns records or ends the read
            batches = await consumer.getmany(timeout_ms=2_000)
            if not batches:
                return found
            for tp, records in batches.items():
                found[tp.partition].extend((r.offset, r.value) for r in records)
    raise AssertionError("the log never ran dry")


@pytest.mark.timeout(SOAK_SECONDS_MAX + 60)
async def test_no_acknowledged_record_is_lost_across_repeated_sigkills(broker: Any) -> None:
    """Proves no acknowledged record is lost or moved when the broker is SIGKILLed
    twelve times under continuous produce load."""
    rng = random.Random(20261126)
    topic = "soak"
    acknowledged: dict[bytes, tuple[int, int]] = {}  # value -> (partition, offset)
    sent: set[bytes] = set()
    idempotent = False
    with trio.fail_after(SOAK_SECONDS_MAX):
        async with Admin(broker.address) as admin:
            await admin.create_topics([NewTopic(topic, partitions=PARTITIONS)])

        async def produce(stop: trio.Event) -> None:
            async with Producer(
                broker.address, linger_ms=2, retries_max=50, retry_backoff_max_ms=500,
                reconnect_attempts_max=20, inflight_batches_per_partition_max=5,
            ) as producer:  # fmt: skip
                nonlocal idempotent
                idempotent = producer.idempotent
                handles: list[tuple[bytes, RecordHandle]] = []
                for number in range(10_000_000):
                    if stop.is_set():
                        break
                    value = b"record-%09d" % number
                    sent.add(value)
                    try:
                        handle = await producer.enqueue(topic, value, partition=number % 3)
                    except DistributaryError:
                        await trio.sleep(0.05)  # broker down and retries used up
                        continue
                    handles.append((value, handle))
                    if len(handles) >= 2_000:
                        collect(handles)
                    if not number % 200:
                        await trio.sleep(0.001)
                await producer.flush()
                collect(handles, final=True)

        def collect(handles: list[tuple[bytes, RecordHandle]], final: bool = False) -> None:
            keep: list[tuple[bytes, RecordHandle]] = []
            for value, handle in handles:
                if not handle.done():
                    keep.append((value, handle))
                    continue
                try:
                    metadata = handle.result()
                except DistributaryError:
                    continue  # not acknowledged: may or may not be in the log
                acknowledged[value] = (metadata.partition, metadata.offset)
            assert not final or not keep
            handles[:] = keep

        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, stop)
            for _ in range(KILLS):
                await trio.sleep(rng.uniform(0.2, 1.0))
                await trio.to_thread.run_sync(broker.stop, signal.SIGKILL)
                await trio.sleep(rng.uniform(0.0, 0.3))
                await trio.to_thread.run_sync(broker.start)
            await trio.sleep(1.0)
            stop.set()

        found = await read_everything(broker.address, topic)

    assert len(acknowledged) > 1_000, "the producer made too little progress to prove anything"
    located: dict[bytes, set[tuple[int, int]]] = {}
    for partition, records in found.items():
        offsets = [offset for offset, _ in records]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))) if offsets else True
        for offset, value in records:
            assert value in sent, f"record {value!r} was never sent"
            located.setdefault(value, set()).add((partition, offset))
    lost = [v for v, where in acknowledged.items() if where not in located.get(v, set())]
    assert lost == [], f"{len(lost)} acknowledged records lost or moved, e.g. {lost[:3]}"
    assert idempotent
    twice = [v for v, where in located.items() if len(where) > 1]
    assert twice == [], f"{len(twice)} records written more than once, e.g. {twice[:3]}"
