"""The aggregate stage: ``iot.valid`` -> ``iot.agg.1m``, one-minute windows per device.

A member of the consumer group ``iot-aggregate`` feeds each owned partition's
readings to windows.TumblingWindows (event time, grace, late drops, silent
close: the semantics are documented there), enriches every closed window with
the device's site and model from the ``iot.devices`` registry (devices.py,
read in full before the first record and followed afterwards), and writes it
to ``iot.agg.1m`` keyed by device as schema.WindowAggregate JSON, with the
newest ``iot-received-ns`` of its readings as a header.

Commits: once a batch's windows are acknowledged, each of its partitions is
committed at the offset of its oldest record still in an open window (so a
restart re-reads and rebuilds the open windows), with the partition's position
in the commit metadata (``{"<partition>": position}``).  A member that gets the
partition reads that position back (Admin.describe_group) and replays the
records before it silently: the windows they closed were emitted already.
Re-emitted windows are identical, and the sink's upsert absorbs them.
"""

from __future__ import annotations

import json
from typing import Any, Final

import click
import msgspec
import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from client import Admin, Consumer, DistributaryError, Producer, TopicPartition
from examples.iot import names, stage
from examples.iot.consume import (
    BATCH_RECORDS_MAX_DEFAULT,
    Batch,
    commit_offsets,
    consume_loop,
    header_value,
    send,
    send_pending,
    wait_acknowledged,
)
from examples.iot.devices import DeviceDirectory, follow_devices
from examples.iot.schema import WindowAggregate, reading_decoder, reading_encoder
from examples.iot.windows import GRACE_S_DEFAULT, ClosedWindow, TumblingWindows

log = structlog.get_logger("examples.iot.aggregate")

# Reading the stored positions when partitions arrive: one attempt a second for half
# a minute rides out a broker restart.
DESCRIBE_ATTEMPTS_MAX: Final = 30
DESCRIBE_RETRY_S: Final = 1.0
PendingSends = list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]]
_EMPTY: Final = b""


class AggregateMetrics:
    """The stage's metrics (updated once per batch)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.late_dropped = Counter(
            "iot_aggregate_late_dropped_total",
            "Readings dropped because their window was past its grace period.",
            registry=registry,
        )
        self.windows_closed = Counter(
            "iot_aggregate_windows_closed_total",
            "One-minute windows closed and written to iot.agg.1m.",
            registry=registry,
        )
        self.duplicates = Counter(
            "iot_aggregate_duplicates_total",
            "Readings already in their window (re-read after a rebalance or restart).",
            registry=registry,
        )
        self.undecodable = Counter(
            "iot_aggregate_undecodable_total",
            "Records on iot.valid that were not a Reading (skipped).",
            registry=registry,
        )
        self.open_windows = Gauge(
            "iot_aggregate_open_windows", "Windows open right now.", registry=registry
        )


def encode_window(window: ClosedWindow, directory: DeviceDirectory) -> bytes:
    """The iot.agg.1m value of a closed window, enriched from the registry."""
    info = directory.get(window.device)
    return reading_encoder.encode(
        WindowAggregate(
            device=window.device,
            window_start=window.window_start,
            count=window.count,
            temperature_c_min=window.temperature_c_min,
            temperature_c_max=window.temperature_c_max,
            temperature_c_mean=window.temperature_c_mean,
            humidity_pct_mean=window.humidity_pct_mean,
            site=None if info is None else info.site,
            model=None if info is None else info.model,
        )
    )


class Aggregator:
    """The stage's logic apart from the group loop: feeds readings to the windows,
    enqueues closed windows, and says what to commit."""

    def __init__(
        self, producer: Producer, directory: DeviceDirectory, windows: TumblingWindows
    ) -> None:
        self.producer = producer
        self.directory = directory
        self.windows = windows
        self.undecodable = 0

    def feed(self, tp: TopicPartition, records: list[Any]) -> None:
        """Add ``records`` (of an owned partition, in offset order) to the windows."""
        windows = self.windows
        partition = tp.partition
        add = windows.add
        decode = reading_decoder.decode
        for record in records:
            try:
                reading = decode(record.value or _EMPTY)
            except msgspec.DecodeError:
                self.undecodable += 1
                continue
            received = header_value(record, names.RECEIVED_NS_HEADER)
            add(
                partition,
                record.offset,
                reading.device,
                reading.seq,
                reading.ts,
                reading.temperature_c,
                reading.humidity_pct,
                int(received) if received is not None and received.isdigit() else 0,
            )

    async def emit_closed(self) -> int:
        """Enqueue the windows closed so far; returns how many."""
        closed = self.windows.take_closed()
        pending: PendingSends = []
        for window in closed:
            headers = (
                [(names.RECEIVED_NS_HEADER, str(window.received_ns_max).encode())]
                if window.received_ns_max
                else None
            )
            send(
                self.producer,
                names.AGG_TOPIC,
                encode_window(window, self.directory),
                window.device.encode(),
                headers,
                pending,
            )
        if pending:
            await send_pending(self.producer, pending)
        return len(closed)

    def commits(self, partitions: list[int]) -> tuple[dict[TopicPartition, int], str]:
        """The offsets to commit for these partitions (still owned ones) and the
        metadata carrying their positions."""
        offsets: dict[TopicPartition, int] = {}
        positions: dict[str, int] = {}
        for partition in partitions:
            if partition not in self.windows.partitions:
                continue  # lost meanwhile
            offset = self.windows.commit_offset(partition)
            position = self.windows.position(partition)
            if offset is None or position is None:
                continue
            offsets[TopicPartition(names.VALID_TOPIC, partition)] = offset
            positions[str(partition)] = position
        return offsets, json.dumps(positions, separators=(",", ":"), sort_keys=True)


def replay_until_from(metadata: str, partition: int) -> int | None:
    """The position stored in a commit's metadata for ``partition`` (None: none)."""
    try:
        positions = json.loads(metadata) if metadata else {}
    except ValueError:
        return None
    value = positions.get(str(partition)) if isinstance(positions, dict) else None
    return value if type(value) is int else None


async def stored_positions(admin: Admin, partitions: list[int]) -> dict[int, int | None]:
    """Each partition's position from the group's last commit metadata.  Retries
    while the broker cannot answer (a restart), up to DESCRIBE_ATTEMPTS_MAX times;
    after that, or for a group that has no commits, nothing is replayed silently."""
    description = None
    for attempt in range(DESCRIBE_ATTEMPTS_MAX):
        try:
            description = await admin.describe_group(names.AGGREGATE_GROUP)
            break
        except DistributaryError as error:
            if not error.retriable or attempt == DESCRIBE_ATTEMPTS_MAX - 1:
                log.warning("no group description, replaying nothing", error=str(error))
                return dict.fromkeys(partitions)
            await trio.sleep(DESCRIBE_RETRY_S)
    assert description is not None
    metadata = {
        p.partition: p.metadata for p in description.partitions if p.topic == names.VALID_TOPIC
    }
    return {p: replay_until_from(metadata.get(p, ""), p) for p in partitions}


async def run(
    bootstrap: str,
    stop: trio.Event,
    *,
    registry: CollectorRegistry | None = None,
    grace_s: float = GRACE_S_DEFAULT,
    session_timeout_ms: int | None = None,
    batch_records_max: int = BATCH_RECORDS_MAX_DEFAULT,
) -> None:
    """Aggregate until ``stop`` is set.  Raises OutputNotAcknowledgedError when
    outputs fail for good, UnknownTopicOrPartitionError without iot.devices."""
    metrics = AggregateMetrics(registry if registry is not None else CollectorRegistry())
    windows = TumblingWindows(grace_s=grace_s)

    def forget(partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            windows.revoke(tp.partition)

    directory = DeviceDirectory()
    async with trio.open_nursery() as nursery:
        await nursery.start(follow_devices, bootstrap, directory)
        async with (
            Admin(bootstrap) as admin,
            Producer(bootstrap, client_id="iot-aggregate", linger_ms=2) as producer,
            Consumer(
                bootstrap,
                client_id="iot-aggregate",
                group=names.AGGREGATE_GROUP,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=session_timeout_ms,
                on_revoke=forget,
                on_lost=forget,
            ) as consumer,
        ):
            if registry is not None:
                producer.register_metrics(registry, {"client": "aggregate"})
                consumer.register_metrics(registry, {"client": "aggregate"})
            await producer.partitions_for(names.AGG_TOPIC)
            await consumer.subscribe([names.VALID_TOPIC])
            aggregator = Aggregator(producer, directory, windows)

            async def process(batch: Batch) -> None:
                if not batch:
                    return
                new = [tp.partition for tp in batch if tp.partition not in windows.partitions]
                if new:
                    for partition, replay_until in (await stored_positions(admin, new)).items():
                        if partition not in windows.partitions:
                            windows.assign(partition, replay_until)
                before = (windows.late_dropped, windows.duplicates, aggregator.undecodable)
                for tp, records in batch.items():
                    if tp.partition in windows.partitions:
                        aggregator.feed(tp, records)
                closed = await aggregator.emit_closed()
                await wait_acknowledged(producer)
                offsets, metadata = aggregator.commits([tp.partition for tp in batch])
                await commit_offsets(consumer, offsets, metadata)
                metrics.windows_closed.inc(closed)
                metrics.late_dropped.inc(windows.late_dropped - before[0])
                metrics.duplicates.inc(windows.duplicates - before[1])
                metrics.undecodable.inc(aggregator.undecodable - before[2])
                metrics.open_windows.set(windows.open_windows())

            log.info("aggregating", bootstrap=bootstrap, grace_s=grace_s)
            await consume_loop(consumer, process, stop, batch_records_max=batch_records_max)
        nursery.cancel_scope.cancel()


@click.command("aggregate")
@stage.bootstrap_option
@click.option(
    "--grace",
    "grace_s",
    type=float,
    default=GRACE_S_DEFAULT,
    show_default=True,
    help="Seconds a window accepts late readings after it ends (event time).",
)
@stage.metrics_port_option
def command(bootstrap: str, grace_s: float, metrics_port: int) -> None:
    """iot.valid -> iot.agg.1m: one-minute windows per device."""
    registry = CollectorRegistry()
    stage.serve_metrics(registry, port=metrics_port)
    stage.run_stage(lambda stop: run(bootstrap, stop, registry=registry, grace_s=grace_s))
