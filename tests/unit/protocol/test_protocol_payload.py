"""Tests for client/protocol/payload.py: split_payload and the decode-time request checks."""

from __future__ import annotations

import pytest

from client.errors import InvalidRequestError, ProtocolError
from client.protocol.messages import (
    CreateTopicsRequest,
    FetchPartition,
    FetchPartitionResponse,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    FetchTopicResponse,
    MetadataRequest,
    ProducePartition,
    ProduceRequest,
    ProduceTopic,
)
from client.protocol.payload import check_request, payload_layout, split_payload


def produce(*sizes: tuple[str, int, int], acks: int = 1) -> ProduceRequest:
    topics: dict[str, list[ProducePartition]] = {}
    for name, partition, records_bytes in sizes:
        topics.setdefault(name, []).append(ProducePartition(partition, records_bytes))
    return ProduceRequest(acks=acks, topics=[ProduceTopic(n, p) for n, p in topics.items()])


def test_split_payload_cuts_in_body_order_without_copying() -> None:
    """Proves split_payload returns per-partition views, in body order, over the same memory."""
    body = produce(("a", 1, 3), ("a", 0, 2), ("b", 0, 4))
    payload = bytearray(b"AAAaaBBBB")
    parts = split_payload(body, memoryview(payload))
    assert [(name, partition, bytes(view)) for name, partition, view in parts] == [
        ("a", 1, b"AAA"),
        ("a", 0, b"aa"),
        ("b", 0, b"BBBB"),
    ]
    parts[2][2][0:1] = b"Z"  # writable, and writes land in the frame's buffer
    assert payload == bytearray(b"AAAaaZBBB")


def test_split_payload_accepts_bytes_and_zero_length_partitions() -> None:
    """Proves read-only bytes work and a partition with records_bytes 0 gets an empty view."""
    partitions = [FetchPartitionResponse(0), FetchPartitionResponse(1, records_bytes=3)]
    body = FetchResponse([FetchTopicResponse("t", partitions)])
    parts = split_payload(body, b"xyz")
    assert [(p, bytes(v)) for _, p, v in parts] == [(0, b""), (1, b"xyz")]


@pytest.mark.parametrize(
    ("body", "payload"),
    [
        pytest.param(produce(("a", 0, 3)), b"ab", id="short"),
        pytest.param(produce(("a", 0, 1)), b"ab", id="long"),
        pytest.param(produce(("a", 0, -1), ("a", 1, 3)), b"ab", id="negative"),
        pytest.param(produce(("a", 0, 1), ("a", 0, 1)), b"ab", id="duplicate"),
    ],
)
def test_split_payload_refuses_a_bad_produce_layout(body: ProduceRequest, payload: bytes) -> None:
    """Proves a Produce whose records_bytes disagree with its payload is InvalidRequestError."""
    with pytest.raises(InvalidRequestError):
        split_payload(body, payload)


def test_split_payload_refuses_a_bad_fetch_layout_as_protocol_error() -> None:
    """Proves a FetchResponse that disagrees with its payload is the broker's ProtocolError."""
    body = FetchResponse([FetchTopicResponse("t", [FetchPartitionResponse(0, records_bytes=5)])])
    with pytest.raises(ProtocolError):
        split_payload(body, b"four")


def test_payload_layout_is_empty_for_messages_without_payload() -> None:
    """Proves only Produce requests and Fetch responses describe a payload."""
    assert payload_layout(MetadataRequest()) == []
    assert payload_layout(FetchRequest(topics=[FetchTopic("t", [FetchPartition(0, 0)])])) == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(ProduceRequest(acks=2), id="unknown-acks"),
        pytest.param(ProduceRequest(timeout_ms=-1), id="negative-produce-timeout"),
        pytest.param(FetchRequest(max_wait_ms=-1), id="negative-max-wait"),
        pytest.param(FetchRequest(min_bytes=-1), id="negative-min-bytes"),
        pytest.param(FetchRequest(max_bytes=-1), id="negative-max-bytes"),
        pytest.param(
            FetchRequest(topics=[FetchTopic("t", [FetchPartition(0, 0, -5)])]),
            id="negative-partition-max-bytes",
        ),
        pytest.param(CreateTopicsRequest(timeout_ms=-1), id="negative-create-timeout"),
        pytest.param(
            FetchRequest(topics=[FetchTopic("t", [FetchPartition(0, 0), FetchPartition(0, 5)])]),
            id="fetch-partition-twice",
        ),
    ],
)
def test_check_request_refuses_impossible_values(body: ProduceRequest | FetchRequest) -> None:
    """Proves values no handler could honour are refused at decode with InvalidRequestError."""
    with pytest.raises(InvalidRequestError):
        check_request(body, 0, True)


def test_check_request_ties_acks_zero_to_the_no_response_flag() -> None:
    """Proves acks=0 requires the no-response flag and the flag requires acks=0."""
    check_request(ProduceRequest(acks=0), 0, False)
    check_request(ProduceRequest(acks=1), 0, True)
    check_request(ProduceRequest(acks=-1), 0, True)
    with pytest.raises(InvalidRequestError):
        check_request(ProduceRequest(acks=0), 0, True)
    with pytest.raises(InvalidRequestError):
        check_request(ProduceRequest(acks=1), 0, False)
    with pytest.raises(InvalidRequestError):
        check_request(MetadataRequest(), 0, False)
