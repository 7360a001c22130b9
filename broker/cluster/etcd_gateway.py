"""A thin client for etcd's v3 JSON gateway (``POST /v3/...``) over httpx, on trio.

No maintained etcd client runs under trio, but etcd serves its gRPC API as JSON
over HTTP, and httpx runs on trio through anyio.  This module does the transport:
which endpoint to ask, timeouts, retries, and the typed messages (msgspec Structs).
:mod:`broker.cluster.etcd_store` builds the MetadataStore on it.

The gateway's quirks: keys and values are base64 (msgspec does that for
``bytes`` fields); 64-bit integers come back as strings (decoded with
``strict=False``); default values are omitted (so every field has a default);
streaming answers (watch, keepalive) are newline-separated ``{"result": ...}`` or
``{"error": ...}`` objects.

Endpoints and retries: a request goes to the endpoint that answered last.  When it
cannot connect, times out (``request_timeout_s``: when the etcd leader dies,
requests in flight otherwise hang for etcd's own 7 s) or etcd answers
"unavailable", the request moves to the next endpoint, for at most
``attempts_max`` attempts.  A request that was sent but not answered is retried
only when repeating it is harmless (reads, unconditional writes, lease calls); a
conditional write raises WriteOutcomeUnknownError instead, since it may have been
applied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import httpx
import msgspec
import trio

from broker.cluster.store import (
    MetadataStoreError,
    StoreUnavailableError,
    WriteOutcomeUnknownError,
)
from broker.logging import get_logger

# Long enough for a loaded etcd (p99 of a CAS is a few ms), short enough that a
# request stuck on a dead leader moves on well before etcd's own 7 s.
REQUEST_TIMEOUT_S: Final = 1.0
# Pause between two rounds over every endpoint, so a restarting etcd gets a moment.
ROUND_PAUSE_S: Final = 0.1
# gRPC status codes etcd puts in the gateway's error bodies.
GRPC_NOT_FOUND: Final = 5
GRPC_OUT_OF_RANGE: Final = 11
GRPC_DEADLINE_EXCEEDED: Final = 4
GRPC_UNAVAILABLE: Final = 14
_UNAVAILABLE_CODES: Final = frozenset({GRPC_DEADLINE_EXCEEDED, GRPC_UNAVAILABLE})

_logger = get_logger()
T = TypeVar("T")


class EtcdRequestError(MetadataStoreError):
    """etcd refused the request (the store maps the codes it knows to typed errors)."""

    def __init__(self, grpc_code: int, detail: str) -> None:
        super().__init__(f"etcd refused the request: {detail} (gRPC code {grpc_code})")
        self.grpc_code = grpc_code
        self.detail = detail


# -- messages (only the fields we read; every field has a default: the gateway omits
# default values) ---------------------------------------------------------------------


class Header(msgspec.Struct, frozen=True):
    revision: int = 0


class EtcdKeyValue(msgspec.Struct, frozen=True):
    key: bytes = b""
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    lease: int = 0


class RangeResponse(msgspec.Struct, frozen=True):
    header: Header = Header()
    kvs: list[EtcdKeyValue] = []
    count: int = 0


class PutResponse(msgspec.Struct, frozen=True):
    header: Header = Header()


class DeleteRangeResponse(msgspec.Struct, frozen=True):
    header: Header = Header()
    deleted: int = 0


class ResponseOp(msgspec.Struct, frozen=True):
    response_range: RangeResponse | None = None


class TxnResponse(msgspec.Struct, frozen=True):
    header: Header = Header()
    succeeded: bool = False
    responses: list[ResponseOp] = []


class LeaseGrantResponse(msgspec.Struct, frozen=True):
    header: Header = Header()
    lease_id: int = msgspec.field(name="ID", default=0)
    ttl_s: int = msgspec.field(name="TTL", default=0)
    error: str = ""


class LeaseKeepAliveResponse(msgspec.Struct, frozen=True):
    lease_id: int = msgspec.field(name="ID", default=0)
    ttl_s: int = msgspec.field(name="TTL", default=0)


class EmptyResponse(msgspec.Struct, frozen=True):
    header: Header = Header()


class EtcdWatchEvent(msgspec.Struct, frozen=True):
    type: str = "PUT"
    kv: EtcdKeyValue = EtcdKeyValue()


class WatchResponse(msgspec.Struct, frozen=True):
    header: Header = Header()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    events: list[EtcdWatchEvent] = []


class StreamError(msgspec.Struct, frozen=True):
    grpc_code: int = 0
    http_code: int = 0
    message: str = ""


class WatchMessage(msgspec.Struct, frozen=True):
    result: WatchResponse | None = None
    error: StreamError | None = None


class KeepAliveMessage(msgspec.Struct, frozen=True):
    result: LeaseKeepAliveResponse | None = None
    error: StreamError | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    code: int = 0
    message: str = ""


_encoder: Final = msgspec.json.Encoder()


def decode(data: bytes | str, message_type: type[T]) -> T:
    """Decode one gateway JSON message.  Raises MetadataStoreError when it is not one."""
    try:
        return msgspec.json.decode(data, type=message_type, strict=False)
    except msgspec.DecodeError as error:
        raise MetadataStoreError(f"etcd sent an unreadable answer: {error}") from error


class EtcdGateway:
    """Requests to a list of etcd endpoints (module docstring).  ``http`` is owned by
    the caller, who closes it."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_urls: Sequence[str],
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        attempts_max: int | None = None,
    ) -> None:
        assert base_urls
        self._http = http
        self._base_urls = tuple(base_urls)
        self._request_timeout_s = request_timeout_s
        self._attempts_max = attempts_max or 2 * len(self._base_urls)
        self._current = 0

    @property
    def request_timeout_s(self) -> float:
        return self._request_timeout_s

    def endpoint(self) -> str:
        """The endpoint the next request goes to."""
        return self._base_urls[self._current]

    def rotate(self, failed_endpoint: str) -> None:
        """Move on from ``failed_endpoint`` (unless another task already did)."""
        if self._base_urls[self._current] == failed_endpoint:
            self._current = (self._current + 1) % len(self._base_urls)

    async def call(
        self, path: str, body: dict[str, Any], response_type: type[T], *, resend_safe: bool
    ) -> T:
        """POST ``body`` to ``path`` and decode the answer as ``response_type``.

        ``resend_safe``: repeating the request after it was sent is harmless.
        Raises StoreUnavailableError (no endpoint answered), WriteOutcomeUnknownError
        (not ``resend_safe`` and the outcome is unknown), EtcdRequestError (etcd
        refused it).
        """
        content = _encoder.encode(body)
        last_problem = "no attempt"
        for attempt in range(self._attempts_max):
            if attempt > 0 and attempt % len(self._base_urls) == 0:
                await trio.sleep(ROUND_PAUSE_S)
            endpoint = self.endpoint()
            try:
                response = await self._http.post(
                    endpoint + path, content=content, timeout=self._request_timeout_s
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
                last_problem = f"{endpoint}: cannot connect ({error!r})"
                self.rotate(endpoint)
                continue
            except httpx.TransportError as error:
                last_problem = f"{endpoint}: no answer ({error!r})"
                self.rotate(endpoint)
                if not resend_safe:
                    raise WriteOutcomeUnknownError(
                        f"etcd did not answer a conditional write: {last_problem}"
                    ) from error
                continue
            if response.status_code == 200:
                return decode(response.content, response_type)
            error_body = self._error_body(response)
            if error_body.code in _UNAVAILABLE_CODES or response.status_code >= 500:
                last_problem = f"{endpoint}: {error_body.message or response.status_code}"
                self.rotate(endpoint)
                if not resend_safe:
                    raise WriteOutcomeUnknownError(
                        f"etcd could not complete a conditional write: {last_problem}"
                    )
                continue
            raise EtcdRequestError(error_body.code, error_body.message)
        _logger.warning("etcd unavailable", path=path, problem=last_problem)
        raise StoreUnavailableError(
            f"no etcd endpoint answered after {self._attempts_max} attempts: {last_problem}"
        )

    @staticmethod
    def _error_body(response: httpx.Response) -> ErrorBody:
        try:
            return msgspec.json.decode(response.content, type=ErrorBody, strict=False)
        except msgspec.DecodeError:
            return ErrorBody(0, f"HTTP {response.status_code}")

    @asynccontextmanager
    async def open_stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[StreamLines]:
        """Open a streaming POST on the current endpoint; yields its lines.

        Raises StoreUnavailableError when the endpoint cannot be reached or answers
        with an error status (the caller rotates and retries), EtcdRequestError.
        """
        endpoint = self.endpoint()
        timeout = httpx.Timeout(self._request_timeout_s, read=None)
        request = self._http.build_request(
            "POST", endpoint + path, content=_encoder.encode(body), timeout=timeout
        )
        response: httpx.Response | None = None
        try:
            # The stream may stay quiet for long, but its headers come at once.
            with trio.move_on_after(self._request_timeout_s):
                response = await self._http.send(request, stream=True)
        except httpx.TransportError as error:
            self.rotate(endpoint)
            raise StoreUnavailableError(f"{endpoint}: cannot open a stream ({error!r})") from error
        if response is None:
            self.rotate(endpoint)
            raise StoreUnavailableError(f"{endpoint}: no answer to a stream request")
        try:
            if response.status_code != 200:
                await response.aread()
                error_body = self._error_body(response)
                self.rotate(endpoint)
                if error_body.code in _UNAVAILABLE_CODES or response.status_code >= 500:
                    raise StoreUnavailableError(f"{endpoint}: {error_body.message}")
                raise EtcdRequestError(error_body.code, error_body.message)
            yield StreamLines(endpoint, response.aiter_lines())
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()


class StreamLines:
    """The lines of one streaming answer; ``endpoint`` is where it comes from."""

    def __init__(self, endpoint: str, lines: AsyncIterator[str]) -> None:
        self.endpoint = endpoint
        self._lines = lines

    async def next_line(self) -> str | None:
        """The next non-empty line, or None when the stream ended or broke (the
        endpoint died, the connection dropped)."""
        while True:
            try:
                line = await self._lines.__anext__()
            except StopAsyncIteration:
                return None
            except httpx.TransportError as error:
                _logger.info("etcd stream broken", endpoint=self.endpoint, error=repr(error))
                return None
            if line.strip():
                return line
