"""Follow a prefix: read it, then watch it, re-reading whenever the watch cannot
resume.

A watch resumes by itself after a lost connection, but not from a revision the
store compacted away (RevisionCompactedError); its consumer must then read the
whole prefix again and watch from that read's revision + 1.  :func:`follow_prefix`
does this loop and hands out a stream of updates: a :class:`Snapshot` (replace
everything you know under the prefix) or a :class:`WatchBatch` (apply these events,
all of one revision).  :class:`PrefixView` is the plain mirror that applies them.

``async with follow_prefix(store, "topics/") as updates: async for update in updates``
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from broker.cluster.store import (
    EventKind,
    KeyValue,
    MetadataStore,
    RevisionCompactedError,
    Snapshot,
    WatchBatch,
    WatchStream,
)
from broker.logging import get_logger

Update = Snapshot | WatchBatch

_logger = get_logger()


class PrefixFollower:
    """The update stream of :func:`follow_prefix`."""

    def __init__(self, store: MetadataStore, prefix: str) -> None:
        self._store = store
        self._prefix = prefix
        self._stack: AsyncExitStack | None = None
        self._batches: AsyncIterator[WatchBatch] | None = None
        self.resyncs = 0

    def __aiter__(self) -> PrefixFollower:
        return self

    async def __anext__(self) -> Update:
        """A Snapshot first and after each compaction, WatchBatches otherwise.
        Raises what the store's reads and watches raise, except RevisionCompactedError."""
        while True:
            if self._batches is None:
                snapshot = await self._store.read_prefix(self._prefix)
                await self._start_watch(snapshot.revision + 1)
                return snapshot
            try:
                return await self._batches.__anext__()
            except RevisionCompactedError as error:
                _logger.info(
                    "metadata watch compacted; re-reading", prefix=self._prefix, error=str(error)
                )
                self.resyncs += 1
                await self.close()

    async def _start_watch(self, start_revision: int) -> None:
        stack = AsyncExitStack()
        watch: AbstractAsyncContextManager[WatchStream] = self._store.watch(
            self._prefix, start_revision
        )
        stream = await stack.enter_async_context(watch)
        self._stack = stack
        self._batches = aiter(stream)

    async def close(self) -> None:
        stack, self._stack, self._batches = self._stack, None, None
        if stack is not None:
            await stack.aclose()


@asynccontextmanager
async def follow_prefix(store: MetadataStore, prefix: str) -> AsyncIterator[PrefixFollower]:
    """Read-then-watch ``prefix`` with resync on compaction (module docstring)."""
    follower = PrefixFollower(store, prefix)
    try:
        yield follower
    finally:
        await follower.close()


class PrefixView:
    """A plain mirror of the keys under a prefix, kept by applying updates in order."""

    def __init__(self) -> None:
        self.items: dict[str, KeyValue] = {}
        self.revision = 0

    def apply(self, update: Update) -> None:
        """Replace the view with a Snapshot, or apply one revision's events."""
        if isinstance(update, Snapshot):
            assert update.revision >= self.revision, "a snapshot older than the view"
            self.items = {item.key: item for item in update.items}
            self.revision = update.revision
            return
        assert update.revision > self.revision, "watch batches arrive in revision order"
        for event in update.events:
            if event.kind is EventKind.DELETE:
                self.items.pop(event.key, None)
            else:
                self.items[event.key] = KeyValue(
                    event.key,
                    event.value,
                    event.create_revision,
                    event.mod_revision,
                    event.lease,
                )
        self.revision = update.revision

    def check_invariants(self) -> None:
        for key, item in self.items.items():
            assert item.key == key
            assert 1 <= item.create_revision <= item.mod_revision <= self.revision
