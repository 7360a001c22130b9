"""examples/iot/alerts.py's rules without a broker: temperature_high from the registry
threshold, device_silent by injected wall time while the partition keeps moving."""

from __future__ import annotations

from typing import Any

from client import Record, TopicPartition
from client.records.decoder import BatchInfo
from examples.iot import names
from examples.iot.alerts import AlertRules, SilenceWatch
from examples.iot.devices import DeviceDirectory, DeviceInfo
from examples.iot.schema import (
    ALERT_DEVICE_SILENT,
    ALERT_TEMPERATURE_HIGH,
    Reading,
    reading_encoder,
)

BATCH = BatchInfo(base_offset=0, first_timestamp_ms=0, max_timestamp_ms=0)


def batch(partition: int, *readings: Reading) -> dict[TopicPartition, list[Record[Any]]]:
    records = [
        Record(0, 0, r.device.encode(), reading_encoder.encode(r), (), batch=BATCH)
        for r in readings
    ]
    return {TopicPartition(names.VALID_TOPIC, partition): records}


def reading(device: str, seq: int, temperature_c: float = 20.0) -> Reading:
    return Reading(device, seq, 100.0 + seq, temperature_c, 50.0, 3.7)


def test_temperature_above_the_registry_threshold_alerts() -> None:
    """Proves a reading hotter than its device's temp_max_c raises temperature_high
    keyed by its seq, and devices without a threshold raise nothing."""
    directory = DeviceDirectory()
    directory.devices["a"] = DeviceInfo("a", temp_max_c=30.0)
    directory.devices["b"] = DeviceInfo("b")
    rules = AlertRules(directory, 10.0, clock=lambda: 0.0)
    alerts = rules.check(
        batch(0, reading("a", 1, 30.0), reading("a", 2, 30.5), reading("b", 1, 99.0))
    )
    assert [(a.device, a.rule, a.alert_key, a.value, a.threshold) for a in alerts] == [
        ("a", ALERT_TEMPERATURE_HIGH, 2, 30.5, 30.0)
    ]


def test_silent_device_alerts_once_while_its_partition_moves() -> None:
    """Proves a device silent for silent_after_s while its partition keeps receiving is
    reported once (keyed by its last seq), and again only after it spoke and fell silent."""
    now = [0.0]
    rules = AlertRules(DeviceDirectory(), 10.0, clock=lambda: now[0])
    assert rules.check(batch(0, reading("quiet", 7), reading("busy", 1))) == []
    now[0] = 9.9
    assert rules.check(batch(0, reading("busy", 2))) == []
    now[0] = 10.0
    (alert,) = rules.check(batch(0, reading("busy", 3)))
    assert (alert.device, alert.rule, alert.alert_key, alert.value) == (
        "quiet",
        ALERT_DEVICE_SILENT,
        7,
        10.0,
    )
    now[0] = 30.0
    assert rules.check(batch(0, reading("busy", 4))) == []  # the same silence
    assert rules.check(batch(0, reading("quiet", 8))) == []
    now[0] = 45.0
    (again,) = rules.check(batch(0, reading("busy", 5)))
    assert (again.device, again.alert_key) == ("quiet", 8)
    rules.watch.check_invariants()


def test_idle_partition_raises_no_silence() -> None:
    """Proves devices are not reported silent when their whole partition is idle (a
    stalled pipeline, not a silent device)."""
    watch = SilenceWatch(10.0)
    watch.seen(0, "a", 1, 0.0)
    watch.seen(1, "b", 1, 50.0)  # another partition moves on
    assert watch.silent(100.0) == []
    watch.forget(0)
    assert "a" not in watch.devices
    watch.check_invariants()
