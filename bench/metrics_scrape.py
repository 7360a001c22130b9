"""The time of one metrics scrape of a broker with many partitions:
``python -m bench.metrics_scrape [--topics 10] [--partitions 100] [--scrapes 20]``.

Starts a fresh ``distributary serve`` (127.0.0.1, free ports, a temporary data
directory removed afterwards), creates ``--topics`` topics of ``--partitions``
partitions, puts ``--records`` records in every partition and commits offset
``--committed`` for a group on every partition (so each partition has lag
series, and lag in seconds reads a batch header per partition).  Then it times
``--scrapes`` GET /metrics one after the other (client-side wall time: connect,
render on the broker's event loop, transfer) and prints the median, the
fastest and the slowest, the size of the answer and its number of series,
and the broker's CPU time per scrape (from ``process_cpu_seconds_total`` in the
first and the last answer: on a busy machine the wall times include waiting for
a core, the CPU time does not).

The endpoint renders one metric family at a time, letting the broker's event
loop run between two (broker/metrics/registry.py); the longest of those steps
is the longest a scrape holds the loop.  The same state is then built in this
process (a Broker over a temporary data directory) and the steps of
``--scrapes`` renderings timed in CPU time of this thread (``time.thread_time``,
so time the machine gave to other processes is not counted): ``step_cpu_ms_max``
is the longest of them all, ``render_cpu_ms`` the median of a whole rendering.
Figures are reported, not asserted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Final

import trio

from broker import logging as broker_logging
from broker.config import load_config
from broker.handlers import handle
from broker.metrics.registry import MetricsRegistry
from broker.state import Broker
from broker.testing import BrokerProcess
from client.protocol.connection import IncomingRequest
from client.protocol.messages import (
    ApiKey,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetCommitTopic,
)
from client.records.builder import build_batch
from client.sync import Admin, Producer
from client.types import TopicPartition

# Closing a thousand partitions fsyncs each one: on a busy machine that is slow.
STOP_TIMEOUT_S: Final = 120.0


def scrape(address: str) -> bytes:
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, response.status
        return body
    finally:
        connection.close()


async def step_times_ms(arguments: argparse.Namespace, data_dir: str) -> tuple[float, float]:
    """The longest step and the median rendering, in CPU ms, of ``--scrapes``
    step-by-step renderings of the same state, built in this process."""
    broker_logging.configure("json", "warning")
    config = load_config(flags={"data_dir": data_dir}).config
    broker = await Broker.open(config)
    try:
        batch = build_batch([b"x" * 100] * arguments.records)
        committed: list[OffsetCommitTopic] = []
        for n in range(arguments.topics):
            topic = await broker.topics.create(f"scrape-{n}", arguments.partitions, {})
            for partition in topic.partitions:
                partition.append_now(memoryview(batch))
            committed.append(
                OffsetCommitTopic(
                    topic.name,
                    [
                        OffsetCommitPartition(index, arguments.committed)
                        for index in range(arguments.partitions)
                    ],
                )
            )
        body = OffsetCommitRequest("lagging", topics=committed)
        await handle(
            broker, IncomingRequest(ApiKey.OFFSET_COMMIT, 0, 1, True, body, memoryview(b""))
        )
        registry = MetricsRegistry(broker, lambda: 0)
        steps_ms: list[float] = []
        renders_ms: list[float] = []
        last = time.thread_time()
        real_checkpoint = trio.lowlevel.checkpoint

        async def timed_checkpoint() -> None:
            nonlocal last
            steps_ms.append((time.thread_time() - last) * 1000)
            await real_checkpoint()
            last = time.thread_time()

        trio.lowlevel.checkpoint = timed_checkpoint
        try:
            for _ in range(arguments.scrapes):
                started = last = time.thread_time()
                await registry.render_in_steps("")
                renders_ms.append((time.thread_time() - started) * 1000)
        finally:
            trio.lowlevel.checkpoint = real_checkpoint
        return max(steps_ms), statistics.median(renders_ms)
    finally:
        await broker.close()


def cpu_seconds(body: bytes) -> float:
    """``process_cpu_seconds_total`` of a scrape."""
    for line in body.splitlines():
        if line.startswith(b"process_cpu_seconds_total "):
            return float(line.split()[1])
    raise AssertionError("no process_cpu_seconds_total in the scrape")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topics", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=100)
    parser.add_argument("--records", type=int, default=10, help="records per partition")
    parser.add_argument("--committed", type=int, default=5, help="the group's committed offset")
    parser.add_argument("--scrapes", type=int, default=20)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as work:
        broker = BrokerProcess(Path(work))
        broker.start()
        try:
            topics = [f"scrape-{n}" for n in range(arguments.topics)]
            offsets: dict[TopicPartition, int] = {}
            with Admin(broker.address) as admin:
                for topic in topics:
                    admin.create_topic(topic, arguments.partitions)
            values = [b"x" * 100] * arguments.records
            with Producer(broker.address) as producer:
                for topic in topics:
                    for partition in range(arguments.partitions):
                        producer.send_many(topic, values, partition=partition, timeout=60)
                        offsets[TopicPartition(topic, partition)] = arguments.committed
            with Admin(broker.address) as admin:
                admin.set_offsets("lagging", offsets)
            address = broker.metrics_address
            assert address is not None
            scrape(address)  # warm up
            times_ms: list[float] = []
            bodies: list[bytes] = []
            for _ in range(arguments.scrapes):
                started = time.perf_counter()
                bodies.append(scrape(address))
                times_ms.append((time.perf_counter() - started) * 1000)
            body = bodies[-1]
            cpu_s = [cpu_seconds(bodies[0]), cpu_seconds(bodies[-1])]
            cpu_per_scrape_ms = (cpu_s[1] - cpu_s[0]) * 1000 / (len(bodies) - 1)
        finally:
            broker.stop(timeout_s=STOP_TIMEOUT_S)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as work:
        step_cpu_ms_max, render_cpu_ms = trio.run(step_times_ms, arguments, work)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    figures = {
        "partitions": arguments.topics * arguments.partitions,
        "series": series,
        "bytes": len(body),
        "scrape_ms_median": round(statistics.median(times_ms), 1),
        "scrape_ms_min": round(min(times_ms), 1),
        "scrape_ms_max": round(max(times_ms), 1),
        "broker_cpu_ms_per_scrape": round(cpu_per_scrape_ms, 1),
        "render_cpu_ms": round(render_cpu_ms, 1),
        "step_cpu_ms_max": round(step_cpu_ms_max, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
