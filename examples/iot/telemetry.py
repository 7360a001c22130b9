"""The simulated devices, without I/O: every publish of a run, in send order.

:func:`generate` takes a :class:`SimConfig` (seed, devices, rate, duration,
start time, fault rates) and yields every MQTT publish of the run in send order,
each with its scheduled send time (seconds after the start), payload and ledger
entry.  The same config gives the same publishes, byte for byte, so a ledger is
reproducible and tests need no network.  sim.py paces and publishes them.

Each device sends a reading every ``1 / rate`` seconds from a random phase:
temperature (a per-device baseline, a daily cycle compressed to an hour, slow
drift, noise, rare spikes above the device's alert threshold), humidity
(inversely following temperature) and a draining battery.  Firmware 1 devices
(10 % by default) send the old payload shape.  The fault menu, per reading:
malformed bytes, out-of-range values, an unknown schema version, a device id
that does not match the topic (off by default), a late event time (2-5 min
old), an out-of-order pair (reading n held back and sent just after n+1), and a
duplicate (the same bytes sent twice in a row); per run: silent devices (stop
at a third of the run) and one burst (a gateway holds 5 s of a tenth of the
devices' readings, then flushes them).  Payload shapes: IOT_PLAN.md and
schema.py; every payload is byte-unique except deliberate duplicates.

Randomness: one ``random.Random`` per device and purpose, seeded from strings
like ``"{seed}/readings/{index}"``, so a device's run does not depend on how
many other devices there are.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Iterator
from typing import Any, Final, NamedTuple

import msgspec

from examples.iot.ledger import (
    DLQ_REASON_OF_FAULT,
    FAULT_BURST,
    FAULT_DEVICE_MISMATCH,
    FAULT_DUPLICATE,
    FAULT_LATE,
    FAULT_MALFORMED,
    FAULT_NONE,
    FAULT_OUT_OF_ORDER,
    FAULT_OUT_OF_RANGE,
    FAULT_UNKNOWN_VERSION,
    LedgerEntry,
    LedgerMeta,
    Values,
    payload_sha1,
)

SITES: Final = 20
MODELS: Final = ("TH-100", "TH-200", "EnviroSense-3")
# The daily temperature cycle, compressed so that a demo of minutes shows it.
CYCLE_S: Final = 3600.0
SPIKE_RATE: Final = 0.002  # valid readings above the device's temp_max_c
LATE_AGE_S: Final = (120.0, 300.0)
BURST_FROM_FRACTION: Final = 0.5
SILENT_FROM_FRACTION: Final = 1 / 3


V1_DEVICES_DEFAULT: Final = 0.10


class FaultRates(msgspec.Struct, frozen=True):
    """Per-reading fault probabilities, and the per-run faults."""

    malformed: float = 0.01
    out_of_range: float = 0.01
    unknown_version: float = 0.005
    device_mismatch: float = 0.0
    late: float = 0.005
    out_of_order: float = 0.01
    duplicate: float = 0.02
    v1_devices: float = V1_DEVICES_DEFAULT
    silent_devices: int = 1
    bursts: int = 1
    burst_s: float = 5.0

    def none(self) -> FaultRates:
        """No faults at all (v1 devices are not a fault and stay)."""
        return FaultRates(0, 0, 0, 0, 0, 0, 0, self.v1_devices, 0, 0, self.burst_s)


class SimConfig(msgspec.Struct, frozen=True):
    devices: int
    rate_per_s: float
    duration_s: float
    seed: int
    start_ts: float
    faults: FaultRates = FaultRates()


class DeviceProfile(msgspec.Struct, frozen=True):
    """What the registry says about a device (iot.devices), plus its signal shape."""

    device: str
    site: str
    model: str
    firmware: int
    temp_max_c: float
    base_temperature_c: float
    base_humidity_pct: float
    battery_start_v: float
    drift_c_per_s: float
    cycle_phase: float

    def registry_record(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "site": self.site,
            "model": self.model,
            "firmware": self.firmware,
            "temp_max_c": self.temp_max_c,
        }


def device_id(index: int) -> str:
    return f"dev-{index:05d}"


def device_profile(seed: int, index: int, v1_fraction: float = V1_DEVICES_DEFAULT) -> DeviceProfile:
    """Device ``index``'s metadata and signal shape; a function of the seed only."""
    rng = random.Random(f"{seed}/profile/{index}")
    base = round(rng.uniform(16.0, 28.0), 2)
    return DeviceProfile(
        device=device_id(index),
        site=f"site-{rng.randrange(SITES):02d}",
        model=rng.choice(MODELS),
        firmware=1 if rng.random() < v1_fraction else 2,
        temp_max_c=round(base + rng.uniform(8.0, 12.0), 1),
        base_temperature_c=base,
        base_humidity_pct=rng.uniform(30.0, 70.0),
        battery_start_v=rng.uniform(3.9, 4.2),
        drift_c_per_s=rng.uniform(-2e-4, 2e-4),
        cycle_phase=rng.random(),
    )


def device_profiles(
    seed: int, devices: int, v1_fraction: float = V1_DEVICES_DEFAULT
) -> list[DeviceProfile]:
    return [device_profile(seed, index, v1_fraction) for index in range(devices)]


def silent_device_indexes(config: SimConfig) -> list[int]:
    count = min(config.faults.silent_devices, config.devices)
    return sorted(random.Random(f"{config.seed}/silent").sample(range(config.devices), count))


def burst_device_indexes(config: SimConfig) -> list[int]:
    """A tenth of the devices (at least one), the group one gateway holds back."""
    if config.faults.bursts <= 0 or config.devices == 0:
        return []
    group = random.Random(f"{config.seed}/burst").randrange(10)
    members = [index for index in range(config.devices) if index % 10 == group]
    return members or [0]


def ledger_meta(config: SimConfig) -> LedgerMeta:
    faults = config.faults
    return LedgerMeta(
        devices=config.devices,
        rate_per_s=config.rate_per_s,
        duration_s=config.duration_s,
        seed=config.seed,
        start_ts=config.start_ts,
        fault_rates={name: float(getattr(faults, name)) for name in FaultRates.__struct_fields__},
        silent_devices=[device_id(index) for index in silent_device_indexes(config)],
        silent_from_s=config.duration_s * SILENT_FROM_FRACTION,
        burst_devices=[device_id(index) for index in burst_device_indexes(config)],
        burst_from_s=config.duration_s * BURST_FROM_FRACTION,
        burst_s=faults.burst_s,
    )


class Publish(NamedTuple):
    """One MQTT publish: when (seconds after the start), by which device, what."""

    send_s: float
    device_index: int
    order: int  # per device, breaks ties in send order
    payload: bytes
    entry: LedgerEntry  # ``index`` is set by generate()


_encoder: Final = msgspec.json.Encoder()


class _Reading(NamedTuple):
    seq: int
    ts: float
    temperature_c: float
    humidity_pct: float
    battery_v: float


def _v2_body(device: str, reading: _Reading, version: int | None = 2) -> dict[str, Any]:
    body: dict[str, Any] = {} if version is None else {"v": version}
    body.update(
        device=device,
        seq=reading.seq,
        ts=round(reading.ts, 3),
        temperature_c=reading.temperature_c,
        humidity_pct=reading.humidity_pct,
        battery_v=reading.battery_v,
    )
    return body


def _v1_body(device: str, reading: _Reading) -> dict[str, Any]:
    return {
        "v": 1,
        "id": device,
        "n": reading.seq,
        "t": round(reading.ts * 1000),
        "temp_f": round(reading.temperature_c * 9 / 5 + 32, 2),
        "hum": reading.humidity_pct,
        "bat_mv": round(reading.battery_v * 1000),
    }


def _decoded(body: dict[str, Any]) -> tuple[float, Values]:
    """What a correct validator reads from a valid body: (ts, values)."""
    if body["v"] == 1:
        return body["t"] / 1000, Values(
            temperature_c=(body["temp_f"] - 32) * 5 / 9,
            humidity_pct=body["hum"],
            battery_v=body["bat_mv"] / 1000,
        )
    return body["ts"], Values(body["temperature_c"], body["humidity_pct"], body["battery_v"])


class _DeviceRun:
    """One device's readings over the run, as publishes in its own send order."""

    def __init__(
        self, config: SimConfig, profile: DeviceProfile, index: int, meta: LedgerMeta
    ) -> None:
        self.config = config
        self.profile = profile
        self.index = index
        self.rng = random.Random(f"{config.seed}/readings/{index}")
        self.silent_from_s = (
            meta.silent_from_s if profile.device in meta.silent_devices else math.inf
        )
        in_burst = profile.device in meta.burst_devices
        self.burst_from_s = meta.burst_from_s if in_burst else math.inf
        self.burst_until_s = meta.burst_from_s + meta.burst_s if in_burst else math.inf
        self.order = 0

    def _measure(self, seq: int, t_s: float) -> _Reading:
        profile, rng = self.profile, self.rng
        ts = self.config.start_ts + t_s
        cycle = math.sin(2 * math.pi * (ts / CYCLE_S + profile.cycle_phase))
        temperature = profile.base_temperature_c + 3.0 * cycle + profile.drift_c_per_s * t_s
        temperature += rng.gauss(0.0, 0.3)
        if rng.random() < SPIKE_RATE:
            temperature = profile.temp_max_c + rng.uniform(1.0, 8.0)
        humidity = profile.base_humidity_pct - 0.8 * (temperature - profile.base_temperature_c)
        humidity = min(max(humidity + rng.gauss(0.0, 1.0), 5.0), 95.0)
        battery = max(profile.battery_start_v - 3e-5 * t_s + rng.gauss(0.0, 0.003), 3.0)
        return _Reading(seq, ts, round(temperature, 2), round(humidity, 1), round(battery, 3))

    def _publish(
        self, send_s: float, seq: int, ts: float, fault: str, payload: bytes, values: Values | None
    ) -> Publish:
        self.order += 1
        entry = LedgerEntry(
            index=-1,
            sent_s=round(send_s, 6),
            device=self.profile.device,
            seq=seq,
            ts=ts,
            fault=fault,
            firmware=self.profile.firmware,
            sha1=payload_sha1(payload),
            reason=DLQ_REASON_OF_FAULT.get(fault, ""),
            values=values,
        )
        return Publish(send_s, self.index, self.order, payload, entry)

    @staticmethod
    def _at(publish: Publish, send_s: float) -> Publish:
        """``publish`` sent at ``send_s`` (a held reading goes out later than planned)."""
        if publish.send_s == send_s:
            return publish
        entry = msgspec.structs.replace(publish.entry, sent_s=round(send_s, 6))
        return publish._replace(send_s=send_s, entry=entry)

    def _body(self, reading: _Reading) -> dict[str, Any]:
        if self.profile.firmware == 1:
            return _v1_body(self.profile.device, reading)
        return _v2_body(self.profile.device, reading)

    def _faulty(self, fault: str, reading: _Reading) -> bytes:
        rng, device = self.rng, self.profile.device
        if fault == FAULT_MALFORMED:
            body = self._body(reading)
            variant = rng.randrange(4)
            if variant == 0:
                return b"\xfe\xff" + f"garbage {device} {reading.seq} {rng.random()}".encode()
            if variant == 1:
                encoded = _encoder.encode(body)
                return encoded[: len(encoded) // 2]
            field = "temp_f" if "temp_f" in body else "temperature_c"
            if variant == 2:
                body[field] = str(body[field])  # a string where a number belongs
            else:
                del body["hum" if "hum" in body else "humidity_pct"]
            return _encoder.encode(body)
        if fault == FAULT_OUT_OF_RANGE:
            which = rng.randrange(3)
            temperature, humidity, battery = (
                reading.temperature_c,
                reading.humidity_pct,
                reading.battery_v,
            )
            if which == 0:
                temperature = round(rng.choice((rng.uniform(95, 150), rng.uniform(-90, -50))), 2)
            elif which == 1:
                humidity = round(rng.uniform(105, 150), 1)
            else:
                battery = round(rng.choice((rng.uniform(0.5, 1.8), rng.uniform(4.7, 6.0))), 3)
            return _encoder.encode(
                self._body(
                    reading._replace(
                        temperature_c=temperature, humidity_pct=humidity, battery_v=battery
                    )
                )
            )
        if fault == FAULT_UNKNOWN_VERSION:
            version = 3 if rng.random() < 0.5 else None
            return _encoder.encode(_v2_body(device, reading, version))
        assert fault == FAULT_DEVICE_MISMATCH, fault
        other = device_id((self.index + 1) % max(self.config.devices, 2))
        body = self._body(reading)
        body["id" if "id" in body else "device"] = other
        return _encoder.encode(body)

    def publishes(self) -> Iterator[Publish]:
        config, faults, rng = self.config, self.config.faults, self.rng
        period_s = 1.0 / config.rate_per_s
        phase_s = rng.uniform(0.0, period_s)
        invalid = (
            (FAULT_MALFORMED, faults.malformed),
            (FAULT_OUT_OF_RANGE, faults.out_of_range),
            (FAULT_UNKNOWN_VERSION, faults.unknown_version),
            (FAULT_DEVICE_MISMATCH, faults.device_mismatch),
        )
        held: list[Publish] = []  # out-of-order readings waiting for the next slot
        count = max(0, math.ceil((config.duration_s - phase_s) / period_s))
        for seq in range(count):
            t_s = phase_s + seq * period_s
            if t_s >= self.silent_from_s:
                break
            send_s = self.burst_until_s if self.burst_from_s <= t_s < self.burst_until_s else t_s
            reading = self._measure(seq, t_s)
            draw = rng.random()
            fault = FAULT_NONE
            for kind, rate in invalid:
                if draw < rate:
                    fault = kind
                    break
                draw -= rate
            batch: list[Publish] = []
            if fault != FAULT_NONE:
                batch.append(
                    self._publish(
                        send_s, seq, round(reading.ts, 3), fault, self._faulty(fault, reading), None
                    )
                )
            else:
                late = seq >= 2 and draw < faults.late
                if late:
                    fault = FAULT_LATE
                    reading = reading._replace(ts=reading.ts - rng.uniform(*LATE_AGE_S))
                elif send_s != t_s:
                    fault = FAULT_BURST
                body = self._body(reading)
                payload = _encoder.encode(body)
                ts, values = _decoded(body)
                if not late and rng.random() < faults.out_of_order and seq + 1 < count:
                    held.append(self._publish(send_s, seq, ts, FAULT_OUT_OF_ORDER, payload, values))
                    continue
                batch.append(self._publish(send_s, seq, ts, fault, payload, values))
                if rng.random() < faults.duplicate:
                    batch.append(self._publish(send_s, seq, ts, FAULT_DUPLICATE, payload, values))
            for publish in batch + held:
                yield self._at(publish, send_s)
            held.clear()
        for publish in held:
            yield publish


def generate(config: SimConfig) -> Iterator[Publish]:
    """Every publish of the run in send order, ledger indexes set (see the module
    docstring).  Deterministic in ``config``."""
    meta = ledger_meta(config)
    runs = [
        _DeviceRun(
            config, device_profile(config.seed, index, config.faults.v1_devices), index, meta
        )
        for index in range(config.devices)
    ]
    merged = heapq.merge(*(run.publishes() for run in runs))
    for index, publish in enumerate(merged):
        yield publish._replace(entry=msgspec.structs.replace(publish.entry, index=index))


def now_ts() -> float:
    """The wall clock in epoch seconds, rounded to the millisecond (a run's start)."""
    return round(time.time(), 3)
