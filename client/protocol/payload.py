"""The payload rule, and the semantic checks cheap enough to run at decode.

A frame's payload is raw record batches.  Only two messages carry one: a
ProduceRequest and a FetchResponse.  Their bodies list topics, each with
partitions, each with ``records_bytes``; the payload is those partitions'
batches concatenated in exactly the order the body lists them, so

    sum(records_bytes over every partition, in body order) == payload length

and every other message has an empty payload.  A (topic, partition) pair may
appear at most once per message.  :func:`split_payload` checks all that and
cuts the payload into one zero-copy view per partition; the connection state
machines (client/protocol/connection.py) run the same checks on every frame,
so a handler never sees a body that disagrees with its payload.

Whose fault decides the error type: a bad *request* raises InvalidRequestError
(the broker answers it with an ErrorResponse and keeps the connection); a bad
*response* raises ProtocolError (the broker is broken: the client closes).
Work here is per partition, never per record or per byte.
"""

from __future__ import annotations

from typing import Final

from client.errors import DistributaryError, InvalidRequestError, ProtocolError
from client.protocol.messages import (
    FETCH_RESPONSES_MAX,
    Acks,
    CreatePartitionsRequest,
    CreateTopicsRequest,
    DeleteTopicsRequest,
    FetchRequest,
    FetchResponse,
    ProduceRequest,
    Request,
    Response,
)

ACKS_VALUES: Final = frozenset(int(acks) for acks in Acks)

# One partition's share of a payload: (topic, partition, its batches).
PayloadPart = tuple[str, int, memoryview]


def payload_layout(
    body: Request | Response, error: type[DistributaryError] = ProtocolError
) -> list[tuple[str, int, int]]:
    """``(topic, partition, records_bytes)`` in payload order; ``[]`` for a message
    that carries no payload.  Raises ``error`` for a negative ``records_bytes`` or
    a (topic, partition) listed twice."""
    if not isinstance(body, ProduceRequest | FetchResponse):
        return []
    if len(body.topics) == 1 and len(body.topics[0].partitions) == 1:
        # The usual message (one partition): nothing can be listed twice.
        topic = body.topics[0]
        part = topic.partitions[0]
        if part.records_bytes < 0:
            raise error(
                f"{topic.name}/{part.partition}: negative records_bytes {part.records_bytes}"
            )
        return [(topic.name, part.partition, part.records_bytes)]
    topics: list[tuple[str, list[tuple[int, int]]]] = [
        (topic.name, [(part.partition, part.records_bytes) for part in topic.partitions])
        for topic in body.topics
    ]
    layout: list[tuple[str, int, int]] = []
    seen: set[tuple[str, int]] = set()
    for name, partitions in topics:
        for partition, records_bytes in partitions:
            if records_bytes < 0:
                raise error(f"{name}/{partition}: negative records_bytes {records_bytes}")
            if (name, partition) in seen:
                raise error(f"{name}/{partition} is listed twice in one {type(body).__name__}")
            seen.add((name, partition))
            layout.append((name, partition, records_bytes))
    return layout


def check_payload(
    body: Request | Response, payload_length: int, error: type[DistributaryError] = ProtocolError
) -> list[tuple[str, int, int]]:
    """The layout of ``body``'s payload after checking it adds up to
    ``payload_length``.  Raises ``error`` when it does not (or see
    :func:`payload_layout`)."""
    if not isinstance(body, ProduceRequest | FetchResponse):
        declared = 0  # no payload allowed
        layout: list[tuple[str, int, int]] = []
    else:
        layout = payload_layout(body, error)
        declared = (
            layout[0][2]
            if len(layout) == 1
            else sum(records_bytes for _name, _partition, records_bytes in layout)
        )
    if declared != payload_length:
        raise error(
            f"{type(body).__name__} declares {declared} payload bytes "
            f"but the frame carries {payload_length}"
        )
    return layout


def split_payload(
    body: ProduceRequest | FetchResponse, payload: bytes | bytearray | memoryview
) -> list[PayloadPart]:
    """Cut ``payload`` into ``(topic, partition, view)`` in body order, without copying.

    Each view is a slice of ``payload`` (writable if ``payload`` is, so the broker
    can stamp offsets through it).  Batches inside a view are not validated here
    (client/records/header.py does that).  Raises InvalidRequestError for a
    ProduceRequest, ProtocolError for a FetchResponse, when the ``records_bytes``
    are negative, do not add up to the payload's length, or list a partition twice.
    """
    assert isinstance(body, ProduceRequest | FetchResponse), type(body)
    error: type[DistributaryError] = (
        InvalidRequestError if isinstance(body, ProduceRequest) else ProtocolError
    )
    view = payload if isinstance(payload, memoryview) else memoryview(payload)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    topics = body.topics
    if len(topics) == 1 and len(topics[0].partitions) == 1:
        # The usual message: one partition, the whole payload (no copy of the rule).
        part = topics[0].partitions[0]
        if part.records_bytes != view.nbytes:
            check_payload(body, view.nbytes, error)  # raises the precise error
        return [(topics[0].name, part.partition, view)]
    layout = check_payload(body, view.nbytes, error)
    parts: list[PayloadPart] = []
    position = 0
    for name, partition, records_bytes in layout:
        parts.append((name, partition, view[position : position + records_bytes]))
        position += records_bytes
    return parts


def _check_non_negative(value: int, what: str) -> None:
    if value < 0:
        raise InvalidRequestError(f"{what} must not be negative, got {value}")


def check_request(body: Request, payload_length: int, wants_response: bool) -> None:
    """The checks every decoded request passes before a handler sees it.

    Raises InvalidRequestError: unknown ``acks``; ``acks=0`` without the
    no-response flag or the flag on anything else; a negative timeout or size;
    a FetchRequest listing a partition twice; a payload that breaks the payload
    rule (see :func:`check_payload`).
    """
    if isinstance(body, ProduceRequest):
        if body.acks not in ACKS_VALUES:
            raise InvalidRequestError(f"acks must be one of {sorted(ACKS_VALUES)}, got {body.acks}")
        fire_and_forget = body.acks == Acks.NONE
        if fire_and_forget and wants_response:
            raise InvalidRequestError("a produce with acks=0 must set the no-response flag")
        _check_non_negative(body.timeout_ms, "timeout_ms")
    else:
        fire_and_forget = False
        if isinstance(body, CreateTopicsRequest | DeleteTopicsRequest | CreatePartitionsRequest):
            _check_non_negative(body.timeout_ms, "timeout_ms")
        elif isinstance(body, FetchRequest):
            _check_fetch_request(body)
    if not fire_and_forget and not wants_response:
        raise InvalidRequestError("only a produce with acks=0 may set the no-response flag")
    check_payload(body, payload_length, InvalidRequestError)


def _check_fetch_request(body: FetchRequest) -> None:
    if not 1 <= body.responses_max <= FETCH_RESPONSES_MAX:
        raise InvalidRequestError(
            f"responses_max must be 1..{FETCH_RESPONSES_MAX}, got {body.responses_max}"
        )
    _check_non_negative(body.max_wait_ms, "max_wait_ms")
    _check_non_negative(body.min_bytes, "min_bytes")
    _check_non_negative(body.max_bytes, "max_bytes")
    topics = body.topics
    if len(topics) == 1 and len(topics[0].partitions) == 1:  # nothing listed twice
        _check_non_negative(topics[0].partitions[0].partition_max_bytes, "partition_max_bytes")
        return
    seen: set[tuple[str, int]] = set()
    for topic in body.topics:
        for part in topic.partitions:
            _check_non_negative(part.partition_max_bytes, "partition_max_bytes")
            if (topic.name, part.partition) in seen:
                # Its response could not list the partition twice (the payload rule).
                raise InvalidRequestError(
                    f"{topic.name}/{part.partition} is listed twice in one FetchRequest"
                )
            seen.add((topic.name, part.partition))


def check_response(body: Response, payload_length: int) -> None:
    """The checks every decoded response passes before the SDK sees it.
    Raises ProtocolError when the payload breaks the payload rule."""
    check_payload(body, payload_length, ProtocolError)
