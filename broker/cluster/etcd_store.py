"""The etcd metadata store: every key under ``<prefix>/`` in an etcd cluster.

Each MetadataStore call is one gateway request (:mod:`broker.cluster.etcd_gateway`):
reads are ``kv/range`` (linearizable), unconditional writes ``kv/put`` and
``kv/deleterange``, conditional writes and transactions one ``kv/txn`` whose
failure branch reads the compared keys, so a VersionConflictError carries their
actual versions.  A key's version is etcd's ``mod_revision``; the store revision is
etcd's revision.  Leases are etcd leases; a keepalive answered without a TTL means
the lease is gone.

A watch is one streaming ``POST /v3/watch`` read in the consumer's task (no
background task, no buffer beyond the current answer).  It remembers the revision
after the last batch it delivered and, when the stream ends or breaks (an endpoint
died), reopens it on the next endpoint from there, pausing a little longer after
each failed attempt.  etcd cancels a watch whose start revision was compacted: that
raises RevisionCompactedError.  Empty answers that are not the ``created`` one are
progress notifications: every event up to their revision was sent, so a resume can
start after it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import httpx
import trio

from broker.cluster.etcd_gateway import (
    GRPC_NOT_FOUND,
    GRPC_OUT_OF_RANGE,
    REQUEST_TIMEOUT_S,
    DeleteRangeResponse,
    EmptyResponse,
    EtcdGateway,
    EtcdKeyValue,
    EtcdRequestError,
    EtcdWatchEvent,
    KeepAliveMessage,
    LeaseGrantResponse,
    PutResponse,
    RangeResponse,
    StreamLines,
    TxnResponse,
    WatchMessage,
    WatchResponse,
    decode,
)
from broker.cluster.etcd_url import EtcdUrl
from broker.cluster.store import (
    ABSENT,
    Compare,
    Delete,
    EventKind,
    KeyValue,
    Lease,
    LeaseLostError,
    MetadataStoreError,
    Operation,
    Put,
    RevisionCompactedError,
    Snapshot,
    StoreUnavailableError,
    VersionConflictError,
    WatchBatch,
    WatchEvent,
    check_txn_shape,
    prefix_end,
)
from broker.logging import get_logger

# Pauses before reopening a broken watch: none after a healthy stream, then
# doubling up to the cap, so a dead cluster costs a request per second per watch.
WATCH_RETRY_FIRST_S: Final = 0.05
WATCH_RETRY_MAX_S: Final = 1.0
_LEASE_NOT_FOUND: Final = "requested lease not found"
# Each open watch holds one HTTP connection; requests share the rest.  A broker
# needs a handful of watches and a few requests in flight.
HTTP_CONNECTIONS_MAX: Final = 64
HTTP_IDLE_CONNECTIONS_MAX: Final = 16

_logger = get_logger()


class EtcdStore:
    """The MetadataStore over etcd (module docstring).  Open with :func:`open_etcd_store`."""

    def __init__(self, gateway: EtcdGateway, prefix: str) -> None:
        assert prefix and not prefix.endswith("/")
        self._gateway = gateway
        self._prefix = prefix + "/"
        self._prefix_bytes = self._prefix.encode()

    @property
    def prefix(self) -> str:
        """The cluster prefix every key lives under, ending with "/"."""
        return self._prefix

    # -- key mapping ------------------------------------------------------------------

    def _full_key(self, key: str) -> bytes:
        return self._prefix_bytes + key.encode()

    def _relative_key(self, full_key: bytes) -> str:
        if not full_key.startswith(self._prefix_bytes):
            raise MetadataStoreError(f"etcd sent key {full_key!r} outside {self._prefix!r}")
        return full_key[len(self._prefix_bytes) :].decode("utf-8", "surrogateescape")

    def _key_value(self, kv: EtcdKeyValue) -> KeyValue:
        return KeyValue(
            self._relative_key(kv.key), kv.value, kv.create_revision, kv.mod_revision, kv.lease
        )

    # -- reads ------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        response = await self._gateway.call(
            "/v3/kv/range", {"key": self._full_key(key)}, RangeResponse, resend_safe=True
        )
        return self._key_value(response.kvs[0]) if response.kvs else None

    async def read_prefix(self, prefix: str) -> Snapshot:
        full = self._full_key(prefix)
        response = await self._gateway.call(
            "/v3/kv/range",
            {"key": full, "range_end": prefix_end(full)},
            RangeResponse,
            resend_safe=True,
        )
        items = tuple(self._key_value(kv) for kv in response.kvs)
        return Snapshot(response.header.revision, items)

    async def current_revision(self) -> int:
        body = {"key": self._prefix_bytes, "count_only": True}
        response = await self._gateway.call("/v3/kv/range", body, RangeResponse, resend_safe=True)
        return response.header.revision

    # -- writes -----------------------------------------------------------------------

    async def put(
        self, key: str, value: bytes, *, expected_version: int | None = None, lease: int = 0
    ) -> int:
        if expected_version is not None:
            return await self.txn([Compare(key, expected_version)], [Put(key, value, lease)])
        check_txn_shape([], [Put(key, value, lease)])
        body: dict[str, Any] = {"key": self._full_key(key), "value": value}
        if lease:
            body["lease"] = lease
        try:
            response = await self._gateway.call("/v3/kv/put", body, PutResponse, resend_safe=True)
        except EtcdRequestError as error:
            raise self._lease_error(error, [lease]) from error
        return response.header.revision

    async def delete(self, key: str, *, expected_version: int | None = None) -> int:
        if expected_version is not None:
            return await self.txn([Compare(key, expected_version)], [Delete(key)])
        response = await self._gateway.call(
            "/v3/kv/deleterange",
            {"key": self._full_key(key)},
            DeleteRangeResponse,
            resend_safe=True,
        )
        return response.header.revision

    async def txn(self, compares: Sequence[Compare], operations: Sequence[Operation]) -> int:
        check_txn_shape(compares, operations)
        compare_keys = sorted({compare.key for compare in compares})
        body = {
            "compare": [self._compare_body(compare) for compare in compares],
            "success": [self._operation_body(operation) for operation in operations],
            "failure": [{"request_range": {"key": self._full_key(key)}} for key in compare_keys],
        }
        try:
            response = await self._gateway.call(
                "/v3/kv/txn", body, TxnResponse, resend_safe=not compares
            )
        except EtcdRequestError as error:
            leases = [op.lease for op in operations if isinstance(op, Put) and op.lease]
            raise self._lease_error(error, leases) from error
        if response.succeeded or not compares:
            return response.header.revision
        current: dict[str, KeyValue] = {}
        for op_response in response.responses:
            if op_response.response_range is not None:
                for kv in op_response.response_range.kvs:
                    item = self._key_value(kv)
                    current[item.key] = item
        actual: dict[str, int] = {}
        failed: list[str] = []
        for compare in compares:
            found = current.get(compare.key)
            version = ABSENT
            if found is not None:
                version = found.mod_revision if compare.target == "mod" else found.create_revision
            actual[compare.key] = version
            if version != compare.version:
                failed.append(compare.key)
        raise VersionConflictError(
            f"version conflict on {', '.join(sorted(set(failed))) or 'a compared key'}", actual
        )

    def _compare_body(self, compare: Compare) -> dict[str, Any]:
        if compare.target == "mod":
            return {
                "key": self._full_key(compare.key),
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": compare.version,
            }
        return {
            "key": self._full_key(compare.key),
            "target": "CREATE",
            "result": "EQUAL",
            "create_revision": compare.version,
        }

    def _operation_body(self, operation: Operation) -> dict[str, Any]:
        if isinstance(operation, Delete):
            return {"request_delete_range": {"key": self._full_key(operation.key)}}
        put: dict[str, Any] = {"key": self._full_key(operation.key), "value": operation.value}
        if operation.lease:
            put["lease"] = operation.lease
        return {"request_put": put}

    @staticmethod
    def _lease_error(error: EtcdRequestError, leases: Sequence[int]) -> MetadataStoreError:
        if error.grpc_code == GRPC_NOT_FOUND and _LEASE_NOT_FOUND in error.detail:
            return LeaseLostError(leases[0] if leases else 0)
        return error

    async def compact(self, revision: int) -> None:
        body = {"revision": revision, "physical": True}
        try:
            await self._gateway.call("/v3/kv/compaction", body, EmptyResponse, resend_safe=True)
        except EtcdRequestError as error:
            if error.grpc_code == GRPC_OUT_OF_RANGE and "has been compacted" in error.detail:
                return
            raise

    # -- leases -----------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> Lease:
        assert ttl_s >= 1
        response = await self._gateway.call(
            "/v3/lease/grant", {"TTL": ttl_s}, LeaseGrantResponse, resend_safe=True
        )
        if response.error or response.lease_id == 0:
            raise MetadataStoreError(f"etcd granted no lease: {response.error or 'no id'}")
        return Lease(response.lease_id, response.ttl_s)

    async def keep_alive(self, lease_id: int) -> int:
        message = await self._gateway.call(
            "/v3/lease/keepalive", {"ID": lease_id}, KeepAliveMessage, resend_safe=True
        )
        if message.error is not None:
            raise StoreUnavailableError(f"etcd keepalive failed: {message.error.message}")
        # An expired lease is answered with its id and no TTL.
        if message.result is None or message.result.ttl_s <= 0:
            raise LeaseLostError(lease_id)
        return message.result.ttl_s

    async def revoke_lease(self, lease_id: int) -> None:
        try:
            await self._gateway.call(
                "/v3/lease/revoke", {"ID": lease_id}, EmptyResponse, resend_safe=True
            )
        except EtcdRequestError as error:
            if error.grpc_code == GRPC_NOT_FOUND:
                return
            raise

    # -- watches ----------------------------------------------------------------------

    @asynccontextmanager
    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[EtcdWatch]:
        assert start_revision >= 1
        watch = EtcdWatch(self, prefix, start_revision)
        try:
            yield watch
        finally:
            await watch.disconnect()

    def _watch_body(self, prefix: str, start_revision: int) -> dict[str, Any]:
        full = self._full_key(prefix)
        return {
            "create_request": {
                "key": full,
                "range_end": prefix_end(full),
                "start_revision": start_revision,
                "progress_notify": True,
            }
        }

    def _batches(self, events: Sequence[EtcdWatchEvent]) -> list[WatchBatch]:
        """Group one answer's events into one batch per revision (etcd never splits a
        revision across answers unless asked to fragment)."""
        batches: list[WatchBatch] = []
        current: list[WatchEvent] = []
        for event in events:
            kv = event.kv
            kind = EventKind.DELETE if event.type == "DELETE" else EventKind.PUT
            watch_event = WatchEvent(
                kind,
                self._relative_key(kv.key),
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.lease,
            )
            if current and current[-1].mod_revision != watch_event.mod_revision:
                batches.append(WatchBatch(current[-1].mod_revision, tuple(current)))
                current = []
            current.append(watch_event)
        if current:
            batches.append(WatchBatch(current[-1].mod_revision, tuple(current)))
        return batches


class EtcdWatch:
    """The WatchStream of an EtcdStore watch (module docstring)."""

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next_revision = start_revision
        self._pending: deque[WatchBatch] = deque()
        self._stack: AsyncExitStack | None = None
        self._lines: StreamLines | None = None
        self._failed_opens = 0

    @property
    def next_revision(self) -> int:
        """The revision the watch resumes from when it reconnects."""
        return self._next_revision

    def __aiter__(self) -> EtcdWatch:
        return self

    async def __anext__(self) -> WatchBatch:
        """The next batch.  Raises RevisionCompactedError, EtcdRequestError (etcd
        refused to open the watch), MetadataStoreError (an unreadable answer)."""
        while True:
            if self._pending:
                await trio.lowlevel.checkpoint()
                return self._pending.popleft()
            if self._lines is None:
                await self._open()
                continue
            line = await self._lines.next_line()
            if line is None:
                # A watch stream only ends when its endpoint goes away: try another.
                self._store._gateway.rotate(self._lines.endpoint)
                await self.disconnect()
                continue
            message = decode(line, WatchMessage)
            if message.error is not None or message.result is None:
                detail = message.error.message if message.error else "empty answer"
                _logger.info("etcd watch error", endpoint=self._lines.endpoint, error=detail)
                self._store._gateway.rotate(self._lines.endpoint)
                await self.disconnect()
                continue
            if message.result.canceled:
                if message.result.compact_revision:
                    raise RevisionCompactedError(
                        self._next_revision, message.result.compact_revision
                    )
                # Any other cancel (etcd shutting down, a member without a leader):
                # reopen, pausing as after a failed open.
                _logger.info(
                    "etcd cancelled a watch",
                    endpoint=self._lines.endpoint,
                    reason=message.result.cancel_reason,
                )
                self._store._gateway.rotate(self._lines.endpoint)
                await self.disconnect()
                continue
            self._take(message.result)

    def _take(self, response: WatchResponse) -> None:
        """Queue the batches of one watch answer; advance the resume revision."""
        if response.created:
            self._failed_opens = 0
        if response.events:
            for batch in self._store._batches(response.events):
                if batch.revision >= self._next_revision:
                    self._pending.append(batch)
                    self._next_revision = batch.revision + 1
        elif not response.created and response.header.revision >= self._next_revision:
            self._next_revision = response.header.revision + 1

    async def _open(self) -> None:
        """Open the stream from ``next_revision``, after a pause if the last opens
        failed.  Retries until it opens (a watch waits out an etcd outage)."""
        while True:
            if self._failed_opens:
                pause_s = WATCH_RETRY_FIRST_S * 2 ** (self._failed_opens - 1)
                await trio.sleep(min(pause_s, WATCH_RETRY_MAX_S))
            self._failed_opens += 1
            stack = AsyncExitStack()
            body = self._store._watch_body(self._prefix, self._next_revision)
            try:
                self._lines = await stack.enter_async_context(
                    self._store._gateway.open_stream("/v3/watch", body)
                )
            except StoreUnavailableError as error:
                _logger.info("etcd watch cannot open", error=str(error))
                await stack.aclose()
                continue
            self._stack = stack
            return

    async def disconnect(self) -> None:
        """Close the stream (the next read reopens it)."""
        stack, self._stack, self._lines = self._stack, None, None
        if stack is not None:
            await stack.aclose()


@asynccontextmanager
async def open_etcd_store(
    url: EtcdUrl, *, request_timeout_s: float | None = None, local_address: str | None = None
) -> AsyncIterator[EtcdStore]:
    """An EtcdStore for ``url`` (no request is made: the first call finds out whether
    etcd is reachable).  ``local_address``: bind outgoing connections to this address
    (a broker's own listen address, so firewall rules can single it out)."""
    gateway_timeout_s = REQUEST_TIMEOUT_S if request_timeout_s is None else request_timeout_s
    limits = httpx.Limits(
        max_connections=HTTP_CONNECTIONS_MAX, max_keepalive_connections=HTTP_IDLE_CONNECTIONS_MAX
    )
    transport = httpx.AsyncHTTPTransport(limits=limits, local_address=local_address)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
        gateway = EtcdGateway(http, url.base_urls(), request_timeout_s=gateway_timeout_s)
        yield EtcdStore(gateway, url.prefix)
