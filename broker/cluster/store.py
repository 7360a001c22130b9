"""The metadata store interface: what the broker needs of its cluster metadata.

A store maps string keys to byte values.  Every change bumps one store-wide
**revision** (an int that only grows); each key remembers the revision that created
it (``create_revision``) and the one that last changed it (``mod_revision``).  The
``mod_revision`` is the key's **version**: a conditional write names the version it
expects, and version 0 means "the key is absent".  This is etcd's model, so the etcd
store maps onto it directly and the local store keeps its own counter.

Operations:

- reads: one key (:meth:`MetadataStore.get`) or every key under a prefix with the
  revision they were read at (:meth:`MetadataStore.read_prefix`);
- compare-and-swap writes: :meth:`put` / :meth:`delete` with an expected version, and
  :meth:`txn` (compare several keys' versions, then put/delete several keys in one
  revision) for fenced writes;
- a prefix watch from a revision (:meth:`watch`): an async iterator of
  :class:`WatchBatch`, all events of one revision in one batch, in revision order;
- leases: a key put with a lease vanishes when the lease expires or is revoked (all
  of one lease's keys in one revision).

Keys are relative: the etcd store puts them under its cluster prefix.  Every method
raises :class:`StoreUnavailableError` when the store cannot be reached; the other
errors are listed per method.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, Protocol

from client.errors import DistributaryError, ErrorCode

# etcd's limit (--max-txn-ops default); the local store enforces the same so code
# written against one store works on the other.
TXN_OPERATIONS_MAX: Final = 128
# etcd's default --max-request-bytes is 1.5 MiB; keep values well under it.
VALUE_BYTES_MAX: Final = 1024 * 1024
# Version meaning "the key does not exist" in a compare.
ABSENT: Final = 0


# -- errors -----------------------------------------------------------------------------


class MetadataStoreError(DistributaryError):
    """The metadata store refused or failed an operation."""

    code: ClassVar[ErrorCode] = ErrorCode.UNKNOWN


class VersionConflictError(MetadataStoreError):
    """A compared key's version is not the expected one: re-read, then decide again.

    ``actual_versions`` maps each compared key to the version it had (0: absent) when
    the store knows it.
    """

    def __init__(self, message: str, actual_versions: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.actual_versions: dict[str, int] = dict(actual_versions or {})


class LeaseLostError(MetadataStoreError):
    """The lease expired or was revoked; its keys are gone.  Grant a new one."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id:x} expired or was revoked")
        self.lease_id = lease_id


class StoreUnavailableError(MetadataStoreError):
    """No endpoint of the metadata store answered in time."""

    code = ErrorCode.REQUEST_TIMED_OUT
    retriable = True


class WriteOutcomeUnknownError(StoreUnavailableError):
    """A conditional write was sent but not answered: it may or may not have been
    applied.  Re-read the keys before retrying."""


class RevisionCompactedError(MetadataStoreError):
    """The watch's start revision was compacted away: re-read, then watch again from
    the read's revision + 1 (:func:`broker.cluster.follow.follow_prefix` does it)."""

    def __init__(self, start_revision: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {start_revision} is compacted (history starts at {compact_revision})"
        )
        self.start_revision = start_revision
        self.compact_revision = compact_revision


# -- values -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored.  ``mod_revision`` is its version; ``lease`` 0 means none."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every key under a prefix (sorted by key) as of store revision ``revision``."""

    revision: int
    items: tuple[KeyValue, ...]


class EventKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change.  For a delete, ``value`` is empty and ``create_revision`` is 0."""

    kind: EventKind
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Every event of one revision under the watched prefix, in the order applied."""

    revision: int
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    """A txn condition: the key's ``mod_revision`` (or ``create_revision``) equals
    ``version``; 0 means the key is absent."""

    key: str
    version: int
    target: Literal["mod", "create"] = "mod"


@dataclass(frozen=True, slots=True)
class Put:
    """A txn operation: set ``key`` to ``value`` (attached to ``lease`` unless 0)."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """A txn operation: remove ``key`` (nothing happens if it is absent)."""

    key: str


Operation = Put | Delete


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: its id and the TTL the store granted (it may round up)."""

    lease_id: int
    ttl_s: int


def check_txn_shape(compares: Sequence[Compare], operations: Sequence[Operation]) -> None:
    """Assert the caller's txn fits both stores: at most TXN_OPERATIONS_MAX operations
    and compares, no key written twice, values under VALUE_BYTES_MAX."""
    assert len(operations) <= TXN_OPERATIONS_MAX, "split the txn: too many operations"
    assert len(compares) <= TXN_OPERATIONS_MAX, "split the txn: too many compares"
    written = [operation.key for operation in operations]
    assert len(set(written)) == len(written), "a txn may write each key once"
    for operation in operations:
        if isinstance(operation, Put):
            assert len(operation.value) <= VALUE_BYTES_MAX, "metadata value too large"


def prefix_end(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string starting with ``prefix``
    (etcd's ``range_end`` for a prefix).  The empty prefix maps to b"\\0" (all keys)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


# -- the interface ----------------------------------------------------------------------


class WatchStream(Protocol):
    """An async iterator of :class:`WatchBatch`, in revision order.

    Iteration raises RevisionCompactedError when the start revision (or, for a watch
    that fell behind, the next revision it needs) is no longer in the history.
    """

    def __aiter__(self) -> AsyncIterator[WatchBatch]: ...


class MetadataStore(Protocol):
    """What the broker needs of its metadata (module docstring)."""

    async def get(self, key: str) -> KeyValue | None:
        """The key, or None when it is absent."""
        ...

    async def read_prefix(self, prefix: str) -> Snapshot:
        """Every key starting with ``prefix`` and the revision of the read."""
        ...

    async def current_revision(self) -> int:
        """The store's revision now."""
        ...

    async def put(
        self, key: str, value: bytes, *, expected_version: int | None = None, lease: int = 0
    ) -> int:
        """Set ``key``; when ``expected_version`` is given, only if the key's version is
        that (0: only if absent).  Returns the new revision (the key's new version).

        Raises VersionConflictError, LeaseLostError (``lease`` is not alive),
        WriteOutcomeUnknownError (conditional write unanswered).
        """
        ...

    async def delete(self, key: str, *, expected_version: int | None = None) -> int:
        """Remove ``key``; when ``expected_version`` is given, only if the key's version
        is that.  Returns the store revision after the delete (unchanged if the key was
        absent).  Raises VersionConflictError, WriteOutcomeUnknownError.
        """
        ...

    async def txn(self, compares: Sequence[Compare], operations: Sequence[Operation]) -> int:
        """If every compare holds, apply every operation in one revision.  Returns the
        store revision after it.  Raises VersionConflictError (with the compared keys'
        actual versions), LeaseLostError, WriteOutcomeUnknownError.
        """
        ...

    async def grant_lease(self, ttl_s: int) -> Lease:
        """A new lease that expires unless kept alive within ``ttl_s`` seconds."""
        ...

    async def keep_alive(self, lease_id: int) -> int:
        """Renew the lease for its full TTL; returns the TTL in seconds.
        Raises LeaseLostError when it already expired or was revoked."""
        ...

    async def revoke_lease(self, lease_id: int) -> None:
        """End the lease now, deleting its keys.  Revoking a lost lease is a no-op."""
        ...

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision``: watches from older revisions raise
        RevisionCompactedError."""
        ...

    def watch(self, prefix: str, start_revision: int) -> AbstractAsyncContextManager[WatchStream]:
        """Watch every key starting with ``prefix`` from ``start_revision`` on.

        ``async with store.watch(p, r) as batches: async for batch in batches: ...``
        The etcd store reconnects by itself (to another endpoint if one died) and
        resumes from the last revision it delivered + 1.
        """
        ...
