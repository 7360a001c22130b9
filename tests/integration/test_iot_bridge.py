"""The MQTT side of the IoT pipeline against real processes: mosquitto, a
``distributary serve`` broker, and the simulator, bridge and registry stages as
``python -m examples.iot`` subprocesses.

Each test runs the simulator for a few seconds with the default fault menu,
injects one fault mid-stream, then reads iot.raw back and checks it against the
simulator's ledger: every publish is there, keyed by its device, and each
device's records first appear in the order the device sent them (the MQTT
redelivery after a fault may repeat a suffix; it never reorders or loses).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.testing import BrokerProcess
from client.sync import Admin, Consumer
from client.types import NewTopic
from examples.iot import names
from examples.iot.ledger import first_send_order, read_ledger
from examples.iot.mqtt import MosquittoProcess, find_mosquitto, free_port
from examples.iot.telemetry import device_id, device_profile

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto is not installed (apt-get install mosquitto)"
)

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 30.0
# 40 devices at 25 readings/s: 1,000 publishes/s for 6 s.
SIM_ARGS = ("--devices", "40", "--rate", "25", "--duration", "6", "--seed", "11")


class StageProcess:
    """One ``python -m examples.iot <stage>`` subprocess with its log file."""

    def __init__(self, work_dir: Path, name: str, *args: str) -> None:
        self.log_path = work_dir / f"{name}.log"
        for restart in range(1, 100):
            if not self.log_path.exists():
                break
            self.log_path = work_dir / f"{name}-{restart}.log"
        self.metrics_port = free_port()
        port = str(self.metrics_port)
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "examples.iot", name, *args, "--metrics-port", port],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """The stage's /metrics as sample name -> value (empty while not serving)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def wait_for_metric(self, name: str, done: Callable[[float], bool]) -> float:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.logs()
            value = self.metrics().get(name)
            if value is not None and done(value):
                return value
            time.sleep(0.05)
        raise AssertionError(f"{name} never reached the state:\n{self.logs()}")

    def wait_for_output(self, text: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while text not in self.logs():
            assert self.process.poll() is None, self.logs()
            assert time.monotonic() < deadline, f"no {text!r} within {WAIT_S} s:\n{self.logs()}"
            time.sleep(0.05)

    def wait(self) -> int:
        return self.process.wait(timeout=WAIT_S)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    broker = MosquittoProcess(tmp_path / "mqtt")
    broker.start()
    yield broker
    broker.kill()


class BuiltinMqttBroker:
    """``python -m examples.iot mqtt-broker --builtin`` (amqtt, the labelled
    fallback) as a subprocess, once it printed that it listens."""

    def __init__(self, work_dir: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = work_dir / "mqtt-builtin.log"
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "examples.iot", "mqtt-broker", "--builtin",
                 "--port", str(self.port), "--data-dir", str(work_dir / "mqtt-builtin")],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + WAIT_S
        while f"builtin MQTT broker on {self.address}" not in self.logs():
            assert self.process.poll() is None, self.logs()
            assert time.monotonic() < deadline, f"not listening within {WAIT_S} s:\n{self.logs()}"
            time.sleep(0.05)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=WAIT_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def builtin_mqtt(tmp_path: Path) -> Iterator[BuiltinMqttBroker]:
    broker = BuiltinMqttBroker(tmp_path)
    yield broker
    broker.kill()


@pytest.fixture
def stages(tmp_path: Path) -> Iterator[Callable[..., StageProcess]]:
    started: list[StageProcess] = []

    def start(name: str, *args: str) -> StageProcess:
        stage = StageProcess(tmp_path, name, *args)
        started.append(stage)
        return stage

    yield start
    for stage in started:
        stage.kill()


def start_bridge(
    stages: Callable[..., StageProcess], mqtt: str, bootstrap: str, *args: str
) -> StageProcess:
    """The bridge, once it has subscribed (before that, mosquitto drops publishes)."""
    bridge = stages("bridge", "--mqtt", mqtt, "--bootstrap", bootstrap, *args)
    bridge.wait_for_output(f"subscribed to {names.MQTT_BRIDGE_SUBSCRIPTION}")
    return bridge


def create_raw_topic(bootstrap: str) -> None:
    with Admin(bootstrap) as admin:
        spec = next(spec for spec in names.TOPICS if spec.name == names.RAW_TOPIC)
        admin.create_topics([NewTopic(spec.name, partitions=spec.partitions)])


def read_raw(bootstrap: str, expected: set[str]) -> dict[str, list[str]]:
    """iot.raw per device (payload hashes in log order), once every hash in
    ``expected`` is there.  Checks each record's key and received-at header."""
    from examples.iot.ledger import payload_sha1

    per_device: dict[str, list[str]] = {}
    seen: set[str] = set()
    with Consumer(bootstrap) as consumer:
        consumer.assign([names.RAW_TOPIC])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + WAIT_S
        while not expected <= seen and time.monotonic() < deadline:
            for records in consumer.getmany(timeout_ms=200).values():
                for record in records:
                    assert record.key is not None
                    device = record.key.decode()
                    headers = dict(record.headers)
                    assert int(headers[names.RECEIVED_NS_HEADER]) > 0
                    digest = payload_sha1(record.value)
                    seen.add(digest)
                    per_device.setdefault(device, []).append(digest)
    missing = expected - seen
    assert not missing, (
        f"{len(missing)} of {len(expected)} publishes never reached iot.raw: {sorted(missing)[:5]}"
    )
    return per_device


def check_raw_against_ledger(bootstrap: str, ledger_path: Path) -> int:
    """Every publish of the ledger is in iot.raw under its device's key, and each
    device's records first appear in send order (records of other ledgers in
    iot.raw are left out of the order check).  Returns the publish count."""
    entries = list(read_ledger(ledger_path))
    assert entries
    expected_order = first_send_order(entries)
    per_device = read_raw(bootstrap, {entry.sha1 for entry in entries})
    for device, order in expected_order.items():
        order_set = set(order)
        first_seen: list[str] = []
        seen: set[str] = set()
        for digest in per_device[device]:
            if digest in order_set and digest not in seen:
                seen.add(digest)
                first_seen.append(digest)
        if first_seen != order:
            seq_of = {entry.sha1: (entry.seq, entry.fault, entry.index) for entry in entries}
            raise AssertionError(
                f"{device}'s records are out of send order in iot.raw:\n"
                f"sent {[seq_of[digest] for digest in order]}\n"
                f"raw  {[seq_of[digest] for digest in per_device[device] if digest in seq_of]}"
            )
    return len(entries)


@needs_mosquitto
def test_mosquitto_restart_mid_stream_loses_nothing(
    broker: BrokerProcess,
    mosquitto: MosquittoProcess,
    stages: Callable[..., StageProcess],
    tmp_path: Path,
) -> None:
    """Proves every simulated publish lands in iot.raw keyed by its device in
    per-device send order, across a mosquitto SIGTERM + restart mid-stream."""
    create_raw_topic(broker.address)
    ledger = tmp_path / "ledger.jsonl"
    bridge = start_bridge(stages, mosquitto.address, broker.address)
    sim = stages("sim", "--mqtt", mosquitto.address, "--ledger", str(ledger), *SIM_ARGS)
    produced = bridge.wait_for_metric("iot_bridge_produced_total", lambda value: value >= 1500)
    mosquitto.restart()
    assert sim.wait() == 0, sim.logs()
    published = check_raw_against_ledger(broker.address, ledger)
    assert produced < published  # the restart really was mid-stream
    assert bridge.metrics()["iot_bridge_mqtt_reconnects_total"] >= 1
    assert bridge.stop() == 0, bridge.logs()


@needs_mosquitto
def test_distributary_outage_stops_acks_and_loses_nothing(
    broker: BrokerProcess,
    mosquitto: MosquittoProcess,
    stages: Callable[..., StageProcess],
    tmp_path: Path,
) -> None:
    """Proves the bridge stops acknowledging MQTT while Distributary is down (its
    in-flight window fills up and stays full, mosquitto holds the rest); that once
    the outage outlasts the delivery timeout it starts over from MQTT's queue; and
    that nothing is lost or reordered once Distributary is back."""
    create_raw_topic(broker.address)
    ledger = tmp_path / "ledger.jsonl"
    max_inflight = 200
    bridge = start_bridge(
        stages, mosquitto.address, broker.address, "--max-inflight", str(max_inflight),
        "--delivery-timeout-ms", "2000",
    )  # fmt: skip
    sim = stages("sim", "--mqtt", mosquitto.address, "--ledger", str(ledger), *SIM_ARGS)
    bridge.wait_for_metric("iot_bridge_produced_total", lambda value: value >= 1000)
    broker.stop()
    bridge.wait_for_metric("iot_bridge_inflight_messages", lambda value: value == max_inflight)
    produced_while_down = bridge.metrics()["iot_bridge_produced_total"]
    bridge.wait_for_metric("iot_bridge_produce_errors_total", lambda value: value >= 1)
    assert bridge.metrics()["iot_bridge_produced_total"] == produced_while_down
    broker.start()
    assert sim.wait() == 0, sim.logs()
    check_raw_against_ledger(broker.address, ledger)
    assert bridge.stop() == 0, bridge.logs()


def test_builtin_broker_fallback_carries_and_queues_for_the_bridge(
    broker: BrokerProcess,
    builtin_mqtt: BuiltinMqttBroker,
    stages: Callable[..., StageProcess],
    tmp_path: Path,
) -> None:
    """Proves the fallback MQTT broker (``mqtt-broker --builtin``, amqtt) carries
    the bridge path end to end: every simulated publish lands in iot.raw keyed
    by its device in per-device send order, both while the bridge is connected
    and for a run sent while it was stopped (its persistent session queued
    them); the broker's log stays a few lines and it exits 0 on SIGTERM."""
    create_raw_topic(broker.address)
    sim_args = ("--devices", "20", "--rate", "20", "--duration", "2")
    bridge = start_bridge(stages, builtin_mqtt.address, broker.address)
    live = tmp_path / "live.jsonl"
    # Two seeds: a seed's malformed payloads are the same bytes in every run.
    sim = stages(
        "sim", "--mqtt", builtin_mqtt.address, "--ledger", str(live), "--seed", "13", *sim_args
    )
    assert sim.wait() == 0, sim.logs()
    check_raw_against_ledger(broker.address, live)
    bridge.wait_for_metric("iot_bridge_inflight_messages", lambda value: value == 0)
    assert bridge.stop() == 0, bridge.logs()
    queued = tmp_path / "queued.jsonl"
    sim = stages(
        "sim", "--mqtt", builtin_mqtt.address, "--ledger", str(queued), "--seed", "14", *sim_args
    )
    assert sim.wait() == 0, sim.logs()
    bridge = start_bridge(stages, builtin_mqtt.address, broker.address)
    check_raw_against_ledger(broker.address, queued)
    bridge.wait_for_metric("iot_bridge_inflight_messages", lambda value: value == 0)
    assert bridge.stop() == 0, bridge.logs()
    assert builtin_mqtt.stop() == 0, builtin_mqtt.logs()
    # The start line and at most a few warnings: nothing per client or message.
    assert len(builtin_mqtt.logs().splitlines()) < 10, builtin_mqtt.logs()


def test_registry_publishes_one_record_per_device(broker: BrokerProcess) -> None:
    """Proves the registry stage writes each simulated device's metadata, keyed by
    device id, to the compacted iot.devices topic, as the simulator's seed defines it."""
    spec = next(spec for spec in names.TOPICS if spec.name == names.DEVICES_TOPIC)
    with Admin(broker.address) as admin:
        admin.create_topics([NewTopic(spec.name, spec.partitions, configs=spec.configs)])
    completed = subprocess.run(
        [sys.executable, "-m", "examples.iot", "registry", "--bootstrap", broker.address,
         "--devices", "30", "--seed", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=WAIT_S, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    records: dict[str, dict[str, object]] = {}
    with Consumer(broker.address) as consumer:
        consumer.assign([names.DEVICES_TOPIC])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + WAIT_S
        while len(records) < 30 and time.monotonic() < deadline:
            for batch in consumer.getmany(timeout_ms=200).values():
                for record in batch:
                    assert record.key is not None
                    records[record.key.decode()] = json.loads(record.value)
    assert records == {
        device_id(index): device_profile(5, index).registry_record() for index in range(30)
    }
