"""Device readings: the payload schemas devices send, and the one the pipeline uses.

Devices publish JSON.  Current firmware sends schema version 2
(``{"v":2,"device":..,"seq":..,"ts":..,"temperature_c":..,"humidity_pct":..,
"battery_v":..}``); old firmware sends version 1 (``{"v":1,"id":..,"n":..,"t":<ms>,
"temp_f":..,"hum":..,"bat_mv":..}``), which is *upgraded* to a :class:`Reading`
(Celsius, volts, seconds), not rejected.

:func:`decode_payload` turns one payload into a :class:`Reading` or a
:class:`Rejection` with a typed reason and a one-line detail.  The work per
payload is one msgspec call into a tagged union of the two versions (the ``v``
field is the tag), so the fields are checked in C; only when that fails does a
second look (Python's lenient ``json`` module, which also reads ``NaN``,
``Infinity`` and ``1e999``) tell an unknown version from a malformed payload or
an out-of-range number.  Then Python checks the ranges and that the payload's device
is the record's key (the device of the MQTT topic it came from).

Valid readings travel on ``iot.valid`` as the msgspec JSON of :class:`Reading`
(:data:`reading_encoder` / :data:`reading_decoder`).
"""

from __future__ import annotations

import json
import math
from typing import Final

import msgspec

from examples.iot.names import (
    DLQ_DEVICE_MISMATCH,
    DLQ_MALFORMED,
    DLQ_OUT_OF_RANGE,
    DLQ_UNKNOWN_SCHEMA_VERSION,
)

CURRENT_SCHEMA_VERSION: Final = 2
KNOWN_SCHEMA_VERSIONS: Final = (1, 2)

# Plausible sensor ranges (inclusive).  Outside them a reading is dead-lettered
# as out_of_range; NaN and infinities are outside every range.
TEMPERATURE_C_RANGE: Final = (-40.0, 85.0)  # the usual industrial sensor rating
HUMIDITY_PCT_RANGE: Final = (0.0, 100.0)
BATTERY_V_RANGE: Final = (2.0, 4.5)  # a Li-ion cell: flat below 2 V, overcharged above 4.5 V

# A rejection detail is one line of at most this many characters.
DETAIL_CHARS_MAX: Final = 200


class PayloadV2(msgspec.Struct, tag_field="v", tag=2, frozen=True):
    """What current firmware sends (``ts``: the device clock, epoch seconds)."""

    device: str
    seq: int
    ts: float
    temperature_c: float
    humidity_pct: float
    battery_v: float


class PayloadV1(msgspec.Struct, tag_field="v", tag=1, frozen=True):
    """What old firmware sends: ``t`` in epoch milliseconds, Fahrenheit, millivolts."""

    id: str
    n: int
    t: int
    temp_f: float
    hum: float
    bat_mv: float


class Reading(msgspec.Struct, frozen=True, gc=False):
    """A valid reading in the pipeline's schema (version 2 units).

    ``source_version``: the schema version the device sent (1: upgraded).
    """

    device: str
    seq: int
    ts: float
    temperature_c: float
    humidity_pct: float
    battery_v: float
    source_version: int = CURRENT_SCHEMA_VERSION


class Rejection(msgspec.Struct, frozen=True):
    """Why a payload is dead-lettered: ``reason`` is one of names.DLQ_REASONS,
    ``detail`` a single line for a person."""

    reason: str
    detail: str


_payload_decoder: Final = msgspec.json.Decoder(PayloadV1 | PayloadV2)
reading_encoder: Final = msgspec.json.Encoder()
reading_decoder: Final = msgspec.json.Decoder(Reading)


def one_line(text: str) -> str:
    """``text`` on one line, at most DETAIL_CHARS_MAX characters."""
    flat = " ".join(text.split())
    if len(flat) > DETAIL_CHARS_MAX:
        flat = flat[: DETAIL_CHARS_MAX - 3] + "..."
    return flat


def upgrade_v1(payload: PayloadV1) -> Reading:
    """A version 1 payload in version 2 units: Celsius from Fahrenheit, volts from
    millivolts, seconds from milliseconds."""
    return Reading(
        device=payload.id,
        seq=payload.n,
        ts=payload.t / 1000,
        temperature_c=(payload.temp_f - 32) * 5 / 9,
        humidity_pct=payload.hum,
        battery_v=payload.bat_mv / 1000,
        source_version=1,
    )


def _second_look(payload: bytes, error: msgspec.MsgspecError) -> Reading | Rejection:
    """A payload the union refused: an unknown version, malformed, or JSON that only
    Python's lenient parser reads (``NaN``, ``Infinity``, ``1e999``: out of range)."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return Rejection(DLQ_MALFORMED, one_line(str(error)))
    if not isinstance(document, dict):
        return Rejection(DLQ_MALFORMED, one_line(str(error)))
    version = document.get("v")
    if type(version) is not int or version not in KNOWN_SCHEMA_VERSIONS:
        if version is None:
            return Rejection(DLQ_UNKNOWN_SCHEMA_VERSION, "no schema version field `v`")
        return Rejection(
            DLQ_UNKNOWN_SCHEMA_VERSION, one_line(f"unknown schema version v={version!r}")
        )
    try:
        return _to_reading(msgspec.convert(document, PayloadV1 | PayloadV2))
    except msgspec.MsgspecError:
        return Rejection(DLQ_MALFORMED, one_line(f"v{version} payload: {error}"))


def _to_reading(decoded: PayloadV1 | PayloadV2) -> Reading:
    if type(decoded) is PayloadV2:
        return Reading(
            decoded.device,
            decoded.seq,
            decoded.ts,
            decoded.temperature_c,
            decoded.humidity_pct,
            decoded.battery_v,
        )
    assert type(decoded) is PayloadV1, type(decoded)
    return upgrade_v1(decoded)


def _range_problem(reading: Reading) -> str | None:
    """The first value outside its range, as a detail line; None when all are in."""
    low, high = TEMPERATURE_C_RANGE
    if not low <= reading.temperature_c <= high:  # NaN fails every comparison
        return f"temperature_c={reading.temperature_c!r} outside [{low:g}, {high:g}]"
    low, high = HUMIDITY_PCT_RANGE
    if not low <= reading.humidity_pct <= high:
        return f"humidity_pct={reading.humidity_pct!r} outside [{low:g}, {high:g}]"
    low, high = BATTERY_V_RANGE
    if not low <= reading.battery_v <= high:
        return f"battery_v={reading.battery_v!r} outside [{low:g}, {high:g}]"
    if not math.isfinite(reading.ts):
        return f"ts={reading.ts!r} is not a finite time"
    if reading.seq < 0:
        return f"seq={reading.seq} is negative"
    return None


def decode_payload(payload: bytes, key_device: str | None) -> Reading | Rejection:
    """Decode one device payload (the value of an ``iot.raw`` record whose key is
    ``key_device``) into a Reading, or say why not.  Never raises for bad input."""
    try:
        reading: Reading | Rejection = _to_reading(_payload_decoder.decode(payload))
    except msgspec.MsgspecError as error:
        reading = _second_look(payload, error)
        if type(reading) is Rejection:
            return reading
    assert type(reading) is Reading
    problem = _range_problem(reading)
    if problem is not None:
        return Rejection(DLQ_OUT_OF_RANGE, problem)
    if reading.device != key_device:
        return Rejection(
            DLQ_DEVICE_MISMATCH,
            one_line(f"payload device {reading.device!r} != record key {key_device!r}"),
        )
    return reading


class WindowAggregate(msgspec.Struct, frozen=True, gc=False):
    """One device's closed one-minute window on ``iot.agg.1m`` (aggregate.py),
    enriched with the device's ``site`` and ``model`` from ``iot.devices`` (None:
    the registry does not know the device)."""

    device: str
    window_start: int
    count: int
    temperature_c_min: float
    temperature_c_max: float
    temperature_c_mean: float
    humidity_pct_mean: float
    site: str | None = None
    model: str | None = None


class Alert(msgspec.Struct, frozen=True, gc=False):
    """An alert on ``iot.alerts`` (alerts.py).  ``rule``: ``temperature_high``
    (``alert_key`` the reading's seq, ``value`` its temperature, ``threshold`` the
    device's temp_max_c) or ``device_silent`` (``alert_key`` the last seq seen,
    ``value`` the seconds of silence, ``threshold`` the silent-after setting).
    ``ts``: the reading's event time, or the wall time the silence was noticed."""

    device: str
    rule: str
    alert_key: int
    ts: float
    value: float
    threshold: float


ALERT_TEMPERATURE_HIGH: Final = "temperature_high"
ALERT_DEVICE_SILENT: Final = "device_silent"

aggregate_decoder: Final = msgspec.json.Decoder(WindowAggregate)
alert_decoder: Final = msgspec.json.Decoder(Alert)
