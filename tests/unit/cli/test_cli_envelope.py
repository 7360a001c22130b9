"""Unit tests for client/cli/envelope.py: the JSON-lines envelope and its exact round trip."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.cli.envelope import EnvelopeError, decode_record, encode_records
from client.cli.publish_input import PublishRecord


@dataclass
class Record:
    offset: int = 7
    timestamp_ms: int = 1_714_564_800_000
    key: bytes | None = b"k"
    value: bytes | None = b"v"
    headers: Sequence[tuple[str, bytes]] = field(default_factory=list)


def test_utf8_record_shape() -> None:
    """Proves a UTF-8 record encodes as the documented object, fields in order, no markers."""
    line = encode_records([Record(headers=[("trace", b"abc")])], "orders", 1)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "topic": "orders",
        "partition": 1,
        "offset": 7,
        "timestamp": 1_714_564_800_000,
        "key": "k",
        "value": "v",
        "headers": [{"name": "trace", "value": "abc"}],
    }
    assert line.startswith(b'{"topic":"orders","partition":1,"offset":7,"timestamp":')


def test_null_and_empty_are_distinct() -> None:
    """Proves a null key/value is JSON null and an empty one is "" (both always present)."""
    document = json.loads(encode_records([Record(key=None, value=b"")], "orders", 1))
    assert document["key"] is None
    assert document["value"] == ""


def test_binary_values_are_base64_with_markers() -> None:
    """Proves non-UTF-8 keys, values and header values are base64 and marked as such."""
    record = Record(key=b"\xff", value=b"\x00\x80", headers=[("bin", b"\xfe"), ("txt", b"ok")])
    document = json.loads(encode_records([record], "orders", 1))
    assert document["key"] == "/w==" and document["key_encoding"] == "base64"
    assert document["value"] == "AIA=" and document["value_encoding"] == "base64"
    assert document["headers"] == [
        {"name": "bin", "value": "/g==", "encoding": "base64"},
        {"name": "txt", "value": "ok"},
    ]


def test_batch_encoding_is_one_line_per_record() -> None:
    """Proves a batch encodes as newline-delimited JSON, one line per record, in order."""
    lines = encode_records([Record(offset=n) for n in range(5)], "orders", 1).splitlines()
    assert [json.loads(line)["offset"] for line in lines] == [0, 1, 2, 3, 4]
    assert encode_records([], "orders", 1) == b""


def test_decode_keeps_timestamp_and_partition_and_ignores_topic_offset() -> None:
    """Proves decoding yields key, value, headers, timestamp and partition."""
    line = encode_records([Record(headers=[("h", b"1")])], "orders", 1)
    assert decode_record(line) == PublishRecord(b"k", b"v", [("h", b"1")], 1_714_564_800_000, 1)


def test_minimal_input_needs_only_a_value() -> None:
    """Proves hand-written lines with just a value (or nothing) are accepted."""
    assert decode_record(b'{"value": "hi"}') == PublishRecord(None, b"hi", [], None, None)
    assert decode_record('{"key":"a","extra":[1,2]}') == PublishRecord(b"a", None, [], None, None)


def test_explicit_utf8_encoding_marker_is_accepted() -> None:
    """Proves "utf8" is an accepted (no-op) encoding marker on input."""
    record = decode_record(b'{"value":"x","value_encoding":"utf8"}')
    assert record.value == b"x"


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b'{"value": 5}',
        b'{"value": "!!", "value_encoding": "base64"}',
        b'{"value": "x", "value_encoding": "rot13"}',
        b'{"headers": [{"name": "a"}]}',
        b"[1, 2]",
    ],
)
def test_bad_lines_raise_envelope_error(line: bytes) -> None:
    """Proves malformed JSON, wrong types, bad base64 and unknown encodings are EnvelopeErrors."""
    with pytest.raises(EnvelopeError):
        decode_record(line)


optional_bytes = st.none() | st.binary(max_size=64) | st.text(max_size=32).map(str.encode)


@given(
    key=optional_bytes,
    value=optional_bytes,
    headers=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=8), st.binary(max_size=16) | st.text().map(str.encode)
        ),
        max_size=4,
    ),
    timestamp_ms=st.integers(min_value=0, max_value=2**62),
)
def test_round_trip_is_exact(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], timestamp_ms: int
) -> None:
    """Proves encode then decode reproduces every key, value and header byte for byte."""
    record = Record(key=key, value=value, headers=headers, timestamp_ms=timestamp_ms)
    decoded = decode_record(encode_records([record], "orders", 1))
    assert decoded.key == key
    assert decoded.value == value
    assert list(decoded.headers) == headers
    assert decoded.timestamp_ms == timestamp_ms
