"""examples/iot/schema.py: v2 decoded, v1 upgraded, every reject reason typed and one line."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from examples.iot import names
from examples.iot.schema import (
    DETAIL_CHARS_MAX,
    Reading,
    Rejection,
    decode_payload,
    reading_decoder,
    reading_encoder,
)

V2 = {
    "v": 2,
    "device": "dev-00017",
    "seq": 123,
    "ts": 1765000000.125,
    "temperature_c": 21.5,
    "humidity_pct": 40.1,
    "battery_v": 3.71,
}
V1 = {
    "v": 1,
    "id": "dev-00017",
    "n": 123,
    "t": 1765000000125,
    "temp_f": 70.7,
    "hum": 40.1,
    "bat_mv": 3710,
}


def payload(document: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**document, **changes}).encode()


def rejected(data: bytes, key: str | None = "dev-00017") -> Rejection:
    result = decode_payload(data, key)
    assert isinstance(result, Rejection), result
    assert "\n" not in result.detail and 0 < len(result.detail) <= DETAIL_CHARS_MAX
    return result


def test_v2_payload_decodes_to_the_reading() -> None:
    """Proves a current-firmware payload becomes a Reading with the same values."""
    assert decode_payload(payload(V2), "dev-00017") == Reading(
        "dev-00017", 123, 1765000000.125, 21.5, 40.1, 3.71, source_version=2
    )


def test_v1_payload_is_upgraded_to_v2_units() -> None:
    """Proves an old-firmware payload is upgraded: Celsius, volts, seconds, seq from n."""
    reading = decode_payload(payload(V1), "dev-00017")
    assert isinstance(reading, Reading)
    assert reading.device == "dev-00017" and reading.seq == 123
    assert reading.ts == 1765000000.125
    assert reading.temperature_c == (70.7 - 32) * 5 / 9
    assert reading.humidity_pct == 40.1
    assert reading.battery_v == 3.71
    assert reading.source_version == 1


def test_reading_round_trips_through_its_json() -> None:
    """Proves what validate writes to iot.valid decodes back to the same Reading."""
    reading = decode_payload(payload(V1), "dev-00017")
    assert isinstance(reading, Reading)
    assert reading_decoder.decode(reading_encoder.encode(reading)) == reading


@pytest.mark.parametrize(
    "data",
    [
        b"not json at all",
        payload(V2)[:-10],  # truncated
        b"[1, 2, 3]",
        payload(V2, seq="123"),  # wrong type
        payload(V2, seq=1.5),
        payload(V1, temp_f="hot"),
        json.dumps({k: v for k, v in V2.items() if k != "battery_v"}).encode(),
        json.dumps({k: v for k, v in V1.items() if k != "n"}).encode(),
        b"\xff\xfe\x00garbage",
        b"",
    ],
)
def test_malformed_payloads_are_rejected_as_malformed(data: bytes) -> None:
    """Proves non-JSON, truncated, wrongly typed and incomplete payloads are malformed."""
    assert rejected(data).reason == names.DLQ_MALFORMED


@pytest.mark.parametrize(
    "data", [payload(V2, v=3), payload(V2, v="2"), payload(V2, v=True), b'{"device": "x"}']
)
def test_unknown_or_missing_versions_are_rejected(data: bytes) -> None:
    """Proves a version other than the integers 1 and 2 (or none) is unknown_schema_version."""
    assert rejected(data).reason == names.DLQ_UNKNOWN_SCHEMA_VERSION


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (payload(V2, temperature_c=85.5), "temperature_c"),
        (payload(V2, temperature_c=-40.01), "temperature_c"),
        (payload(V2, humidity_pct=100.5), "humidity_pct"),
        (payload(V2, humidity_pct=-1), "humidity_pct"),
        (payload(V2, battery_v=1.9), "battery_v"),
        (payload(V2, battery_v=4.6), "battery_v"),
        (payload(V1, temp_f=200.0), "temperature_c"),  # 93.3 C once upgraded
        (payload(V1, bat_mv=5000), "battery_v"),
        (payload(V2, temperature_c=float("nan")), "temperature_c"),  # Python's NaN token
        (payload(V2, humidity_pct=float("inf")), "humidity_pct"),
        (payload(V2).replace(b"21.5", b"1e999"), "temperature_c"),
    ],
)
def test_out_of_range_values_are_rejected_with_the_field(data: bytes, field: str) -> None:
    """Proves each range bound (also after the v1 upgrade, and NaN/inf) is out_of_range."""
    rejection = rejected(data)
    assert rejection.reason == names.DLQ_OUT_OF_RANGE
    assert rejection.detail.startswith(field)


def test_range_bounds_are_inclusive() -> None:
    """Proves values exactly on the bounds are valid."""
    data = payload(V2, temperature_c=-40, humidity_pct=100, battery_v=4.5)
    assert isinstance(decode_payload(data, "dev-00017"), Reading)


@pytest.mark.parametrize("key", ["dev-00018", None])
def test_device_other_than_the_record_key_is_a_mismatch(key: str | None) -> None:
    """Proves a payload whose device is not the record key (its MQTT topic) is rejected."""
    assert rejected(payload(V2), key).reason == names.DLQ_DEVICE_MISMATCH
    assert rejected(payload(V1), key).reason == names.DLQ_DEVICE_MISMATCH


def test_long_errors_become_one_short_line() -> None:
    """Proves a rejection detail stays one line within DETAIL_CHARS_MAX."""
    long_version = "x\n" * 500
    rejection = rejected(payload(V2, v=long_version))
    assert rejection.reason == names.DLQ_UNKNOWN_SCHEMA_VERSION


def test_reading_is_a_msgspec_struct() -> None:
    """Proves the valid-record schema is a msgspec Struct (decoded in C downstream)."""
    assert issubclass(Reading, msgspec.Struct)
