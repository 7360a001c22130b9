"""Hypothesis strategies for every wire message, derived from the Struct definitions.

``message_strategy(cls)`` walks a Struct's type hints, so a message added to
client/protocol/messages.py is covered without touching this file.  Integers
stay in msgpack's signed 64-bit range; fields the decode-time checks constrain
(sizes, timeouts, acks) get valid values, and payload-carrying messages list
each (topic, partition) once, so generated messages are always acceptable.
Nothing here registers a global type strategy (other suites share the process).
"""

from __future__ import annotations

import types
import typing
from typing import Any

import msgspec
from hypothesis import strategies as st

from client.protocol.messages import (
    FETCH_RESPONSES_MAX,
    RESPONSE_TYPES,
    Acks,
    ErrorResponse,
    FetchRequest,
    FetchResponse,
    ProduceRequest,
    Request,
    Response,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
NON_NEGATIVE = st.integers(0, 2**31 - 1)
# Fields that check_request / check_response require to be >= 0.
NON_NEGATIVE_FIELDS = frozenset(
    {"timeout_ms", "max_wait_ms", "min_bytes", "max_bytes", "partition_max_bytes"}
)
RECORDS_BYTES = st.integers(0, 64)  # kept small: the payload is materialised
TEXT = st.text(max_size=12)
LIST_SIZE_MAX = 3


def _for_type(hint: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if hint is int:
        return INT64
    if hint is str:
        return TEXT
    if hint is bool:
        return st.booleans()
    if origin is list:
        return st.lists(_for_type(arguments[0]), max_size=LIST_SIZE_MAX)
    if origin is dict:
        return st.dictionaries(
            _for_type(arguments[0]), _for_type(arguments[1]), max_size=LIST_SIZE_MAX
        )
    if origin is types.UnionType or origin is typing.Union:
        return st.one_of([_for_type(argument) for argument in arguments])
    if hint is type(None):
        return st.none()
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return message_strategy(hint)
    raise AssertionError(f"no strategy for {hint!r}")


def _for_field(cls: type[msgspec.Struct], name: str, hint: Any) -> st.SearchStrategy[Any]:
    if name in NON_NEGATIVE_FIELDS:
        return NON_NEGATIVE
    if name == "records_bytes":
        return RECORDS_BYTES
    if name == "acks" and cls is ProduceRequest:
        return st.sampled_from([int(acks) for acks in Acks])
    if name == "responses_max" and cls is FetchRequest:
        return st.integers(1, FETCH_RESPONSES_MAX)
    return _for_type(hint)


def _unique_partitions(message: Any) -> Any:
    """Drop repeated (topic, partition) pairs: the payload rule (and, for a
    FetchRequest, its response's payload rule) forbids them."""
    seen: set[tuple[str, int]] = set()
    for topic in message.topics:
        kept = []
        for part in topic.partitions:
            if (topic.name, part.partition) not in seen:
                seen.add((topic.name, part.partition))
                kept.append(part)
        topic.partitions = kept
    return message


def message_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """Valid instances of ``cls``; every field drawn, none left to its default."""
    hints = typing.get_type_hints(cls)
    fields = {name: _for_field(cls, name, hints[name]) for name in cls.__struct_fields__}
    strategy = st.builds(cls, **fields)
    if cls in (ProduceRequest, FetchRequest, FetchResponse):
        strategy = strategy.map(_unique_partitions)
    return strategy


def union_members(union: Any) -> list[type[msgspec.Struct]]:
    return list(typing.get_args(union))


REQUEST_CLASSES: list[type[msgspec.Struct]] = union_members(Request)
RESPONSE_CLASSES: list[type[msgspec.Struct]] = union_members(Response)
requests = st.one_of([message_strategy(cls) for cls in REQUEST_CLASSES])
api_responses = st.one_of([message_strategy(cls) for cls in RESPONSE_TYPES.values()])
error_responses = message_strategy(ErrorResponse)


def payload_length_of(message: Any) -> int:
    """Sum of ``records_bytes`` for a payload-carrying message, else 0."""
    if isinstance(message, ProduceRequest | FetchResponse):
        return sum(part.records_bytes for topic in message.topics for part in topic.partitions)
    return 0
