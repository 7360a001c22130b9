"""Generates the exact tables and hex example of docs/protocol.md from the code.

Run ``.venv/bin/python tests/unit/protocol/protocol_doc_tables.py`` to print
them; test_protocol_docs.py checks the doc still contains every one, so the
spec cannot drift from client/protocol/messages.py and client/errors.py.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # when run as a script
    sys.path.insert(0, str(ROOT))

from client import errors  # noqa: E402
from client.protocol.connection import ClientConnection, ServerConnection  # noqa: E402
from client.protocol.messages import (  # noqa: E402
    REQUEST_TYPES,
    RESPONSE_TYPES,
    ApiKey,
    ErrorResponse,
    ProducePartition,
    ProducePartitionResponse,
    ProduceRequest,
    ProduceResponse,
    ProduceTopic,
    ProduceTopicResponse,
)

# A fixed 1-record batch for the worked example's payload: its length is what the
# example's records_bytes declares; its bytes are shown, not checked (they belong
# to docs/record-format.md).
EXAMPLE_BATCH_BYTES = 74
EXAMPLE_TOPIC = "events"


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if hint in (int, str, bool):
        return {int: "int", str: "str", bool: "bool"}[hint]
    if origin is list:
        return f"array of {type_name(arguments[0])}"
    if origin is dict:
        return f"map {type_name(arguments[0])} → {type_name(arguments[1])}"
    if origin is types.UnionType or origin is typing.Union:
        names = [type_name(a) for a in arguments if a is not type(None)]
        nullable = " or nil" if type(None) in arguments else ""
        return " or ".join(names) + nullable
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return hint.__name__
    raise AssertionError(f"no name for {hint!r}")


def default_text(field: msgspec.structs.FieldInfo) -> str:
    if field.default is not msgspec.NODEFAULT:
        value = field.default
        if value is None:
            return "nil"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return f'"{value}"'
        return str(value)
    if field.default_factory is list:
        return "[]"
    if field.default_factory is dict:
        return "{}"
    assert field.default_factory is msgspec.NODEFAULT
    return "required"


def struct_table(cls: type[msgspec.Struct]) -> str:
    """The field table of one Struct: array index, field, type, default."""
    hints = typing.get_type_hints(cls)
    rows = ["| # | field | type | default |", "|---|-------|------|---------|"]
    tag = cls.__struct_config__.tag
    index = 0
    if tag is not None:
        rows.append(f"| 0 | (tag) | int | always {tag} |")
        index = 1
    for field in msgspec.structs.fields(cls):
        rows.append(
            f"| {index} | {field.name} | {type_name(hints[field.name])} | {default_text(field)} |"
        )
        index += 1
    return "\n".join(rows)


def nested_structs(cls: type[msgspec.Struct], found: list[type[msgspec.Struct]]) -> None:
    for hint in typing.get_type_hints(cls).values():
        pending = [hint]
        while pending:
            current = pending.pop()
            pending.extend(typing.get_args(current))
            is_struct = isinstance(current, type) and issubclass(current, msgspec.Struct)
            if is_struct and current not in found:
                found.append(current)
                nested_structs(current, found)


def all_tables() -> dict[str, str]:
    """Every message Struct's table, by class name, in API order."""
    tables: dict[str, str] = {}
    for api_key in ApiKey:
        for cls in (REQUEST_TYPES[api_key], RESPONSE_TYPES[api_key]):
            tables[cls.__name__] = struct_table(cls)
            nested: list[type[msgspec.Struct]] = []
            nested_structs(cls, nested)
            for inner in nested:
                tables.setdefault(inner.__name__, struct_table(inner))
    tables[ErrorResponse.__name__] = struct_table(ErrorResponse)
    return tables


def error_table() -> str:
    rows = ["| code | name | retriable | meaning |", "|-----:|------|-----------|---------|"]
    classes = errors._BY_CODE
    for code in errors.ErrorCode:
        if code == errors.ErrorCode.NONE:
            rows.append("| 0 | NONE | - | success |")
            continue
        cls = classes.get(code, errors.DistributaryError)
        if cls is errors.DistributaryError:
            meaning = "An error with no more specific code."
        else:
            meaning = (cls.__doc__ or "").strip().split("\n")[0].replace("``", "`")
        retriable = "yes" if cls.retriable else "no"
        rows.append(f"| {int(code)} | {code.name} | {retriable} | {meaning} |")
    return "\n".join(rows)


def hex_lines(data: bytes, width: int = 16) -> str:
    return "\n".join(data[i : i + width].hex(" ") for i in range(0, len(data), width))


def example_request() -> ProduceRequest:
    return ProduceRequest(
        acks=1,
        timeout_ms=30_000,
        topics=[ProduceTopic(EXAMPLE_TOPIC, [ProducePartition(0, EXAMPLE_BATCH_BYTES)])],
    )


def example_response() -> ProduceResponse:
    partition = ProducePartitionResponse(
        0, base_offset=42, last_offset=42, log_append_time_ms=-1, log_start_offset=0
    )
    return ProduceResponse([ProduceTopicResponse(EXAMPLE_TOPIC, [partition])])


def worked_example() -> tuple[bytes, bytes]:
    """(request header + body, response frame) of the doc's Produce example: the
    first request on a fresh connection, so correlation id 10."""
    client = ClientConnection()
    correlation_id, request = client.send_request(example_request(), EXAMPLE_BATCH_BYTES)
    assert correlation_id == 10
    response = ServerConnection.encode_response(
        int(ApiKey.PRODUCE), 0, correlation_id, example_response()
    )
    return request, response


def main() -> None:
    for name, table in all_tables().items():
        print(f"#### {name}\n\n{table}\n")
    print(error_table(), "\n")
    request, response = worked_example()
    print(f"request header + body ({len(request)} bytes):\n{hex_lines(request)}\n")
    print(f"response ({len(response)} bytes):\n{hex_lines(response)}")
    try:
        from client.records.builder import build_batch

        batch = build_batch([b"hello"], timestamp_ms=1_700_000_000_000)
        print(f"\nexample batch ({len(batch)} bytes):\n{hex_lines(bytes(batch))}")
    except ImportError as error:
        print(f"(no batch builder: {error})")


if __name__ == "__main__":
    main()
