"""Measure the async SDK's produce and consume rates against a running broker.

    python examples/sdk_throughput.py --bootstrap 127.0.0.1:9392 --records 2000000

Produces ``--records`` records of ``--value-bytes`` bytes to one partition of a
fresh topic (acks=leader, no compression) with ``enqueue`` (the per-record
fast path), then reads them all back with ``getmany``.  Prints records/s.
"""

from __future__ import annotations

import argparse
import time
import uuid

import anyio

from client import Admin, Consumer, Producer, TooManyRequestsError, TopicPartition


async def run(bootstrap: str, records: int, value_bytes: int, compression: str, api: str) -> None:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    async with Admin(bootstrap) as admin:
        await admin.create_topic(topic, 1)
    value = b"x" * value_bytes
    async with Producer(bootstrap, compression=compression) as producer:  # type: ignore[arg-type]
        enqueue = producer.enqueue
        started = time.perf_counter()
        cpu_started = time.process_time()
        if api == "enqueue":
            for _ in range(records):
                await enqueue(topic, value)
        else:
            await producer.partitions_for(topic)
            send_nowait = producer.send_nowait
            for index in range(records):
                try:
                    send_nowait(topic, value)
                except TooManyRequestsError:  # buffer full: let the sender catch up
                    await producer.wait_for_space()
                    send_nowait(topic, value)
                if not index & 4095:
                    await anyio.sleep(0)
        await producer.flush()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    print(
        f"produce: {records / elapsed:,.0f} records/s "
        f"({records * value_bytes / elapsed / 1e6:,.0f} MB/s); "
        f"client CPU {records / cpu:,.0f} records per CPU-second"
    )

    async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        tp = TopicPartition(topic, 0)
        await consumer.assign([tp])
        received = 0
        started = time.perf_counter()
        cpu_started = time.process_time()
        while received < records:
            batch = await consumer.getmany(timeout_ms=5_000)
            if not batch:
                break
            for chunk in batch.values():
                received += len(chunk)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    print(
        f"consume (getmany): {received / elapsed:,.0f} records/s; "
        f"client CPU {received / cpu:,.0f} records per CPU-second"
    )

    async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        await consumer.assign([TopicPartition(topic, 0)])
        received = 0
        started = time.perf_counter()
        async for _record in consumer:
            received += 1
            if received >= records:
                break
        elapsed = time.perf_counter() - started
    print(f"consume (async for): {received / elapsed:,.0f} records/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default="127.0.0.1:9392")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--compression", default="none")
    parser.add_argument("--backend", default="trio", choices=["trio", "asyncio"])
    parser.add_argument("--api", default="send_nowait", choices=["send_nowait", "enqueue"])
    args = parser.parse_args()
    anyio.run(
        run,
        args.bootstrap,
        args.records,
        args.value_bytes,
        args.compression,
        args.api,
        backend=args.backend,
    )


if __name__ == "__main__":
    main()
