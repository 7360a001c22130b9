"""The MQTT side's configuration: the shipped mosquitto.conf and its rendering
(examples/iot/mqtt.py), and the names the bridge subscribes and keys by."""

from __future__ import annotations

import getpass
from pathlib import Path

from examples.iot import names
from examples.iot.mqtt import TEMPLATE_PATH, write_config


def settings(text: str) -> dict[str, str]:
    pairs = (line.split(None, 1) for line in text.splitlines() if line and line[0] != "#")
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def test_shipped_config_raises_the_limits_a_bridge_needs() -> None:
    """Proves the shipped config listens on loopback only, persists often, and raises
    the queue and in-flight limits whose defaults (1000 queued, 20 in flight) would
    drop messages or throttle a bridge that acknowledges after the log did."""
    shipped = settings(TEMPLATE_PATH.read_text())
    assert shipped["listener"] == "1883 127.0.0.1"
    assert shipped["allow_anonymous"] == "true"
    assert shipped["persistence"] == "true"
    assert int(shipped["autosave_interval"]) <= 5
    assert int(shipped["max_queued_messages"]) >= 1_000_000
    assert int(shipped["max_inflight_messages"]) >= 1000


def test_write_config_sets_port_directory_and_user(tmp_path: Path) -> None:
    """Proves the rendered config has this port, this persistence directory (created)
    and the current user, and keeps the rest of the template."""
    data_dir = tmp_path / "data"
    path = write_config(tmp_path / "m.conf", port=18830, data_dir=data_dir)
    rendered = settings(path.read_text())
    assert rendered["listener"] == "18830 127.0.0.1"
    assert rendered["persistence_location"] == f"{data_dir}/"
    assert rendered["user"] == getpass.getuser()
    assert (
        rendered["max_queued_messages"]
        == settings(TEMPLATE_PATH.read_text())["max_queued_messages"]
    )
    assert data_dir.is_dir()


def test_device_comes_from_the_telemetry_topic() -> None:
    """Proves the bridge's key is the device id in devices/<device>/telemetry, and other
    topic shapes give none."""
    assert names.device_from_topic(names.telemetry_topic("dev-00017")) == "dev-00017"
    assert names.device_from_topic("devices/dev-1/status") is None
    assert names.device_from_topic("devices//telemetry") is None
