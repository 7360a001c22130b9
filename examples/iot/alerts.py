"""The alerts stage: ``iot.valid`` -> ``iot.alerts``, threshold and silent-device rules.

A member of the consumer group ``iot-alerts`` checks each reading and writes
schema.Alert JSON keyed by device:

* ``temperature_high``: the reading's temperature is above the device's
  ``temp_max_c`` in the ``iot.devices`` registry (devices.py); ``alert_key``
  is the reading's seq, so a re-read reading gives the same alert, which the
  sink stores once.
* ``device_silent``: a device has sent nothing for ``silent_after_s`` of wall
  time while its partition kept moving (other devices of the partition sent
  readings that long after its last one: so a stalled pipeline or an idle
  partition raises nothing).  ``alert_key`` is the last seq seen from the
  device, so it fires once per silence.  :class:`SilenceWatch` is the sans-I/O
  part; the wall time is read once per batch and passed in.

Offsets are committed once the batch's alerts are acknowledged (consume.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import click
import msgspec
import structlog
import trio
from prometheus_client import CollectorRegistry, Counter

from client import Consumer, Producer, TopicPartition
from examples.iot import names, stage
from examples.iot.consume import (
    BATCH_RECORDS_MAX_DEFAULT,
    Batch,
    commit_offsets,
    consume_loop,
    next_offsets,
    send,
    send_pending,
    wait_acknowledged,
)
from examples.iot.devices import DeviceDirectory, follow_devices
from examples.iot.schema import (
    ALERT_DEVICE_SILENT,
    ALERT_TEMPERATURE_HIGH,
    Alert,
    reading_decoder,
    reading_encoder,
)

log = structlog.get_logger("examples.iot.alerts")

SILENT_AFTER_S_DEFAULT: Final = 10.0
RULES: Final = (ALERT_TEMPERATURE_HIGH, ALERT_DEVICE_SILENT)


class DeviceActivity:
    """When a device was last heard of (wall time), its highest seq, and the seq
    its last silence alert was for."""

    __slots__ = ("alerted_seq", "last_seen_s", "last_seq", "partition")

    def __init__(self, partition: int, seq: int, now_s: float) -> None:
        self.partition = partition
        self.last_seq = seq
        self.last_seen_s = now_s
        self.alerted_seq: int | None = None


class SilenceWatch:
    """Finds devices silent for ``silent_after_s`` while their partition moved on."""

    def __init__(self, silent_after_s: float) -> None:
        assert silent_after_s > 0, silent_after_s
        self.silent_after_s = silent_after_s
        self.devices: dict[str, DeviceActivity] = {}
        self.partition_seen_s: dict[int, float] = {}  # last record of each partition

    def seen(self, partition: int, device: str, seq: int, now_s: float) -> None:
        activity = self.devices.get(device)
        if activity is None:
            self.devices[device] = DeviceActivity(partition, seq, now_s)
        else:
            activity.partition = partition
            activity.last_seen_s = now_s
            if seq > activity.last_seq:
                activity.last_seq = seq
        if now_s > self.partition_seen_s.get(partition, -1.0):
            self.partition_seen_s[partition] = now_s

    def forget(self, partition: int) -> None:
        """The partition moved to another member."""
        self.partition_seen_s.pop(partition, None)
        for device in [d for d, a in self.devices.items() if a.partition == partition]:
            del self.devices[device]

    def silent(self, now_s: float) -> list[Alert]:
        """Alerts for devices newly silent (each silence alerted once)."""
        alerts: list[Alert] = []
        for device, activity in self.devices.items():
            partition_seen_s = self.partition_seen_s.get(activity.partition, -1.0)
            if partition_seen_s - activity.last_seen_s < self.silent_after_s:
                continue
            if activity.alerted_seq == activity.last_seq:
                continue
            activity.alerted_seq = activity.last_seq
            alerts.append(
                Alert(
                    device=device,
                    rule=ALERT_DEVICE_SILENT,
                    alert_key=activity.last_seq,
                    ts=now_s,
                    value=now_s - activity.last_seen_s,
                    threshold=self.silent_after_s,
                )
            )
        return alerts

    def check_invariants(self) -> None:
        for activity in self.devices.values():
            assert activity.last_seen_s <= self.partition_seen_s[activity.partition]


class AlertRules:
    """Both rules over batches of readings (the stage's logic apart from I/O)."""

    def __init__(
        self, directory: DeviceDirectory, silent_after_s: float, clock: Callable[[], float]
    ) -> None:
        self.directory = directory
        self.clock = clock
        self.watch = SilenceWatch(silent_after_s)
        self.undecodable = 0

    def check(self, batch: Batch) -> list[Alert]:
        """Alerts raised by ``batch`` (possibly empty: time alone raises silences)."""
        now_s = self.clock()
        alerts: list[Alert] = []
        devices = self.directory.devices
        seen = self.watch.seen
        for tp, records in batch.items():
            partition = tp.partition
            for record in records:
                try:
                    reading = reading_decoder.decode(record.value or b"")
                except msgspec.DecodeError:
                    self.undecodable += 1
                    continue
                seen(partition, reading.device, reading.seq, now_s)
                info = devices.get(reading.device)
                if info is None or info.temp_max_c is None:
                    continue
                if reading.temperature_c > info.temp_max_c:
                    alerts.append(
                        Alert(
                            device=reading.device,
                            rule=ALERT_TEMPERATURE_HIGH,
                            alert_key=reading.seq,
                            ts=reading.ts,
                            value=reading.temperature_c,
                            threshold=info.temp_max_c,
                        )
                    )
        alerts.extend(self.watch.silent(now_s))
        return alerts


async def run(
    bootstrap: str,
    stop: trio.Event,
    *,
    registry: CollectorRegistry | None = None,
    silent_after_s: float = SILENT_AFTER_S_DEFAULT,
    clock: Callable[[], float] = time.time,
    session_timeout_ms: int | None = None,
    batch_records_max: int = BATCH_RECORDS_MAX_DEFAULT,
) -> None:
    """Raise alerts until ``stop`` is set.  Raises OutputNotAcknowledgedError when
    alerts fail for good, UnknownTopicOrPartitionError without iot.devices."""
    fired = Counter(
        "iot_alerts_fired_total",
        "Alerts written to iot.alerts, by rule.",
        ["rule"],
        registry=registry if registry is not None else CollectorRegistry(),
    )
    fired_by_rule = {rule: fired.labels(rule=rule) for rule in RULES}
    directory = DeviceDirectory()
    rules = AlertRules(directory, silent_after_s, clock)

    def forget(partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            rules.watch.forget(tp.partition)

    async with trio.open_nursery() as nursery:
        await nursery.start(follow_devices, bootstrap, directory)
        async with (
            Producer(bootstrap, client_id="iot-alerts", linger_ms=2) as producer,
            Consumer(
                bootstrap,
                client_id="iot-alerts",
                group=names.ALERTS_GROUP,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=session_timeout_ms,
                on_revoke=forget,
                on_lost=forget,
            ) as consumer,
        ):
            if registry is not None:
                producer.register_metrics(registry, {"client": "alerts"})
                consumer.register_metrics(registry, {"client": "alerts"})
            await producer.partitions_for(names.ALERTS_TOPIC)
            await consumer.subscribe([names.VALID_TOPIC])

            async def process(batch: Batch) -> None:
                alerts = rules.check(batch)
                pending: list[Any] = []
                for alert in alerts:
                    value = reading_encoder.encode(alert)
                    send(producer, names.ALERTS_TOPIC, value, alert.device.encode(), None, pending)
                if pending:
                    await send_pending(producer, pending)
                if alerts:
                    await wait_acknowledged(producer)
                await commit_offsets(consumer, next_offsets(batch))
                for alert in alerts:
                    fired_by_rule[alert.rule].inc()

            log.info("alerting", bootstrap=bootstrap, silent_after_s=silent_after_s)
            await consume_loop(consumer, process, stop, batch_records_max=batch_records_max)
        nursery.cancel_scope.cancel()


@click.command("alerts")
@stage.bootstrap_option
@click.option(
    "--silent-after",
    "silent_after_s",
    type=float,
    default=SILENT_AFTER_S_DEFAULT,
    show_default=True,
    help="Seconds of wall time without a reading (while its partition moves) before "
    "a device is reported silent.",
)
@stage.metrics_port_option
def command(bootstrap: str, silent_after_s: float, metrics_port: int) -> None:
    """iot.valid -> iot.alerts: threshold and silent-device rules."""
    registry = CollectorRegistry()
    stage.serve_metrics(registry, port=metrics_port)
    stage.run_stage(
        lambda stop: run(bootstrap, stop, registry=registry, silent_after_s=silent_after_s)
    )
