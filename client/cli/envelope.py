"""The JSON-lines envelope of ``tail --json`` and ``publish --json`` (docs/cli.md).

One JSON object per line::

    {"topic": "orders", "partition": 0, "offset": 42, "timestamp": 1714564800000,
     "key": "user-7", "value": "{\\"total\\": 12}",
     "headers": [{"name": "trace", "value": "abc"}]}

Keys, values and header values are JSON strings when their bytes are valid
UTF-8.  Otherwise they are base64 and marked: ``"key_encoding": "base64"``,
``"value_encoding": "base64"``, or ``"encoding": "base64"`` inside a header
object.  A null key or value is JSON ``null``; an empty one is ``""``.  So
``tail --json | publish --json`` reproduces every key, value and header byte
for byte.  On input only ``value`` is needed: topic and offset are ignored,
``timestamp`` (when present) becomes the record's timestamp, and ``partition``
is used only when ``publish --keep-partition`` asks for it.

Encoding is batched (``msgspec.json.Encoder.encode_lines``: one C call per
fetched batch); decoding is one typed ``msgspec`` call per line.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from client.cli.publish_input import Header, PublishRecord
from client.cli.record_format import RecordView

Encoding = Literal["utf8", "base64"]
BASE64: Final = "base64"


class EnvelopeError(ValueError):
    """An input line is not a valid envelope (bad JSON, wrong types, bad base64)."""


class JsonHeader(msgspec.Struct, omit_defaults=True):
    name: str
    value: str
    encoding: Encoding | None = None


class JsonRecord(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What ``tail --json`` writes.  The first seven fields are always present."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: str | None
    value: str | None
    headers: list[JsonHeader]
    key_encoding: Encoding | None = None
    value_encoding: Encoding | None = None


class JsonInput(msgspec.Struct, kw_only=True):
    """What ``publish --json`` reads: every field optional, unknown fields ignored."""

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp: int | None = None
    key: str | None = None
    value: str | None = None
    headers: list[JsonHeader] = []
    key_encoding: Encoding | None = None
    value_encoding: Encoding | None = None


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(JsonInput)


def _text(data: bytes) -> tuple[str, Encoding | None]:
    """Bytes -> (JSON string, None) when UTF-8, else (base64 text, "base64")."""
    try:
        return data.decode(), None
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), BASE64


def to_json_record(record: RecordView, topic: str, partition: int) -> JsonRecord:
    """One consumed record of ``topic``/``partition`` as its envelope Struct."""
    key_text: str | None = None
    key_encoding: Encoding | None = None
    value_text: str | None = None
    value_encoding: Encoding | None = None
    if record.key is not None:
        key_text, key_encoding = _text(bytes(record.key))
    if record.value is not None:
        value_text, value_encoding = _text(bytes(record.value))
    headers: list[JsonHeader] = []
    for name, header_value in record.headers:
        text, encoding = _text(bytes(header_value))
        headers.append(JsonHeader(name, text, encoding))
    return JsonRecord(
        topic=topic,
        partition=partition,
        offset=record.offset,
        timestamp=record.timestamp_ms,
        key=key_text,
        value=value_text,
        headers=headers,
        key_encoding=key_encoding,
        value_encoding=value_encoding,
    )


def encode_records(records: Iterable[RecordView], topic: str, partition: int) -> bytes:
    """Newline-delimited JSON for records of one partition (each line ends with ``\\n``)."""
    return _encoder.encode_lines([to_json_record(record, topic, partition) for record in records])


def _bytes(text: str | None, encoding: Encoding | None, what: str) -> bytes | None:
    if text is None:
        return None
    if encoding == BASE64:
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as error:
            raise EnvelopeError(f"{what} is not valid base64: {error}") from None
    return text.encode()


def decode_record(line: bytes | str) -> PublishRecord:
    """One envelope line -> the record to publish.  Raises EnvelopeError."""
    try:
        item = _decoder.decode(line)
    except msgspec.DecodeError as error:
        raise EnvelopeError(str(error)) from None
    key = _bytes(item.key, item.key_encoding, "key")
    value = _bytes(item.value, item.value_encoding, "value")
    headers: list[Header] = []
    for header in item.headers:
        header_value = _bytes(header.value, header.encoding, f"header {header.name!r}")
        assert header_value is not None
        headers.append((header.name, header_value))
    return PublishRecord(key, value, headers, item.timestamp, item.partition)
