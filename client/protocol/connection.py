"""Connection state machines for both ends.  Sans-I/O, like h11's Connection.

Client side: ``send_request(body, payload_length)`` allocates a correlation id
and returns the bytes to write (the caller writes the payload after them);
``receive_data(bytes)`` then ``next_response()`` yields responses matched to
their requests.  Many requests may be in flight (pipelining); the broker
answers in order per connection, but matching is by id, never by position.

Server side: ``receive_data(bytes)`` then ``next_request()`` yields decoded
requests; ``encode_response(request, body, payload_length)`` returns the bytes.
A request that cannot be decoded raises ProtocolError (close the connection)
or, when the frame itself is sound but the API or version is unknown, yields a
``BadRequest`` that the caller answers with ``ErrorResponse``.
"""

from __future__ import annotations

from typing import Final

import msgspec

from client.errors import (
    DistributaryError,
    ErrorCode,
    ProtocolError,
    TooManyRequestsError,
    UnsupportedApiError,
    UnsupportedVersionError,
    error_for_code,
)
from client.protocol.frames import (
    BODY_BYTES_MAX_DEFAULT,
    CORRELATION_ID_MODULUS,
    FLAG_NO_RESPONSE,
    FLAG_RESPONSE,
    FRAME_BYTES_MAX_DEFAULT,
    FrameDecoder,
    FrameHead,
    encode_head,
)
from client.protocol.messages import (
    API_VERSIONS,
    ERROR_RESPONSE_TAG,
    ApiKey,
    ErrorResponse,
    Request,
    Response,
    encoder,
    request_decoder,
    response_decoder,
)

# 256 pipelined requests per connection: deep enough to keep a fast producer's
# pipe full, small enough that one client cannot queue unbounded work.
INFLIGHT_REQUESTS_MAX_DEFAULT: Final = 256


class IncomingRequest(msgspec.Struct):
    """A decoded request.  ``payload`` is writable and owned by this request."""

    api_key: ApiKey
    api_version: int
    correlation_id: int
    wants_response: bool
    body: Request
    payload: memoryview


class BadRequest(msgspec.Struct):
    """A sound frame whose request cannot be served; answer with ``error``."""

    api_key: int
    api_version: int
    correlation_id: int
    wants_response: bool
    error: DistributaryError


class IncomingResponse(msgspec.Struct):
    correlation_id: int
    api_key: int
    body: Response
    payload: memoryview


class ServerConnection:
    """The broker's half of one connection."""

    def __init__(
        self,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        body_bytes_max: int = BODY_BYTES_MAX_DEFAULT,
    ) -> None:
        self._frames = FrameDecoder(frame_bytes_max, body_bytes_max)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._frames.receive_data(data)

    def next_request(self) -> IncomingRequest | BadRequest | None:
        """The next request, a BadRequest to answer with an error, or None.
        Raises ProtocolError (the connection must then be closed)."""
        frame = self._frames.next_frame()
        if frame is None:
            return None
        head = frame.head
        wants_response = not head.flags & FLAG_NO_RESPONSE
        if head.is_response:
            raise ProtocolError("a client sent a frame flagged as a response")
        error = _check_api(head)
        if error is not None:
            return BadRequest(
                head.api_key, head.api_version, head.correlation_id, wants_response, error
            )
        try:
            body = request_decoder.decode(frame.body)
        except msgspec.DecodeError as decode_error:
            raise ProtocolError(f"malformed request body: {decode_error}") from decode_error
        if type(body).__struct_config__.tag != head.api_key:
            raise ProtocolError(
                f"frame api key {head.api_key} does not match body {type(body).__name__}"
            )
        return IncomingRequest(
            ApiKey(head.api_key),
            head.api_version,
            head.correlation_id,
            wants_response,
            body,
            frame.payload,
        )

    @staticmethod
    def encode_response(
        api_key: int,
        api_version: int,
        correlation_id: int,
        body: Response,
        payload_length: int = 0,
    ) -> bytes:
        """Header + body of a response; ``payload_length`` bytes must follow."""
        return encode_head(
            api_key,
            api_version,
            correlation_id,
            FLAG_RESPONSE,
            encoder.encode(body),
            payload_length,
        )

    @staticmethod
    def encode_error(bad: BadRequest | IncomingRequest, error: DistributaryError) -> bytes:
        return encode_head(
            bad.api_key,
            bad.api_version,
            bad.correlation_id,
            FLAG_RESPONSE,
            encoder.encode(ErrorResponse(int(error.code), error.message)),
        )


def _check_api(head: FrameHead) -> DistributaryError | None:
    try:
        api_key = ApiKey(head.api_key)
    except ValueError:
        return UnsupportedApiError(f"unknown api key {head.api_key}")
    version_min, version_max = API_VERSIONS[api_key]
    if not version_min <= head.api_version <= version_max:
        return UnsupportedVersionError(
            f"{api_key.name} version {head.api_version} is not in [{version_min}, {version_max}]"
        )
    return None


class ClientConnection:
    """The SDK's half of one connection: correlation ids and in-flight tracking."""

    def __init__(
        self,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        inflight_requests_max: int = INFLIGHT_REQUESTS_MAX_DEFAULT,
    ) -> None:
        self._frames = FrameDecoder(frame_bytes_max, frame_bytes_max)
        self._next_correlation_id = 1
        self._inflight: dict[int, ApiKey] = {}
        self.inflight_requests_max = inflight_requests_max

    @property
    def inflight_count(self) -> int:
        return len(self._inflight)

    def send_request(
        self,
        body: Request,
        payload_length: int = 0,
        *,
        api_version: int = 0,
        wants_response: bool = True,
    ) -> tuple[int, bytes]:
        """Allocate a correlation id; return it and the header + body bytes.
        Raises TooManyRequestsError when ``inflight_requests_max`` are in flight."""
        if len(self._inflight) >= self.inflight_requests_max:
            raise TooManyRequestsError(
                f"{len(self._inflight)} requests in flight (inflight_requests_max)"
            )
        api_key = ApiKey(type(body).__struct_config__.tag)  # type: ignore[arg-type]
        correlation_id = self._next_correlation_id
        self._next_correlation_id = (correlation_id + 1) % CORRELATION_ID_MODULUS or 1
        assert correlation_id not in self._inflight, "correlation id wrapped onto a live request"
        flags = 0 if wants_response else FLAG_NO_RESPONSE
        if wants_response:
            self._inflight[correlation_id] = api_key
        data = encode_head(
            int(api_key), api_version, correlation_id, flags, encoder.encode(body), payload_length
        )
        return correlation_id, data

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._frames.receive_data(data)

    def next_response(self) -> IncomingResponse | None:
        """The next response, or None.  Raises ProtocolError for a response to no
        request, a mismatched api key, or an undecodable body."""
        frame = self._frames.next_frame()
        if frame is None:
            return None
        head = frame.head
        if not head.is_response:
            raise ProtocolError("the broker sent a frame not flagged as a response")
        api_key = self._inflight.pop(head.correlation_id, None)
        if api_key is None:
            raise ProtocolError(f"response to unknown correlation id {head.correlation_id}")
        try:
            body = response_decoder.decode(frame.body)
        except msgspec.DecodeError as decode_error:
            raise ProtocolError(f"malformed response body: {decode_error}") from decode_error
        tag = type(body).__struct_config__.tag
        if tag != ERROR_RESPONSE_TAG and tag != int(api_key):
            raise ProtocolError(f"response of type {type(body).__name__} to a {api_key.name}")
        return IncomingResponse(head.correlation_id, int(api_key), body, frame.payload)

    def abandon(self, correlation_id: int) -> None:
        """Forget a request whose response will never come (connection failing)."""
        self._inflight.pop(correlation_id, None)


def raise_for_error_code(code: int, message: str = "") -> None:
    """Raise the typed error for a non-zero wire error code."""
    if code != ErrorCode.NONE:
        raise error_for_code(code, message)
