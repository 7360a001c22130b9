"""Fuzz tests: hostile bytes into either state machine only ever give the typed outcomes
(a message, a BadRequest, None, or ProtocolError), never any other exception."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_strategies import api_responses, payload_length_of, requests

from client.errors import DistributaryError, ProtocolError
from client.protocol.connection import (
    BadRequest,
    ClientConnection,
    IncomingRequest,
    IncomingResponse,
    ServerConnection,
)
from client.protocol.frames import FLAG_NO_RESPONSE, FLAG_RESPONSE, encode_head
from client.protocol.messages import (
    REQUEST_TYPES,
    ApiKey,
    MetadataRequest,
    ProduceRequest,
    encoder,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL_LIMITS = {"frame_bytes_max": 4096, "body_bytes_max": 1024}

chunk_sizes = st.lists(st.integers(1, 64), min_size=1, max_size=8)


def feed_server(server: ServerConnection, data: bytes, chunks: list[int]) -> list[Any]:
    """Feed ``data`` in chunks, draining after each; return what came out.  Any
    exception other than ProtocolError escapes and fails the test."""
    out: list[Any] = []
    position = 0
    index = 0
    try:
        while position < len(data):
            size = chunks[index % len(chunks)]
            index += 1
            server.receive_data(data[position : position + size])
            position += size
            while (item := server.next_request()) is not None:
                assert isinstance(item, IncomingRequest | BadRequest)
                if isinstance(item, BadRequest):
                    assert isinstance(item.error, DistributaryError)
                out.append(item)
    except ProtocolError as error:
        assert server.dead
        out.append(error)
    return out


def feed_client(client: ClientConnection, data: bytes, chunks: list[int]) -> list[Any]:
    out: list[Any] = []
    position = 0
    index = 0
    try:
        while position < len(data):
            size = chunks[index % len(chunks)]
            index += 1
            client.receive_data(data[position : position + size])
            position += size
            while (item := client.next_response()) is not None:
                assert isinstance(item, IncomingResponse)
                out.append(item)
    except ProtocolError as error:
        assert client.dead
        out.append(error)
    return out


@FUZZ
@given(data=st.binary(max_size=512), chunks=chunk_sizes)
def test_random_bytes_into_server_give_only_typed_outcomes(data: bytes, chunks: list[int]) -> None:
    """Proves arbitrary bytes never make the server state machine raise an untyped error."""
    feed_server(ServerConnection(**SMALL_LIMITS), data, chunks)


@FUZZ
@given(data=st.binary(max_size=512), chunks=chunk_sizes)
def test_random_bytes_into_client_give_only_typed_outcomes(data: bytes, chunks: list[int]) -> None:
    """Proves arbitrary bytes never make the client state machine raise an untyped error,
    even with requests in flight for a matching response to land on."""
    client = ClientConnection(frame_bytes_max=4096)
    for _ in range(3):
        client.send_request(MetadataRequest())
    feed_client(client, data, chunks)


@FUZZ
@given(
    api_key=st.integers(0, 12),
    api_version=st.integers(0, 2),
    flags=st.sampled_from([0, FLAG_NO_RESPONSE]),
    body=st.binary(max_size=200),
    payload=st.binary(max_size=50),
    chunks=chunk_sizes,
)
def test_sound_frame_with_random_body_never_kills_the_server(
    api_key: int, api_version: int, flags: int, body: bytes, payload: bytes, chunks: list[int]
) -> None:
    """Proves a well-framed request with any body gives an IncomingRequest or a BadRequest,
    and the connection keeps serving."""
    frame = encode_head(api_key, api_version, 9, flags, body, len(payload)) + payload
    follow_up = encode_head(int(ApiKey.METADATA), 0, 10, 0, encoder.encode(MetadataRequest()))
    out = feed_server(ServerConnection(**SMALL_LIMITS), frame + follow_up, chunks)
    assert len(out) == 2, out
    assert isinstance(out[1], IncomingRequest) and out[1].correlation_id == 10


@FUZZ
@given(
    body=requests,
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
    chunks=chunk_sizes,
)
def test_mutated_request_frames_give_only_typed_outcomes(
    body: Any, flips: list[tuple[int, int]], chunks: list[int]
) -> None:
    """Proves a valid request frame with a few bytes corrupted is decoded, refused as a
    BadRequest, or raises ProtocolError: nothing else."""
    payload_length = payload_length_of(body)
    wants_response = not (isinstance(body, ProduceRequest) and body.acks == 0)
    flags = 0 if wants_response else FLAG_NO_RESPONSE
    frame = bytearray(
        encode_head(_tag(body), 0, 1, flags, encoder.encode(body), payload_length)
        + bytes(payload_length)
    )
    for position, xor in flips:
        frame[position % len(frame)] ^= xor
    feed_server(ServerConnection(**SMALL_LIMITS), bytes(frame), chunks)


@FUZZ
@given(
    body=api_responses,
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
    chunks=chunk_sizes,
)
def test_mutated_response_frames_give_only_typed_outcomes(
    body: Any, flips: list[tuple[int, int]], chunks: list[int]
) -> None:
    """Proves a valid response frame with a few bytes corrupted gives a response or
    ProtocolError on the client: nothing else."""
    client = ClientConnection(frame_bytes_max=4096)
    tag = _tag(body)
    # One request of the right API in flight, so the uncorrupted frame would match it.
    correlation_id, _ = client.send_request(REQUEST_TYPES[ApiKey(tag)]())
    payload_length = payload_length_of(body)
    frame = bytearray(
        encode_head(tag, 0, correlation_id, FLAG_RESPONSE, encoder.encode(body), payload_length)
        + bytes(payload_length)
    )
    for position, xor in flips:
        frame[position % len(frame)] ^= xor
    feed_client(client, bytes(frame), chunks)


def _tag(body: Any) -> int:
    tag = type(body).__struct_config__.tag
    assert isinstance(tag, int)
    return tag
