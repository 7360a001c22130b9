"""Tests for client/protocol/connection.py: both state machines, driven against each other."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from client.errors import (
    ErrorCode,
    FrameTooLargeError,
    InvalidRequestError,
    NotLeaderError,
    ProtocolError,
    TooManyRequestsError,
    UnsupportedApiError,
    UnsupportedVersionError,
)
from client.protocol.connection import (
    BadRequest,
    ClientConnection,
    IncomingRequest,
    IncomingResponse,
    ServerConnection,
    raise_for_error_code,
)
from client.protocol.frames import (
    CORRELATION_ID_MODULUS,
    FLAG_MORE,
    FLAG_NO_RESPONSE,
    FLAG_RESPONSE,
    encode_head,
)
from client.protocol.messages import (
    FETCH_RESPONSES_MAX,
    ApiKey,
    DescribeTopicsRequest,
    DescribeTopicsResponse,
    ErrorResponse,
    FetchPartition,
    FetchPartitionResponse,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    FetchTopicResponse,
    HelloRequest,
    HelloResponse,
    MetadataRequest,
    MetadataResponse,
    ProducePartition,
    ProduceRequest,
    ProduceTopic,
    TopicDescription,
    TopicMetadata,
    encoder,
)

BATCHES = b"first-batch" + b"second-batch!"


def produce(acks: int = 1) -> ProduceRequest:
    return ProduceRequest(
        acks=acks,
        topics=[ProduceTopic("t", [ProducePartition(0, 11), ProducePartition(1, 13)])],
    )


def fetch_response() -> FetchResponse:
    partitions = [
        FetchPartitionResponse(0, records_bytes=11),
        FetchPartitionResponse(1, records_bytes=13),
    ]
    return FetchResponse([FetchTopicResponse("t", partitions)])


def deliver_whole(data: bytes, receive: Callable[[bytes], None], pull: Callable[[], Any]) -> Any:
    receive(data)
    return pull()


def deliver_bytewise(data: bytes, receive: Callable[[bytes], None], pull: Callable[[], Any]) -> Any:
    for index in range(len(data) - 1):
        receive(data[index : index + 1])
        assert pull() is None
    receive(data[-1:])
    return pull()


def deliver_with_trailing(
    data: bytes, receive: Callable[[bytes], None], pull: Callable[[], Any]
) -> Any:
    # Trailing bytes: the start of another frame, which must stay buffered untouched.
    trailing = data[:9]
    receive(data + trailing)
    result = pull()
    assert pull() is None
    return result


DELIVERIES = [
    pytest.param(deliver_whole, id="whole"),
    pytest.param(deliver_bytewise, id="bytewise"),
    pytest.param(deliver_with_trailing, id="trailing"),
]
Deliver = Callable[[bytes, Callable[[bytes], None], Callable[[], Any]], Any]


def accept(server: ServerConnection, data: bytes) -> IncomingRequest:
    server.receive_data(data)
    request = server.next_request()
    assert isinstance(request, IncomingRequest), request
    return request


def answer(client: ClientConnection, data: bytes) -> IncomingResponse:
    client.receive_data(data)
    response = client.next_response()
    assert response is not None
    return response


def bad_request(server: ServerConnection, data: bytes) -> BadRequest:
    server.receive_data(data)
    request = server.next_request()
    assert isinstance(request, BadRequest), request
    return request


@pytest.mark.parametrize("deliver", DELIVERIES)
@pytest.mark.parametrize(
    ("body", "payload"),
    [
        pytest.param(MetadataRequest(["a", "b"]), b"", id="metadata"),
        pytest.param(produce(), BATCHES, id="produce-with-payload"),
    ],
)
def test_request_reaches_the_server(deliver: Deliver, body: Any, payload: bytes) -> None:
    """Proves a request decodes to an equal body and payload however its bytes arrive."""
    client, server = ClientConnection(), ServerConnection()
    correlation_id, head = client.send_request(body, len(payload))
    request = deliver(head + payload, server.receive_data, server.next_request)
    assert isinstance(request, IncomingRequest)
    assert request.body == body
    assert bytes(request.payload) == payload
    assert request.correlation_id == correlation_id
    assert request.api_key == ApiKey(type(body).__struct_config__.tag)
    assert request.wants_response


@pytest.mark.parametrize("deliver", DELIVERIES)
@pytest.mark.parametrize(
    ("request_body", "response_body", "payload"),
    [
        pytest.param(MetadataRequest(), MetadataResponse(cluster_id="c"), b"", id="metadata"),
        pytest.param(produce(), ErrorResponse(int(ErrorCode.NOT_LEADER), "no"), b"", id="error"),
        pytest.param(MetadataRequest(), MetadataResponse(), b"", id="empty"),
    ],
)
def test_response_reaches_the_client(
    deliver: Deliver, request_body: Any, response_body: Any, payload: bytes
) -> None:
    """Proves a response decodes to an equal body and is matched to its request."""
    client, server = ClientConnection(), ServerConnection()
    request_payload = BATCHES if isinstance(request_body, ProduceRequest) else b""
    _, head = client.send_request(request_body, len(request_payload))
    request = accept(server, head + request_payload)
    data = server.encode_response(
        request.api_key, request.api_version, request.correlation_id, response_body
    )
    response = deliver(data, client.receive_data, client.next_response)
    assert isinstance(response, IncomingResponse)
    assert response.body == response_body
    assert response.correlation_id == request.correlation_id
    assert response.api_key == request.api_key
    assert client.inflight_count == 0


@pytest.mark.parametrize("deliver", DELIVERIES)
def test_fetch_response_with_payload_reaches_the_client(deliver: Deliver) -> None:
    """Proves a FetchResponse's payload arrives intact after its body, however it arrives."""
    client, server = ClientConnection(), ServerConnection()
    correlation_id, head = client.send_request(
        FetchRequest(topics=[FetchTopic("t", [FetchPartition(0, 0), FetchPartition(1, 0)])])
    )
    request = accept(server, head)
    data = server.encode_response(
        request.api_key, 0, request.correlation_id, fetch_response(), len(BATCHES)
    )
    response = deliver(data + BATCHES, client.receive_data, client.next_response)
    assert isinstance(response, IncomingResponse)
    assert response.correlation_id == correlation_id
    assert response.body == fetch_response()
    assert bytes(response.payload) == BATCHES


def test_pipelined_responses_out_of_order_match_by_correlation_id() -> None:
    """Proves 200 requests in flight, answered in shuffled order, each reach their own caller."""
    client, server = ClientConnection(), ServerConnection()
    sent: dict[int, str] = {}
    wire = bytearray()
    for number in range(200):
        correlation_id, head = client.send_request(DescribeTopicsRequest([f"topic-{number}"]))
        sent[correlation_id] = f"topic-{number}"
        wire += head
    server.receive_data(wire)
    requests = []
    while (request := server.next_request()) is not None:
        assert isinstance(request, IncomingRequest)
        requests.append(request)
    assert len(requests) == 200 and client.inflight_count == 200
    random.Random(1234).shuffle(requests)
    replies = b"".join(
        server.encode_response(
            request.api_key,
            request.api_version,
            request.correlation_id,
            DescribeTopicsResponse([TopicDescription(request.body.names[0])]),  # type: ignore[union-attr]
        )
        for request in requests
    )
    client.receive_data(replies)
    matched = 0
    while (response := client.next_response()) is not None:
        assert isinstance(response.body, DescribeTopicsResponse)
        assert response.body.topics[0].name == sent[response.correlation_id]
        matched += 1
    assert matched == 200 and client.inflight_count == 0


def test_response_to_unknown_correlation_id_kills_the_client() -> None:
    """Proves a response nobody asked for raises ProtocolError and the connection is dead."""
    client = ClientConnection()
    data = ServerConnection.encode_response(int(ApiKey.METADATA), 0, 99, MetadataResponse())
    client.receive_data(data)
    with pytest.raises(ProtocolError, match="unknown correlation id"):
        client.next_response()
    assert client.dead
    with pytest.raises(ProtocolError):
        client.next_response()
    with pytest.raises(ProtocolError):
        client.send_request(MetadataRequest())


def test_client_frame_flagged_as_response_kills_the_server() -> None:
    """Proves a request with the response flag raises ProtocolError and the connection is dead."""
    server = ServerConnection()
    server.receive_data(
        encode_head(int(ApiKey.HELLO), 0, 1, FLAG_RESPONSE, encoder.encode(HelloRequest()))
    )
    with pytest.raises(ProtocolError, match="flagged as a response"):
        server.next_request()
    assert server.dead
    with pytest.raises(ProtocolError):
        server.receive_data(b"")


@pytest.mark.parametrize(
    "flags", [pytest.param(0, id="not-a-response"), pytest.param(3, id="no-response-flag")]
)
def test_broker_frame_with_wrong_flags_kills_the_client(flags: int) -> None:
    """Proves the client refuses a response without the response flag or with no-response set."""
    client = ClientConnection()
    correlation_id, _ = client.send_request(HelloRequest())
    client.receive_data(
        encode_head(int(ApiKey.HELLO), 0, correlation_id, flags, encoder.encode(HelloResponse()))
    )
    with pytest.raises(ProtocolError):
        client.next_response()
    assert client.dead


def test_response_with_the_wrong_api_key_or_body_kills_the_client() -> None:
    """Proves a response whose header api key or body type is not the request's is refused."""
    for api_key, body, match in [
        (ApiKey.METADATA, HelloResponse(), "response of type HelloResponse"),
        (ApiKey.HELLO, MetadataResponse(), "response with api key 0 to a METADATA"),
    ]:
        client = ClientConnection()
        correlation_id, _ = client.send_request(MetadataRequest())
        client.receive_data(
            encode_head(int(api_key), 0, correlation_id, FLAG_RESPONSE, encoder.encode(body))
        )
        with pytest.raises(ProtocolError, match=match):
            client.next_response()
        assert client.dead


def test_malformed_response_body_kills_the_client() -> None:
    """Proves an undecodable response body raises ProtocolError, not msgspec's error."""
    client = ClientConnection()
    correlation_id, _ = client.send_request(HelloRequest())
    client.receive_data(encode_head(int(ApiKey.HELLO), 0, correlation_id, FLAG_RESPONSE, b"\xc1"))
    with pytest.raises(ProtocolError, match="malformed response body"):
        client.next_response()


def test_fetch_response_payload_mismatch_kills_the_client() -> None:
    """Proves a FetchResponse whose records_bytes do not add up to its payload is refused."""
    client = ClientConnection()
    correlation_id, _ = client.send_request(FetchRequest())
    body = encoder.encode(fetch_response())
    client.receive_data(
        encode_head(int(ApiKey.FETCH), 0, correlation_id, FLAG_RESPONSE, body, 3) + b"abc"
    )
    with pytest.raises(ProtocolError, match="declares 24 payload bytes"):
        client.next_response()


def test_payload_on_an_api_without_one_kills_the_client() -> None:
    """Proves a payload after a body that describes none is a protocol violation."""
    client = ClientConnection()
    correlation_id, _ = client.send_request(MetadataRequest())
    body = encoder.encode(MetadataResponse())
    client.receive_data(
        encode_head(int(ApiKey.METADATA), 0, correlation_id, FLAG_RESPONSE, body, 2) + b"xx"
    )
    with pytest.raises(ProtocolError):
        client.next_response()


def _assert_server_continues(server: ServerConnection) -> None:
    request = accept(server, encode_head(1, 0, 500, 0, encoder.encode(MetadataRequest())))
    assert request.correlation_id == 500


@pytest.mark.parametrize(
    ("frame", "error_type"),
    [
        pytest.param(
            encode_head(77, 0, 5, 0, encoder.encode(HelloRequest())),
            UnsupportedApiError,
            id="unknown-api-key",
        ),
        pytest.param(
            encode_head(int(ApiKey.HELLO), 9, 5, 0, encoder.encode(HelloRequest())),
            UnsupportedVersionError,
            id="unsupported-version",
        ),
        pytest.param(
            encode_head(int(ApiKey.METADATA), 0, 5, 0, encoder.encode(HelloRequest())),
            ProtocolError,
            id="api-key-body-mismatch",
        ),
        pytest.param(
            encode_head(int(ApiKey.METADATA), 0, 5, 0, b"\x92\x01\xa1x"),
            ProtocolError,
            id="body-of-wrong-shape",
        ),
        pytest.param(
            encode_head(int(ApiKey.METADATA), 0, 5, 0, b"\x92\x01\x91\xa2\xff\xfe"),
            ProtocolError,
            id="body-string-not-utf8",
        ),
        pytest.param(
            encode_head(int(ApiKey.METADATA), 0, 5, 0, b"\xc1\xc1"),
            ProtocolError,
            id="body-not-msgpack",
        ),
        pytest.param(
            encode_head(int(ApiKey.PRODUCE), 0, 5, 0, encoder.encode(produce()), 3) + b"abc",
            InvalidRequestError,
            id="produce-payload-mismatch",
        ),
        pytest.param(
            encode_head(int(ApiKey.PRODUCE), 0, 5, 0, encoder.encode(produce(acks=0)), 24)
            + BATCHES,
            InvalidRequestError,
            id="acks-0-without-no-response-flag",
        ),
        pytest.param(
            encode_head(int(ApiKey.METADATA), 0, 5, 0, encoder.encode(MetadataRequest()), 1) + b"x",
            InvalidRequestError,
            id="payload-on-metadata",
        ),
    ],
)
def test_sound_frame_with_bad_request_yields_bad_request(
    frame: bytes, error_type: type[Exception]
) -> None:
    """Proves a well-framed but unservable request gives a BadRequest, and the connection
    goes on to serve the next request."""
    server = ServerConnection()
    bad = bad_request(server, frame)
    assert type(bad.error) is error_type
    assert bad.correlation_id == 5 and bad.wants_response
    assert not server.dead
    _assert_server_continues(server)


def test_bad_request_answer_reaches_the_client_as_a_typed_error() -> None:
    """Proves encode_error produces an ErrorResponse the client matches and can raise."""
    client, server = ClientConnection(), ServerConnection()
    _, head = client.send_request(HelloRequest(), api_version=7)
    bad = bad_request(server, head)
    assert isinstance(bad.error, UnsupportedVersionError)
    response = answer(client, server.encode_error(bad, bad.error))
    assert isinstance(response.body, ErrorResponse)
    assert response.body.error_code == ErrorCode.UNSUPPORTED_VERSION
    with pytest.raises(UnsupportedVersionError):
        raise_for_error_code(response.body.error_code, response.body.error_message)
    assert client.inflight_count == 0


def test_handler_error_for_a_good_request_reaches_the_client() -> None:
    """Proves encode_error also answers a decoded request (a handler's whole-request error)."""
    client, server = ClientConnection(), ServerConnection()
    _, head = client.send_request(MetadataRequest())
    request = accept(server, head)
    response = answer(client, server.encode_error(request, NotLeaderError("moved")))
    assert response.body == ErrorResponse(int(ErrorCode.NOT_LEADER), "moved")


def test_acks_zero_produce_is_fire_and_forget() -> None:
    """Proves acks=0 travels with the no-response flag and is not tracked as in flight."""
    client, server = ClientConnection(), ServerConnection()
    _, head = client.send_request(produce(acks=0), len(BATCHES), wants_response=False)
    assert client.inflight_count == 0
    request = accept(server, head + BATCHES)
    assert not request.wants_response
    assert bytes(request.payload) == BATCHES


def test_client_refuses_inconsistent_no_response_use() -> None:
    """Proves the client rejects acks=0 with a response wanted, and no-response on other APIs."""
    client = ClientConnection()
    with pytest.raises(InvalidRequestError):
        client.send_request(produce(acks=0), len(BATCHES))
    with pytest.raises(InvalidRequestError):
        client.send_request(MetadataRequest(), wants_response=False)
    with pytest.raises(InvalidRequestError):
        client.send_request(produce(), 5)  # payload does not match records_bytes
    assert client.inflight_count == 0


def test_no_response_flag_on_other_api_is_dropped_as_bad_request() -> None:
    """Proves a flagged non-produce request becomes a BadRequest that wants no answer."""
    server = ServerConnection()
    frame = encode_head(
        int(ApiKey.METADATA), 0, 5, FLAG_NO_RESPONSE, encoder.encode(HelloRequest())
    )
    bad = bad_request(server, frame)
    assert not bad.wants_response


def test_inflight_requests_max_is_enforced() -> None:
    """Proves send_request refuses past inflight_requests_max until a response or abandon."""
    client, server = ClientConnection(inflight_requests_max=3), ServerConnection()
    heads = [client.send_request(MetadataRequest())[1] for _ in range(3)]
    with pytest.raises(TooManyRequestsError):
        client.send_request(MetadataRequest())
    request = accept(server, heads[0])
    answer(
        client,
        server.encode_response(request.api_key, 0, request.correlation_id, MetadataResponse()),
    )
    correlation_id, _ = client.send_request(MetadataRequest())
    with pytest.raises(TooManyRequestsError):
        client.send_request(MetadataRequest())
    client.abandon(correlation_id)
    client.send_request(MetadataRequest())
    assert client.inflight_count == 3


def test_correlation_ids_wrap_and_skip_live_ids() -> None:
    """Proves ids start at 10 (a line feed, see FIRST_CORRELATION_ID), wrap from
    2**32 - 1 to 1 (never 0) and skip an id still in flight."""
    client = ClientConnection()
    first, _ = client.send_request(MetadataRequest())
    assert first == 10
    client._next_correlation_id = 1
    assert client.send_request(MetadataRequest())[0] == 1
    client._next_correlation_id = CORRELATION_ID_MODULUS - 1
    last, _ = client.send_request(MetadataRequest())
    wrapped, _ = client.send_request(MetadataRequest())
    assert (last, wrapped) == (CORRELATION_ID_MODULUS - 1, 2)  # 1 is still in flight


def test_encode_response_refuses_a_body_of_another_api() -> None:
    """Proves answering an API with another API's response is caught as a programmer error."""
    with pytest.raises(AssertionError):
        ServerConnection.encode_response(int(ApiKey.HELLO), 0, 1, MetadataResponse())
    with pytest.raises(AssertionError):
        ServerConnection.encode_response(int(ApiKey.FETCH), 0, 1, fetch_response(), 0)


def stream_request(responses_max: int) -> FetchRequest:
    return FetchRequest(
        topics=[FetchTopic("t", [FetchPartition(0, 0)])], responses_max=responses_max
    )


def one_partition_fetch_response(records_bytes: int) -> FetchResponse:
    return FetchResponse(
        [FetchTopicResponse("t", [FetchPartitionResponse(0, records_bytes=records_bytes)])]
    )


def test_a_fetch_stream_stays_in_flight_until_its_last_answer() -> None:
    """Proves answers flagged MORE reach the client without ending the request, and
    the first answer without the flag ends it."""
    client, server = ClientConnection(), ServerConnection()
    correlation_id, head = client.send_request(stream_request(3))
    request = accept(server, head)
    assert isinstance(request.body, FetchRequest) and request.body.responses_max == 3
    wire = b"".join(
        [
            server.encode_response(
                request.api_key, 0, correlation_id, one_partition_fetch_response(5), 5, more=True
            ),
            b"first",
            server.encode_response(
                request.api_key, 0, correlation_id, one_partition_fetch_response(6), 6
            ),
            b"second",
        ]
    )
    client.receive_data(wire)
    first = client.next_response()
    assert first is not None and first.more and bytes(first.payload) == b"first"
    assert client.inflight_count == 1
    last = client.next_response()
    assert last is not None and not last.more and bytes(last.payload) == b"second"
    assert client.inflight_count == 0


@pytest.mark.parametrize(
    ("request_body", "response_body", "api_key"),
    [
        pytest.param(
            stream_request(1), one_partition_fetch_response(0), ApiKey.FETCH, id="no-stream"
        ),
        pytest.param(HelloRequest(), HelloResponse(), ApiKey.HELLO, id="other-api"),
        pytest.param(stream_request(2), ErrorResponse(1, "x"), ApiKey.FETCH, id="error"),
    ],
)
def test_more_where_no_stream_was_asked_for_kills_the_client(
    request_body: Any, response_body: Any, api_key: ApiKey
) -> None:
    """Proves MORE on an answer to a single-answer request, or on an error
    response, is a protocol violation."""
    client = ClientConnection()
    correlation_id, _ = client.send_request(request_body)
    flags = FLAG_RESPONSE | FLAG_MORE
    client.receive_data(
        encode_head(int(api_key), 0, correlation_id, flags, encoder.encode(response_body))
    )
    with pytest.raises(ProtocolError, match="MORE"):
        client.next_response()
    assert client.dead


def test_client_frame_flagged_more_kills_the_server() -> None:
    """Proves a request with the MORE flag (a response-only flag) closes the connection."""
    server = ServerConnection()
    server.receive_data(
        encode_head(int(ApiKey.HELLO), 0, 1, FLAG_MORE, encoder.encode(HelloRequest()))
    )
    with pytest.raises(ProtocolError):
        server.next_request()
    assert server.dead


@pytest.mark.parametrize("responses_max", [0, FETCH_RESPONSES_MAX + 1])
def test_responses_max_out_of_range_is_refused(responses_max: int) -> None:
    """Proves a fetch asking for no answer, or for more than FETCH_RESPONSES_MAX, is invalid."""
    with pytest.raises(InvalidRequestError, match="responses_max"):
        ClientConnection().send_request(stream_request(responses_max))
    _, head = ClientConnection().send_request(stream_request(responses_max), checked=False)
    bad = ServerConnection()
    bad.receive_data(head)
    refused = bad.next_request()
    assert isinstance(refused, BadRequest) and "responses_max" in refused.error.message


def test_client_accepts_bigger_frames_once_allowed() -> None:
    """Proves a response over the client's frame limit is refused, and accepted once
    the limit is raised (as a broker's Hello answer raises it)."""
    big = MetadataResponse(topics=[TopicMetadata(f"topic-{n:04d}") for n in range(400)])
    small_client = ClientConnection(frame_bytes_max=4096)
    first, _ = small_client.send_request(MetadataRequest())
    with pytest.raises(FrameTooLargeError):
        small_client.receive_data(
            ServerConnection.encode_response(int(ApiKey.METADATA), 0, first, big)
        )
        small_client.next_response()
    client = ClientConnection(frame_bytes_max=4096)
    correlation_id, _ = client.send_request(MetadataRequest())
    client.allow_frames_up_to(1 << 20)
    client.receive_data(
        ServerConnection.encode_response(int(ApiKey.METADATA), 0, correlation_id, big)
    )
    response = client.next_response()
    assert response is not None and response.body == big
