"""The device simulator: publishes a run of simulated devices over MQTT, paced to
its schedule, and writes the ground-truth ledger.

telemetry.py computes the run (every publish, in send order, deterministic in
the seed); :func:`run` paces the publishes against trio's clock and publishes
each with QoS 1 through a few MQTT connections (the gateway pattern: device
``i`` always goes through connection ``i % connections``, so a device's
readings stay in order).  Each connection has a persistent session
(``clean_session=False``, client id ``iot-sim-<n>``) and reconnects with
backoff; paho re-sends what the MQTT broker had not acknowledged, so a broker
restart loses nothing the simulator can resend.  Each publish is written to
the ledger (ledger.py) as it is handed to the MQTT client, and counted in
``iot_sim_published_total{fault}``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import click
import msgspec
import structlog
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client import CollectorRegistry, Counter, Gauge

from examples.iot import names, stage
from examples.iot.ledger import FAULTS, LedgerWriter
from examples.iot.mqtt_client import BufferedClient, TrioMqttClient, split_address
from examples.iot.telemetry import (
    V1_DEVICES_DEFAULT,
    FaultRates,
    Publish,
    SimConfig,
    device_profile,
    device_profiles,
    generate,
    ledger_meta,
    now_ts,
)

__all__ = [
    "V1_DEVICES_DEFAULT",
    "FaultRates",
    "SimConfig",
    "device_profile",
    "device_profiles",
    "generate",
    "run",
]

log = structlog.get_logger("examples.iot.sim")

# -- the I/O shell ------------------------------------------------------------------------------

CONNECTIONS_DEFAULT: Final = 4
# paho's own cap on QoS 1 publishes on the wire per connection: 0, none.  With a
# cap paho scans every unacknowledged message at each PUBACK (quadratic at
# thousands in flight); OUTSTANDING_PER_CONNECTION_MAX bounds them instead.
INFLIGHT_PER_CONNECTION: Final = 0
# Publishes handed to paho and not yet acknowledged, per connection, before the
# simulator waits: paho numbers them with 16-bit message ids.
OUTSTANDING_PER_CONNECTION_MAX: Final = 50_000
# Publishes handed over per pacing step at most, so acknowledgements are read
# in between when the simulator is behind its schedule.
PUBLISH_BATCH_MAX: Final = 500
CONNECT_TIMEOUT_S_DEFAULT: Final = 30.0
DRAIN_TIMEOUT_S_DEFAULT: Final = 60.0
# While waiting for acknowledgements, how often the backlog of a reconnected
# gateway is handed over again.
BACKLOG_RETRY_S: Final = 0.1


class SimMetrics:
    """``iot_sim_published_total{fault}`` and ``iot_sim_devices``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "iot_sim_published",
            "MQTT publishes handed to the MQTT client, by the fault they carry.",
            ["fault"],
            registry=registry,
        )
        self.devices = Gauge("iot_sim_devices", "Simulated devices.", registry=registry)
        self._by_fault = {fault: self.published.labels(fault=fault) for fault in FAULTS}

    def count(self, faults: dict[str, int]) -> None:
        for fault, count in faults.items():
            self._by_fault[fault].inc(count)


class Gateway:
    """One MQTT connection publishing for a share of the devices.

    While the connection is down (and until paho has re-sent, on the new
    connection, what the broker had not acknowledged) publishes wait in
    :attr:`backlog`: paho would otherwise write a new publish on a reconnecting
    socket ahead of its own re-sends, and reorder a device's readings.
    """

    def __init__(self, number: int, host: str, port: int, rng: random.Random) -> None:
        client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=names.sim_client_id(number),
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        client.max_inflight_messages_set(INFLIGHT_PER_CONNECTION)
        client.max_queued_messages_set(0)
        self.client = client
        self.mqtt = TrioMqttClient(client, host, port, name=names.sim_client_id(number), rng=rng)
        self.mqtt.set_on_publish(self._acknowledged)
        self.outstanding = 0  # handed over and not yet acknowledged by the broker
        self.acknowledged = 0
        self.backlog: deque[tuple[str, bytes]] = deque()
        self._changed = trio.Event()

    def _acknowledged(self, _mid: int) -> None:
        self.outstanding -= 1
        self.acknowledged += 1
        self._changed.set()

    def publish(self, topic: str, payload: bytes) -> None:
        self.outstanding += 1
        if self.backlog or not self.mqtt.connected:
            self.backlog.append((topic, payload))
        else:
            self.client.publish(topic, payload, qos=1)

    def flush_backlog(self) -> None:
        """Hand the backlog to paho if connected (called between paho's calls, so
        after the reconnection's re-sends)."""
        backlog = self.backlog
        publish = self.client.publish
        while backlog and self.mqtt.connected:
            topic, payload = backlog.popleft()
            publish(topic, payload, qos=1)

    def check_invariants(self) -> None:
        assert 0 <= len(self.backlog) <= self.outstanding
        assert self.acknowledged >= 0

    async def wait_outstanding_below(self, limit: int) -> None:
        while self.outstanding >= limit:
            self.flush_backlog()
            with trio.move_on_after(BACKLOG_RETRY_S):
                await self._changed.wait()
            self._changed = trio.Event()


class SimResult(msgspec.Struct, frozen=True):
    published: int
    elapsed_s: float
    behind_s: float  # how far the last publish was behind its schedule


async def run(
    *,
    mqtt_address: str,
    config: SimConfig,
    ledger_path: Path,
    connections: int = CONNECTIONS_DEFAULT,
    registry: CollectorRegistry | None = None,
    stop: trio.Event | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
    drain_timeout_s: float = DRAIN_TIMEOUT_S_DEFAULT,
) -> SimResult:
    """Publish the run of ``config`` paced to its schedule; write the ledger.

    Returns once every publish was acknowledged by the MQTT broker (or
    ``drain_timeout_s`` after the last one) or, early, once ``stop`` is set.
    Raises trio.TooSlowError when no connection is accepted within
    ``connect_timeout_s``; OSError when the ledger cannot be written.
    """
    host, port = split_address(mqtt_address)
    metrics = SimMetrics(registry if registry is not None else CollectorRegistry())
    metrics.devices.set(config.devices)
    stop = stop if stop is not None else trio.Event()
    rng = random.Random(config.seed)
    gateways = [Gateway(number, host, port, rng) for number in range(max(connections, 1))]
    published = 0
    behind_s = 0.0
    async with trio.open_nursery() as nursery:
        for gateway in gateways:
            await nursery.start(gateway.mqtt.run)
        with trio.fail_after(connect_timeout_s):
            for gateway in gateways:
                await gateway.mqtt.wait_connected()
        start = trio.current_time()
        with LedgerWriter(ledger_path, ledger_meta(config)) as ledger:
            batch: list[Publish] = []
            for publish in generate(config):
                due = start + publish.send_s
                if batch and (due > trio.current_time() or len(batch) >= PUBLISH_BATCH_MAX):
                    published += await _send(batch, gateways, ledger, metrics)
                    batch.clear()
                    if stop.is_set():
                        break
                    behind_s = max(trio.current_time() - due, 0.0)
                    await trio.sleep_until(due)
                batch.append(publish)
            else:
                published += await _send(batch, gateways, ledger, metrics)
            ledger.flush()
            with trio.move_on_after(0 if stop.is_set() else drain_timeout_s):
                for gateway in gateways:
                    await gateway.wait_outstanding_below(1)
        for gateway in gateways:
            await gateway.mqtt.disconnect()
        nursery.cancel_scope.cancel()
    elapsed_s = trio.current_time() - start
    log.info("sim done", published=published, elapsed_s=round(elapsed_s, 3), behind_s=behind_s)
    return SimResult(published, elapsed_s, behind_s)


async def _send(
    batch: list[Publish], gateways: list[Gateway], ledger: LedgerWriter, metrics: SimMetrics
) -> int:
    faults: dict[str, int] = {}
    count = len(gateways)
    for gateway in gateways:
        gateway.flush_backlog()
    for publish in batch:
        gateway = gateways[publish.device_index % count]
        if gateway.outstanding >= OUTSTANDING_PER_CONNECTION_MAX:
            await gateway.wait_outstanding_below(OUTSTANDING_PER_CONNECTION_MAX)
        gateway.publish(names.telemetry_topic(publish.entry.device), publish.payload)
        fault = publish.entry.fault
        faults[fault] = faults.get(fault, 0) + 1
    ledger.write(publish.entry for publish in batch)
    metrics.count(faults)
    await trio.lowlevel.checkpoint()
    return len(batch)


def _rate_option(name: str, default: float, what: str) -> Callable[[F], F]:
    return click.option(
        f"--fault-{name}", type=float, default=default, show_default=True, help=what
    )


F = TypeVar("F", bound=Callable[..., Any])
_DEFAULTS: Final = FaultRates()


@click.command("sim")
@stage.mqtt_option
@click.option("--devices", type=int, default=1000, show_default=True)
@click.option("--rate", type=float, default=1.0, show_default=True, help="Readings/s per device.")
@click.option("--duration", type=float, default=120.0, show_default=True, help="Seconds.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--ledger",
    "ledger_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("ledger.jsonl"),
    show_default=True,
)
@click.option("--connections", type=int, default=CONNECTIONS_DEFAULT, show_default=True)
@click.option("--start-ts", type=float, default=None, help="Event time of t=0 (default: now).")
@click.option("--faults", type=click.Choice(["default", "none"]), default="default")
@_rate_option("malformed", _DEFAULTS.malformed, "Share of malformed payloads.")
@_rate_option("out-of-range", _DEFAULTS.out_of_range, "Share of out-of-range values.")
@_rate_option("unknown-version", _DEFAULTS.unknown_version, "Share of unknown schema versions.")
@_rate_option("device-mismatch", _DEFAULTS.device_mismatch, "Share naming another device.")
@_rate_option("late", _DEFAULTS.late, "Share of readings 2-5 min late.")
@_rate_option("out-of-order", _DEFAULTS.out_of_order, "Share sent after their successor.")
@_rate_option("duplicate", _DEFAULTS.duplicate, "Share sent twice.")
@_rate_option("v1-devices", _DEFAULTS.v1_devices, "Share of devices on firmware 1.")
@click.option("--silent-devices", type=int, default=_DEFAULTS.silent_devices, show_default=True)
@click.option("--bursts", type=int, default=_DEFAULTS.bursts, show_default=True)
@stage.metrics_port_option
def command(
    mqtt_address: str,
    devices: int,
    rate: float,
    duration: float,
    seed: int,
    ledger_path: Path,
    connections: int,
    start_ts: float | None,
    faults: str,
    fault_malformed: float,
    fault_out_of_range: float,
    fault_unknown_version: float,
    fault_device_mismatch: float,
    fault_late: float,
    fault_out_of_order: float,
    fault_duplicate: float,
    fault_v1_devices: float,
    silent_devices: int,
    bursts: int,
    metrics_port: int,
) -> None:
    """Simulate devices publishing telemetry over MQTT; write the ledger."""
    rates = FaultRates(
        malformed=fault_malformed,
        out_of_range=fault_out_of_range,
        unknown_version=fault_unknown_version,
        device_mismatch=fault_device_mismatch,
        late=fault_late,
        out_of_order=fault_out_of_order,
        duplicate=fault_duplicate,
        v1_devices=fault_v1_devices,
        silent_devices=silent_devices,
        bursts=bursts,
    )
    if faults == "none":
        rates = rates.none()
    config = SimConfig(
        devices=devices,
        rate_per_s=rate,
        duration_s=duration,
        seed=seed,
        start_ts=now_ts() if start_ts is None else start_ts,
        faults=rates,
    )
    registry = CollectorRegistry()
    stage.serve_metrics(registry, port=metrics_port)

    async def main(stop: trio.Event) -> None:
        result = await run(
            mqtt_address=mqtt_address,
            config=config,
            ledger_path=ledger_path,
            connections=connections,
            registry=registry,
            stop=stop,
        )
        print(
            f"published {result.published} in {result.elapsed_s:.1f} s "
            f"({result.published / max(result.elapsed_s, 1e-9):.0f}/s), "
            f"at most {result.behind_s:.3f} s behind schedule",
            flush=True,
        )

    stage.run_stage(main)
