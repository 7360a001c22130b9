"""The local metadata store: one node, one JSON file in the data dir.

Every key lives in memory and in ``<data_dir>/metadata.json``; each change rewrites
the whole file atomically (temp file, fsync, rename, fsync the directory, from a
worker thread) *before* it becomes visible in memory, so a reader never sees a
change that a crash could undo.  The file holds the store revision, so revisions
keep growing across restarts.  Metadata is small (topics and partition states), so
a full rewrite per change is cheap next to the fsync it needs anyway.

Leases live in this process only: a lease expires when it has not been kept alive
for its TTL (measured on trio's clock, so tests can use a mock clock), and its keys
are deleted in one revision.  A restart ends every lease: keys that were attached
to a lease are deleted when the store opens.

Watches are in-process.  The store keeps the events of the last
``history_revisions_max`` revisions (none from before the last open); a watch reads
that history from its start revision, then waits for new revisions.  A watch that
starts before the history, or falls that far behind, raises
RevisionCompactedError, as etcd does.

Concurrency: writes are serialised by one lock; reads are plain dict reads on the
event loop.  A failed file write leaves the store failed (every later call raises
the same StorageError): memory and disk may disagree after it.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
import trio

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
)
from broker.logging import get_logger
from broker.storage.atomic_file import write_atomic
from client.errors import StorageError

LOCAL_STORE_FILE: Final = "metadata.json"
LOCAL_STORE_FILE_VERSION: Final = 1
# Revisions of events kept for watches (each a few hundred bytes): enough for any
# watcher that keeps up, small next to the broker's memory.
HISTORY_REVISIONS_MAX: Final = 10_000

_logger = get_logger()


class _StoredKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


class _StoreFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: int
    revision: int
    keys: list[_StoredKey]


_decoder: Final = msgspec.json.Decoder(_StoreFile)
_encoder: Final = msgspec.json.Encoder()


@dataclass(slots=True)
class _LocalLease:
    ttl_s: int
    deadline: float
    keys: set[str] = field(default_factory=set)


def _load(path: Path) -> _StoreFile:
    """Read and validate the store file (an empty store at revision 1 if missing).
    Raises StorageError when it cannot be read or is not a valid store file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _StoreFile(version=LOCAL_STORE_FILE_VERSION, revision=1, keys=[])
    except OSError as error:
        raise StorageError(f"cannot read metadata store {path}: {error}") from error
    try:
        stored = _decoder.decode(data)
    except msgspec.DecodeError as error:
        raise StorageError(f"metadata store {path} is not valid: {error}") from error
    if stored.version != LOCAL_STORE_FILE_VERSION:
        raise StorageError(f"metadata store {path} has unknown version {stored.version}")
    if stored.revision < 1:
        raise StorageError(f"metadata store {path} has bad revision {stored.revision}")
    seen: set[str] = set()
    for item in stored.keys:
        if not 1 <= item.create_revision <= item.mod_revision <= stored.revision:
            raise StorageError(f"metadata store {path}: key {item.key!r} has bad revisions")
        if item.key in seen:
            raise StorageError(f"metadata store {path}: key {item.key!r} appears twice")
        seen.add(item.key)
    return stored


class LocalStore:
    """The single-node MetadataStore (module docstring).  Open with :func:`open_local_store`."""

    def __init__(
        self,
        path: Path,
        stored: _StoreFile,
        *,
        durable: bool = True,
        history_revisions_max: int = HISTORY_REVISIONS_MAX,
    ) -> None:
        assert history_revisions_max >= 1
        self._path = path
        self._durable = durable
        self._history_revisions_max = history_revisions_max
        self._items: dict[str, KeyValue] = {
            item.key: KeyValue(
                item.key, item.value, item.create_revision, item.mod_revision, item.lease
            )
            for item in stored.keys
        }
        self._revision = stored.revision
        # Events of revisions compact_revision .. revision, one batch each.
        self._history: deque[WatchBatch] = deque()
        self._compact_revision = self._revision + 1
        self._leases: dict[int, _LocalLease] = {}
        self._lease_ids = itertools.count(1)
        self._write_lock = trio.Lock()
        self._changed = trio.Event()
        self._lease_granted = trio.Event()
        self._failed: StorageError | None = None
        self._closed = False

    # -- reads ------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        await self._checkpoint()
        return self._items.get(key)

    async def read_prefix(self, prefix: str) -> Snapshot:
        await self._checkpoint()
        items = sorted(
            (item for key, item in self._items.items() if key.startswith(prefix)),
            key=lambda item: item.key,
        )
        return Snapshot(self._revision, tuple(items))

    async def current_revision(self) -> int:
        await self._checkpoint()
        return self._revision

    # -- writes -----------------------------------------------------------------------

    async def put(
        self, key: str, value: bytes, *, expected_version: int | None = None, lease: int = 0
    ) -> int:
        compares = [] if expected_version is None else [Compare(key, expected_version)]
        return await self.txn(compares, [Put(key, value, lease)])

    async def delete(self, key: str, *, expected_version: int | None = None) -> int:
        compares = [] if expected_version is None else [Compare(key, expected_version)]
        return await self.txn(compares, [Delete(key)])

    async def txn(self, compares: Sequence[Compare], operations: Sequence[Operation]) -> int:
        check_txn_shape(compares, operations)
        async with self._write_lock:
            self._check_usable()
            failed = [compare for compare in compares if not self._holds(compare)]
            if failed:
                actual = {compare.key: self._version_of(compare) for compare in compares}
                names = ", ".join(sorted({compare.key for compare in failed}))
                raise VersionConflictError(f"version conflict on {names}", actual)
            now = trio.current_time()
            for operation in operations:
                if isinstance(operation, Put) and operation.lease != 0:
                    self._live_lease(operation.lease, now)
            await self._commit(operations)
            return self._revision

    async def compact(self, revision: int) -> None:
        async with self._write_lock:
            self._check_usable()
            if revision > self._revision:
                raise MetadataStoreError(
                    f"cannot compact at {revision}: the store is at revision {self._revision}"
                )
            for _ in range(len(self._history)):
                if self._compact_revision >= revision:
                    break
                self._history.popleft()
                self._compact_revision += 1

    # -- leases -----------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> Lease:
        assert ttl_s >= 1
        await self._checkpoint()
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = _LocalLease(ttl_s, trio.current_time() + ttl_s)
        self._lease_granted.set()
        self._lease_granted = trio.Event()
        return Lease(lease_id, ttl_s)

    async def keep_alive(self, lease_id: int) -> int:
        await self._checkpoint()
        now = trio.current_time()
        lease = self._live_lease(lease_id, now)
        lease.deadline = now + lease.ttl_s
        return lease.ttl_s

    async def revoke_lease(self, lease_id: int) -> None:
        await self._end_lease(lease_id)

    def _live_lease(self, lease_id: int, now: float) -> _LocalLease:
        """The lease if it is alive.  Raises LeaseLostError (also when its deadline
        passed but the expiry task has not removed it yet)."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.deadline <= now:
            raise LeaseLostError(lease_id)
        return lease

    async def _end_lease(self, lease_id: int, *, expiring: bool = False) -> None:
        """Delete the lease's keys (one revision) and forget it.  ``expiring``: the
        expiry task's call, which does nothing once the store is closed."""
        async with self._write_lock:
            if expiring and self._closed:
                return
            self._check_usable()
            lease = self._leases.get(lease_id)
            if lease is None:
                return
            if lease.keys:
                await self._commit([Delete(key) for key in sorted(lease.keys)])
            del self._leases[lease_id]

    async def run_lease_expiry(self) -> None:
        """Expire leases whose deadline passed; runs until cancelled.  A lease past
        its deadline can no longer be renewed, so no keepalive races this."""
        while True:
            now = trio.current_time()
            for lease_id in [i for i, lease in self._leases.items() if lease.deadline <= now]:
                _logger.info("metadata lease expired", lease=f"{lease_id:x}")
                await self._end_lease(lease_id, expiring=True)
            next_deadline = min(
                (lease.deadline for lease in self._leases.values()), default=math.inf
            )
            with trio.move_on_at(next_deadline):
                await self._lease_granted.wait()

    # -- watches ----------------------------------------------------------------------

    @asynccontextmanager
    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[_LocalWatch]:
        assert start_revision >= 1
        yield _LocalWatch(self, prefix, start_revision)

    async def _next_batch(self, prefix: str, cursor: int) -> tuple[WatchBatch, int]:
        """The next batch with events under ``prefix`` from revision ``cursor`` on, and
        the cursor after it.  Waits for new revisions.  Raises RevisionCompactedError,
        StoreUnavailableError (the store closed)."""
        await trio.lowlevel.checkpoint()
        while True:
            if self._closed:
                raise StoreUnavailableError("the local metadata store is closed")
            if cursor < self._compact_revision:
                raise RevisionCompactedError(cursor, self._compact_revision)
            for _ in range(self._revision + 1 - cursor):
                batch = self._history[cursor - self._compact_revision]
                assert batch.revision == cursor
                cursor += 1
                events = tuple(event for event in batch.events if event.key.startswith(prefix))
                if events:
                    return WatchBatch(batch.revision, events), cursor
            changed = self._changed
            await changed.wait()

    # -- internals --------------------------------------------------------------------

    async def _checkpoint(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_usable()

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise StoreUnavailableError("the local metadata store is closed")

    def _version_of(self, compare: Compare) -> int:
        item = self._items.get(compare.key)
        if item is None:
            return ABSENT
        return item.mod_revision if compare.target == "mod" else item.create_revision

    def _holds(self, compare: Compare) -> bool:
        return self._version_of(compare) == compare.version

    async def _commit(self, operations: Sequence[Operation]) -> None:
        """Apply ``operations`` as one new revision: file first, then memory, then
        wake watchers.  Deletes of absent keys do nothing; a change of nothing keeps
        the revision.  Called with the write lock held.  Raises StorageError."""
        assert self._write_lock.locked()
        revision = self._revision + 1
        items = dict(self._items)
        events: list[WatchEvent] = []
        for operation in operations:
            previous = items.get(operation.key)
            if isinstance(operation, Put):
                create_revision = revision if previous is None else previous.create_revision
                items[operation.key] = KeyValue(
                    operation.key, operation.value, create_revision, revision, operation.lease
                )
                events.append(
                    WatchEvent(
                        EventKind.PUT,
                        operation.key,
                        operation.value,
                        create_revision,
                        revision,
                        operation.lease,
                    )
                )
            elif previous is not None:
                del items[operation.key]
                events.append(WatchEvent(EventKind.DELETE, operation.key, b"", 0, revision))
        if not events:
            return
        stored = _StoreFile(
            version=LOCAL_STORE_FILE_VERSION,
            revision=revision,
            keys=[
                _StoredKey(i.key, i.value, i.create_revision, i.mod_revision, i.lease)
                for i in items.values()
            ],
        )
        data = _encoder.encode(stored)
        try:
            await trio.to_thread.run_sync(self._write_file, data)
        except StorageError as error:
            self._failed = error
            raise
        # Memory follows the file, with no checkpoint in between.
        for event in events:
            previous = self._items.get(event.key)
            if previous is not None and previous.lease != 0:
                self._leases[previous.lease].keys.discard(event.key)
            if event.kind is EventKind.PUT and event.lease != 0:
                self._leases[event.lease].keys.add(event.key)
        self._items = items
        self._revision = revision
        self._history.append(WatchBatch(revision, tuple(events)))
        if len(self._history) > self._history_revisions_max:
            self._history.popleft()
            self._compact_revision += 1
        self._changed.set()
        self._changed = trio.Event()

    def _write_file(self, data: bytes) -> None:
        write_atomic(self._path, data, durable=self._durable)

    async def _drop_orphaned_lease_keys(self) -> None:
        """Delete, in one revision, the keys attached to leases of an earlier run
        (every lease ended with it)."""
        orphans = sorted(key for key, item in self._items.items() if item.lease != 0)
        if not orphans:
            return
        for key in orphans:
            lease_id = self._items[key].lease
            self._leases.setdefault(lease_id, _LocalLease(1, -math.inf)).keys.add(key)
        async with self._write_lock:
            await self._commit([Delete(key) for key in orphans])
        self._leases.clear()
        _logger.info("metadata keys of ended leases deleted", keys=len(orphans))

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    def check_invariants(self) -> None:
        assert self._revision >= 1
        assert self._compact_revision + len(self._history) == self._revision + 1
        for offset, batch in enumerate(self._history):
            assert batch.revision == self._compact_revision + offset
            assert batch.events
        for key, item in self._items.items():
            assert item.key == key
            assert 1 <= item.create_revision <= item.mod_revision <= self._revision
            if item.lease != 0:
                assert key in self._leases[item.lease].keys
        for lease in self._leases.values():
            for key in lease.keys:
                assert self._items[key].lease != 0


class _LocalWatch:
    """The WatchStream of a LocalStore watch."""

    def __init__(self, store: LocalStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._cursor = start_revision

    def __aiter__(self) -> _LocalWatch:
        return self

    async def __anext__(self) -> WatchBatch:
        batch, self._cursor = await self._store._next_batch(self._prefix, self._cursor)
        return batch


@asynccontextmanager
async def open_local_store(
    path: Path, *, durable: bool = True, history_revisions_max: int = HISTORY_REVISIONS_MAX
) -> AsyncIterator[LocalStore]:
    """Open (or create) the store file at ``path`` and run its lease expiry.
    Raises StorageError when the file cannot be read or is not valid."""
    stored = await trio.to_thread.run_sync(_load, path)
    store = LocalStore(path, stored, durable=durable, history_revisions_max=history_revisions_max)
    await store._drop_orphaned_lease_keys()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run_lease_expiry)
            try:
                yield store
            finally:
                store.close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The caller's own error (or the expiry task's), not wrapped by our nursery.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
