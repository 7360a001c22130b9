"""Property tests: every message in client/protocol/messages.py survives the full trip
ClientConnection -> ServerConnection -> response -> ClientConnection unchanged."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_strategies import (
    REQUEST_CLASSES,
    RESPONSE_CLASSES,
    api_responses,
    error_responses,
    message_strategy,
    payload_length_of,
    requests,
)

from client.protocol.connection import (
    ClientConnection,
    IncomingRequest,
    IncomingResponse,
    ServerConnection,
)
from client.protocol.messages import (
    REQUEST_TYPES,
    RESPONSE_TYPES,
    Acks,
    ApiKey,
    ErrorResponse,
    ProduceRequest,
    Request,
    Response,
    encoder,
    request_decoder,
    response_decoder,
)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def request_to_server(body: Any, payload: bytes) -> tuple[ClientConnection, IncomingRequest]:
    client, server = ClientConnection(), ServerConnection()
    wants_response = not (isinstance(body, ProduceRequest) and body.acks == Acks.NONE)
    _, head = client.send_request(body, len(payload), wants_response=wants_response)
    server.receive_data(head + payload)
    request = server.next_request()
    assert isinstance(request, IncomingRequest), request
    assert server.next_request() is None
    return client, request


def test_strategies_cover_every_message() -> None:
    """Proves the round trips below draw every request and response type in messages.py."""
    assert set(REQUEST_CLASSES) == set(REQUEST_TYPES.values())
    assert set(RESPONSE_CLASSES) == set(RESPONSE_TYPES.values()) | {ErrorResponse}


@PROPERTY
@given(body=requests, data=st.data())
def test_every_request_round_trips(body: Any, data: st.DataObject) -> None:
    """Proves any valid request reaches the server equal, with its payload, id and api key."""
    payload = data.draw(
        st.binary(min_size=payload_length_of(body), max_size=payload_length_of(body))
    )
    _, request = request_to_server(body, payload)
    assert request.body == body
    assert type(request.body) is type(body)
    assert bytes(request.payload) == payload
    assert request.api_key == ApiKey(type(body).__struct_config__.tag)


@PROPERTY
@given(response_body=st.one_of(api_responses, error_responses), data=st.data())
def test_every_response_round_trips(response_body: Any, data: st.DataObject) -> None:
    """Proves any valid response (or ErrorResponse) reaches the client equal and matched."""
    if isinstance(response_body, ErrorResponse):  # answers a request of any API
        api_key = data.draw(st.sampled_from(list(ApiKey)))
    else:
        api_key = ApiKey(type(response_body).__struct_config__.tag)
    request_body = data.draw(message_strategy(REQUEST_TYPES[api_key]))
    if isinstance(request_body, ProduceRequest):
        request_body.acks = int(Acks.LEADER)  # acks=0 gets no response to test
    request_payload = bytes(payload_length_of(request_body))
    client, request = request_to_server(request_body, request_payload)
    payload_length = payload_length_of(response_body)
    payload = data.draw(st.binary(min_size=payload_length, max_size=payload_length))
    wire = ServerConnection.encode_response(
        request.api_key, request.api_version, request.correlation_id, response_body, payload_length
    )
    client.receive_data(wire + payload)
    response = client.next_response()
    assert isinstance(response, IncomingResponse)
    assert response.body == response_body
    assert bytes(response.payload) == payload
    assert response.correlation_id == request.correlation_id
    assert response.api_key == int(api_key)
    assert client.inflight_count == 0


@pytest.mark.parametrize("cls", REQUEST_CLASSES + RESPONSE_CLASSES, ids=lambda cls: cls.__name__)
def test_defaults_decode_from_the_tag_alone(cls: type[msgspec.Struct]) -> None:
    """Proves a body of just ``[tag]`` decodes to the all-defaults message (or fails typed),
    which is what lets fields be appended with defaults."""
    decoder = request_decoder if cls in REQUEST_CLASSES else response_decoder
    tag = cls.__struct_config__.tag
    try:
        expected = cls()
    except TypeError:  # a required field: the short array must be refused, typed
        with pytest.raises(msgspec.ValidationError):
            decoder.decode(encoder.encode([tag]))
        return
    assert decoder.decode(encoder.encode([tag])) == expected


@PROPERTY
@given(body=requests, extra=st.lists(st.integers(0, 100) | st.text(max_size=5), max_size=3))
def test_unknown_trailing_fields_are_ignored(body: Request, extra: list[Any]) -> None:
    """Proves an old peer decodes a newer peer's message that has extra trailing fields."""
    fields = list(msgspec.to_builtins(body))
    decoded = request_decoder.decode(encoder.encode(fields + extra))
    assert decoded == body


@PROPERTY
@given(body=st.one_of(api_responses, error_responses))
def test_response_bodies_are_msgpack_arrays_led_by_their_tag(body: Response) -> None:
    """Proves the documented encoding: an array whose first element is the tag, then the
    fields in declaration order."""
    decoded = msgspec.msgpack.decode(encoder.encode(body))
    assert isinstance(decoded, list)
    assert decoded[0] == type(body).__struct_config__.tag
    assert len(decoded) == 1 + len(type(body).__struct_fields__)
