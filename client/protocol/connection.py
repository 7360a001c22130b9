"""Connection state machines for both ends.  Sans-I/O, like h11's Connection.

Client side: ``send_request(body, payload_length)`` allocates a correlation id
and returns the bytes to write (the caller writes the payload after them);
``receive_data(bytes)`` then ``next_response()`` yields responses matched to
their requests.  Many requests may be in flight (pipelining); responses may
come back in any order, so matching is by id, never by position.

Server side: ``receive_data(bytes)`` then ``next_request()`` yields decoded
requests; ``encode_response(api_key, api_version, correlation_id, body,
payload_length)`` returns the bytes.  What can go wrong, and what follows:

- the byte stream itself is broken (a length over its limit or shorter than the
  header, unknown flag bits, a client frame flagged as a response):
  ``next_request`` raises ProtocolError and the connection must be closed;
- the frame is sound but its request cannot be served (unknown API key or
  version, an undecodable body, a body whose tag is not the frame's API key, a
  body that disagrees with its payload or breaks a cheap semantic rule):
  ``next_request`` yields a ``BadRequest``; the caller answers it with
  ``encode_error`` (an ``ErrorResponse``) unless ``wants_response`` is False,
  and keeps reading.

On the client every violation is the broker's fault, so ``next_response``
raises ProtocolError and the connection must be closed.  The client also looks
at the first bytes it ever receives before reading them as a frame: an HTTP
answer, or a head with an unknown API key or flag bits, is a ProtocolError
naming the peer as "not a Distributary broker" (the first request's correlation
id, 10, is a line feed, so a line-based server answers at once).  After a ProtocolError
either state machine is dead: every further call raises ProtocolError.
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
    FLAG_MORE,
    FLAG_NO_RESPONSE,
    FLAG_RESPONSE,
    FRAME_BYTES_MAX_DEFAULT,
    FRAME_BYTES_MAX_WIRE,
    FRAME_HEADER,
    FRAME_HEADER_BYTES,
    HEADER_AFTER_LENGTH_BYTES,
    KNOWN_FLAGS,
    LENGTH_PREFIX_BYTES,
    FrameDecoder,
    FrameHead,
    RawFrame,
    encode_head,
)
from client.protocol.messages import (
    API_VERSIONS,
    ERROR_RESPONSE_TAG,
    ApiKey,
    ErrorResponse,
    FetchRequest,
    FetchResponse,
    Request,
    Response,
    encoder,
    request_decoder,
    response_decoder,
)
from client.protocol.payload import check_payload, check_request, check_response

# What msgspec raises for bad input: DecodeError (incl. ValidationError) for malformed
# or mistyped msgpack, and UnicodeDecodeError (a ValueError) for a str that is not UTF-8.
_DECODE_ERRORS: Final = (msgspec.DecodeError, ValueError)

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
    """A sound frame whose request cannot be served; answer with ``error``
    (through ``ServerConnection.encode_error``) unless ``wants_response`` is False."""

    api_key: int
    api_version: int
    correlation_id: int
    wants_response: bool
    error: DistributaryError


class IncomingResponse(msgspec.Struct):
    """A decoded response, matched to its request.  ``body`` is the API's response
    or an ``ErrorResponse``; ``payload`` is writable and owned by this response."""

    correlation_id: int
    api_key: int
    body: Response
    payload: memoryview
    # More responses to the same request follow (a Fetch stream): the request is
    # still in flight.
    more: bool = False


def _tag(body: msgspec.Struct) -> int:
    tag = type(body).__struct_config__.tag
    assert isinstance(tag, int), type(body)
    return tag


class ServerConnection:
    """The broker's half of one connection.  Not thread-safe: one owner.

    It does not count requests in flight: the owner bounds them (a bounded
    channel between its reader and writer tasks, which stops reading the socket
    when full, or an answer of TooManyRequestsError)."""

    def __init__(
        self,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        body_bytes_max: int = BODY_BYTES_MAX_DEFAULT,
    ) -> None:
        self._frames = FrameDecoder(frame_bytes_max, body_bytes_max)
        self._dead = False

    @property
    def dead(self) -> bool:
        """True once a ProtocolError was raised: the connection must be closed."""
        return self._dead or self._frames.dead

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the socket.  Raises ProtocolError if dead."""
        if self._dead:
            raise ProtocolError("connection used after a protocol error")
        self._frames.receive_data(data)

    def next_request(self) -> IncomingRequest | BadRequest | None:
        """The next request, a BadRequest to answer with an error, or None.
        Raises ProtocolError (the connection must then be closed)."""
        if self._dead:
            raise ProtocolError("connection used after a protocol error")
        frame = self._frames.next_frame()
        if frame is None:
            return None
        head = frame.head
        if head.flags & (FLAG_RESPONSE | FLAG_MORE):
            self._dead = True
            raise ProtocolError("a client sent a frame flagged as a response")
        wants_response = not head.flags & FLAG_NO_RESPONSE
        try:
            body = _decode_request(frame)
        except DistributaryError as error:
            return BadRequest(
                head.api_key, head.api_version, head.correlation_id, wants_response, error
            )
        return IncomingRequest(
            _API_KEYS[head.api_key],
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
        *,
        more: bool = False,
    ) -> bytes:
        """Header + body of a response; ``payload_length`` bytes must follow.
        Echo the request's api key, version and correlation id.  ``more``: another
        response to the same request follows (only a FetchResponse of a fetch
        with ``responses_max`` > 1).  A body that is not ``api_key``'s response
        (or an ErrorResponse), or a payload length that breaks the payload rule,
        is a programmer error (AssertionError)."""
        tag = _tag(body)
        assert tag in (api_key, ERROR_RESPONSE_TAG), (api_key, type(body).__name__)
        assert not more or isinstance(body, FetchResponse), type(body).__name__
        if __debug__:
            try:
                check_payload(body, payload_length)
            except ProtocolError as error:
                raise AssertionError(f"response breaks the payload rule: {error}") from error
        return encode_head(
            api_key,
            api_version,
            correlation_id,
            FLAG_RESPONSE | FLAG_MORE if more else FLAG_RESPONSE,
            encoder.encode(body),
            payload_length,
        )

    @staticmethod
    def encode_error(bad: BadRequest | IncomingRequest, error: DistributaryError) -> bytes:
        """An ErrorResponse carrying ``error``'s code and message, answering ``bad``.
        Only for a request with ``wants_response``: a peer never expects an answer
        to the others, and would treat one as a protocol violation."""
        return encode_head(
            int(bad.api_key),
            bad.api_version,
            bad.correlation_id,
            FLAG_RESPONSE,
            encoder.encode(ErrorResponse(int(error.code), error.message)),
        )


# Wire value -> ApiKey without an Enum call per frame.
_API_KEYS: Final[dict[int, ApiKey]] = {int(key): key for key in ApiKey}


def _check_api(head: FrameHead) -> DistributaryError | None:
    api_key = _API_KEYS.get(head.api_key)
    if api_key is None:
        return UnsupportedApiError(f"unknown api key {head.api_key}")
    version_min, version_max = API_VERSIONS[api_key]
    if not version_min <= head.api_version <= version_max:
        return UnsupportedVersionError(
            f"{api_key.name} version {head.api_version} is not in [{version_min}, {version_max}]"
        )
    return None


def _decode_request(frame: RawFrame) -> Request:
    """The frame's request body, checked.  Raises UnsupportedApiError,
    UnsupportedVersionError, ProtocolError (undecodable body, wrong tag) or
    InvalidRequestError (see client/protocol/payload.py: check_request)."""
    head = frame.head
    error = _check_api(head)
    if error is not None:
        raise error
    try:
        body = request_decoder.decode(frame.body)
    except _DECODE_ERRORS as decode_error:
        raise ProtocolError(f"malformed request body: {decode_error}") from decode_error
    if _tag(body) != head.api_key:
        raise ProtocolError(
            f"frame api key {head.api_key} does not match body {type(body).__name__}"
        )
    check_request(body, len(frame.payload), not head.flags & FLAG_NO_RESPONSE)
    return body


# Request class -> its ApiKey, response class -> its tag, filled on first use.
_REQUEST_API_KEYS: Final[dict[type, ApiKey]] = {}
_RESPONSE_TAGS: Final[dict[type, int]] = {}
_API_KEY_VALUES: Final = frozenset(int(key) for key in ApiKey)
# The first request's correlation id.  10 is a line feed: the first frame's
# header then ends a line, so a line-based server at the address (HTTP, SMTP,
# Redis) answers its "bad request" at once and _check_first_bytes names it,
# instead of both sides waiting for the rest of a line.
FIRST_CORRELATION_ID: Final = 0x0A


class ClientConnection:
    """The SDK's half of one connection: correlation ids and in-flight tracking.
    Not thread-safe: one owner."""

    def __init__(
        self,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        inflight_requests_max: int = INFLIGHT_REQUESTS_MAX_DEFAULT,
        *,
        peer: str = "the peer",
    ) -> None:
        # Response bodies (metadata of many topics) may be big: bound them by the frame.
        assert 1 <= inflight_requests_max < CORRELATION_ID_MODULUS - 1, inflight_requests_max
        # Names the other end in the "not a broker" errors (e.g. "127.0.0.1:9392").
        self.peer = peer
        # The first FRAME_HEADER_BYTES received, until they are checked to look
        # like the head of a broker's response (see _check_first_bytes).
        self._first_bytes: bytearray | None = bytearray()
        self._frames = FrameDecoder(frame_bytes_max, frame_bytes_max)
        self._frame_bytes_max = frame_bytes_max
        # The one whole frame a read brought (the usual case), cut without the
        # decoder's buffer: (api_key, correlation_id, flags, body, payload).
        self._whole_frame: tuple[int, int, int, bytes, memoryview] | None = None
        self._next_correlation_id = FIRST_CORRELATION_ID
        self._inflight: dict[int, ApiKey] = {}
        self._streams: set[int] = set()  # in flight with responses_max > 1
        self._dead = False
        self.inflight_requests_max = inflight_requests_max

    @property
    def inflight_count(self) -> int:
        return len(self._inflight)

    @property
    def dead(self) -> bool:
        """True once a ProtocolError was raised: the connection must be closed."""
        return self._dead or self._frames.dead

    def send_request(
        self,
        body: Request,
        payload_length: int = 0,
        *,
        api_version: int = 0,
        wants_response: bool = True,
        checked: bool = True,
    ) -> tuple[int, bytes]:
        """Allocate a correlation id; return it and the header + body bytes.

        ``wants_response`` must be False exactly for a produce with acks=0; such a
        request is not tracked (no response will come).  Raises
        TooManyRequestsError when ``inflight_requests_max`` are in flight,
        InvalidRequestError for a request the broker would refuse (see
        client/protocol/payload.py: check_request; ``checked=False`` skips that
        check, for a request its caller built valid by construction), ProtocolError
        if dead.
        """
        if self._dead:
            raise ProtocolError("connection used after a protocol error")
        inflight = self._inflight
        if len(inflight) >= self.inflight_requests_max:
            raise TooManyRequestsError(
                f"{len(inflight)} requests in flight (inflight_requests_max)"
            )
        api_key = _REQUEST_API_KEYS.get(type(body))
        if api_key is None:
            api_key = _REQUEST_API_KEYS[type(body)] = ApiKey(_tag(body))
        if checked:
            check_request(body, payload_length, wants_response)
        # Ids run 10, 11, ... 2**32 - 1, then wrap to 1, skipping any still in flight.
        correlation_id = self._next_correlation_id
        self._next_correlation_id = (correlation_id + 1) % CORRELATION_ID_MODULUS or 1
        if correlation_id in inflight:
            correlation_id = self._allocate_correlation_id()
        flags = 0 if wants_response else FLAG_NO_RESPONSE
        data = encode_head(
            api_key, api_version, correlation_id, flags, encoder.encode(body), payload_length
        )
        if wants_response:
            inflight[correlation_id] = api_key
            if (
                api_key is ApiKey.FETCH
                and isinstance(body, FetchRequest)
                and body.responses_max > 1
            ):
                self._streams.add(correlation_id)
        return correlation_id, data

    def allow_frames_up_to(self, frame_bytes_max: int) -> None:
        """Accept responses up to ``frame_bytes_max`` bytes (never less than now):
        a broker whose frame limit is above ours may send batches that big."""
        limit = min(frame_bytes_max, FRAME_BYTES_MAX_WIRE)
        if limit > self._frame_bytes_max:
            self._frame_bytes_max = limit
            self._frames.allow_frames_up_to(limit)

    def _allocate_correlation_id(self) -> int:
        # Ids run 10, 11, ... 2**32 - 1, then wrap to 1, skipping any still in flight
        # (at most inflight_requests_max of them, so the loop is bounded).
        for _ in range(len(self._inflight) + 1):
            correlation_id = self._next_correlation_id
            self._next_correlation_id = (correlation_id + 1) % CORRELATION_ID_MODULUS or 1
            if correlation_id not in self._inflight:
                return correlation_id
        raise AssertionError("no free correlation id")  # unreachable: ids > in flight

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the socket.  Raises ProtocolError if dead, or when
        the first bytes cannot be the start of a broker's response (see
        :meth:`_check_first_bytes`)."""
        if self._dead:
            raise ProtocolError("connection used after a protocol error")
        if self._first_bytes is not None:
            self._check_first_bytes(data)
        if self._whole_frame is None and not self._frames.buffered_bytes:
            # Usually a read brings exactly one whole frame: cut it right here.
            # Anything else (or anything the decoder would refuse) goes through the
            # decoder, which does every check and raises the precise error.
            size = len(data)
            if size >= FRAME_HEADER_BYTES:
                frame_length, api_key, _version, correlation_id, flags, body_length = (
                    FRAME_HEADER.unpack_from(data)
                )
                body_end = FRAME_HEADER_BYTES + body_length
                if (
                    size == LENGTH_PREFIX_BYTES + frame_length
                    and size <= self._frame_bytes_max
                    and frame_length >= HEADER_AFTER_LENGTH_BYTES
                    and not flags & ~KNOWN_FLAGS
                    and body_end <= size
                ):
                    # Copied out, as by the decoder: the caller may reuse ``data``.
                    # The payload gets its own writable buffer.
                    with memoryview(data) as view:
                        self._whole_frame = (
                            api_key,
                            correlation_id,
                            flags,
                            bytes(view[FRAME_HEADER_BYTES:body_end]),
                            memoryview(bytearray(view[body_end:])),
                        )
                    return
        self._frames.receive_data(data)

    def _check_first_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Identify the peer from its first bytes, before they are read as a frame
        length: a server of another protocol (an HTTP server says "HTTP/1.1 400")
        would otherwise be "a frame too large" or a wait for gigabytes that never
        come.  Raises ProtocolError naming what answered."""
        first = self._first_bytes
        assert first is not None
        first += bytes(data[: FRAME_HEADER_BYTES - len(first)])
        text = bytes(first)
        if len(text) >= 4 and (text.startswith(b"HTTP/"[: len(text)]) or text[:1] == b"<"):
            # A status line, or an HTTP/0.9-style answer: the error page itself.
            self._dead = True
            raise ProtocolError(
                f"{self.peer} answered like an HTTP server, not a Distributary broker"
            )
        if len(text) < FRAME_HEADER_BYTES:
            return
        self._first_bytes = None
        frame_length, api_key, _version, _correlation_id, flags, body_length = (
            FRAME_HEADER.unpack_from(text)
        )
        plausible = (
            HEADER_AFTER_LENGTH_BYTES + body_length <= frame_length
            and not flags & ~KNOWN_FLAGS
            and (api_key in _API_KEY_VALUES or api_key == ERROR_RESPONSE_TAG)
        )
        if not plausible:
            self._dead = True
            printable = text[:8].isascii() and text[:8].decode().isprintable()
            shown = repr(text[:8].decode()) if printable else text[:8].hex(" ")
            raise ProtocolError(
                f"{self.peer} is not a Distributary broker: its first bytes ({shown} ...) "
                "are not the head of a response"
            )

    def next_response(self) -> IncomingResponse | None:
        """The next response, or None.  Raises ProtocolError (the connection must
        then be closed) for a frame not flagged as a response, a response to no
        request in flight, a mismatched api key, an undecodable body, or a payload
        that breaks the payload rule."""
        if self._dead:
            raise ProtocolError("connection used after a protocol error")
        whole = self._whole_frame
        try:
            if whole is not None:
                self._whole_frame = None
                return self._decode_response(*whole)
            frame = self._frames.next_frame()
            if frame is None:
                return None
            head = frame.head
            return self._decode_response(
                head.api_key, head.correlation_id, head.flags, frame.body, frame.payload
            )
        except ProtocolError:
            self._dead = True
            raise

    def _decode_response(
        self,
        frame_api_key: int,
        correlation_id: int,
        flags: int,
        body_bytes: bytes,
        payload: memoryview,
    ) -> IncomingResponse:
        if not flags & FLAG_RESPONSE:
            raise ProtocolError("the broker sent a frame not flagged as a response")
        if flags & FLAG_NO_RESPONSE:
            raise ProtocolError("the broker sent a response flagged as wanting no response")
        more = bool(flags & FLAG_MORE)
        streams = self._streams
        if more:  # the request stays in flight: its last response comes later
            if correlation_id not in streams:
                raise ProtocolError(f"response flagged MORE to correlation id {correlation_id}")
            api_key = self._inflight.get(correlation_id)
        else:
            api_key = self._inflight.pop(correlation_id, None)
            if streams:
                streams.discard(correlation_id)
        if api_key is None:
            raise ProtocolError(f"response to unknown correlation id {correlation_id}")
        if frame_api_key != api_key:
            raise ProtocolError(
                f"response with api key {frame_api_key} to a {api_key.name} request"
            )
        try:
            body = response_decoder.decode(body_bytes)
        except _DECODE_ERRORS as decode_error:
            raise ProtocolError(f"malformed response body: {decode_error}") from decode_error
        body_type = type(body)
        tag = _RESPONSE_TAGS.get(body_type)
        if tag is None:
            tag = _RESPONSE_TAGS[body_type] = _tag(body)
        if tag != ERROR_RESPONSE_TAG and tag != api_key:
            raise ProtocolError(f"response of type {body_type.__name__} to a {api_key.name}")
        payload_length = len(payload)
        if body_type is FetchResponse:
            assert isinstance(body, FetchResponse)
            topics = body.topics
            if (
                len(topics) != 1
                or len(topics[0].partitions) != 1
                or topics[0].partitions[0].records_bytes != payload_length
            ):
                check_response(body, payload_length)  # else one partition: it adds up
        elif payload_length:
            check_response(body, payload_length)  # raises: no payload allowed
        if more and tag == ERROR_RESPONSE_TAG:
            raise ProtocolError("an error response flagged MORE")
        return IncomingResponse(correlation_id, int(api_key), body, payload, more)

    def abandon(self, correlation_id: int) -> None:
        """Forget a request whose response will never come (connection failing)."""
        self._inflight.pop(correlation_id, None)
        self._streams.discard(correlation_id)


def raise_for_error_code(code: int, message: str = "") -> None:
    """Raise the typed error for a non-zero wire error code."""
    if code != ErrorCode.NONE:
        raise error_for_code(code, message)
