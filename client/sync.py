"""The blocking SDK: the async Producer, Consumer and Admin, driven from plain threads.

Not a second implementation: each blocking object owns one event-loop thread
(``anyio.from_thread.start_blocking_portal``, trio by default) and runs the
async client inside it; every blocking method is one hop through that portal.
Per-record hops would cost tens of microseconds each, so the batch methods are
the fast path: ``Producer.send_many`` / ``Producer.enqueue_many`` hand a whole
list over in one hop, and iterating a ``Consumer`` fetches whole batches
internally and hands records out from a local list.

Every blocking call that can wait takes ``timeout=`` (seconds, None: no limit)
and raises :class:`~client.errors.RequestTimedOutError` when it runs out.
Objects are context managers; ``close()`` is idempotent.  One object must be
used by one thread at a time (like the async objects by one task).

    from client.sync import Producer, Consumer

    with Producer("127.0.0.1:9392") as producer:
        producer.send_many("orders", [b"a", b"b"], keys=[b"k1", b"k2"])
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from client.admin import Admin as AsyncAdmin
from client.consumer import Consumer as AsyncConsumer
from client.consumer import ConsumerRecord
from client.errors import RequestTimedOutError
from client.producer import KeyOrValue, RecordHandle
from client.producer import Producer as AsyncProducer
from client.types import (
    ClusterMetadata,
    GroupDescription,
    GroupListing,
    NewTopic,
    OffsetAndTimestamp,
    PartitionLag,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)

__all__ = ["Admin", "Consumer", "Producer", "SyncRecordHandle"]

T = TypeVar("T")
AsyncT = TypeVar("AsyncT", bound=contextlib.AbstractAsyncContextManager[Any])
DEFAULT_BACKEND = "trio"


async def _with_timeout(timeout: float | None, call: Callable[[], Awaitable[T]]) -> T:
    if timeout is None:
        return await call()
    try:
        with anyio.fail_after(timeout):
            return await call()
    except TimeoutError:
        raise RequestTimedOutError(f"no result within {timeout} s") from None


class _PortalClient(Generic[AsyncT]):
    """An async client entered on its own event-loop thread; shared plumbing."""

    def __init__(self, make: Callable[[], AsyncT], backend: str) -> None:
        self._closed = False
        self._exit_stack = contextlib.ExitStack()
        try:
            self._portal: BlockingPortal = self._exit_stack.enter_context(
                start_blocking_portal(backend)
            )
            self._async: AsyncT = make()
            # The async client's task group is entered and exited in one task.
            self._exit_stack.enter_context(self._portal.wrap_async_context_manager(self._async))
        except BaseException:
            self._exit_stack.close()
            raise

    def _call(self, timeout: float | None, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        assert not self._closed, f"the {type(self).__name__} is closed"
        return self._portal.call(_with_timeout, timeout, lambda: function(*args))

    def close(self) -> None:
        """Stop the async client (flushing a producer first) and its thread."""
        if self._closed:
            return
        self._closed = True
        self._exit_stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # Leave the async client the way ``async with`` would on an error.
        self._closed = True
        self._exit_stack.__exit__(exc_type, exc, traceback)


# -- Producer ---------------------------------------------------------------------------


class SyncRecordHandle:
    """A blocking view of :class:`client.producer.RecordHandle`."""

    __slots__ = ("_handle", "_owner")

    def __init__(self, handle: RecordHandle, owner: Producer) -> None:
        self._handle = handle
        self._owner = owner

    def done(self) -> bool:
        return self._handle.done()

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """Wait for the acknowledgement (no hop if it is already there).

        Raises the record's typed error, or RequestTimedOutError."""
        if self._handle.done():
            return self._handle.result()
        return self._owner._call(timeout, self._handle.wait)


class Producer(_PortalClient[AsyncProducer]):
    """Blocking producer; takes the same options as :class:`client.Producer`."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] = "127.0.0.1:9392",
        *,
        backend: str = DEFAULT_BACKEND,
        **options: Any,
    ) -> None:
        super().__init__(lambda: AsyncProducer(bootstrap, **options), backend)

    @property
    def async_producer(self) -> AsyncProducer:
        """The async producer inside (use it only from the portal's thread)."""
        return self._async

    def send(
        self,
        topic: str,
        value: KeyOrValue | None,
        key: KeyOrValue | None = None,
        headers: Sequence[tuple[str, KeyOrValue]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        *,
        timeout: float | None = None,
    ) -> RecordMetadata:
        """Send one record and wait for its acknowledgement (one hop per record:
        prefer :meth:`send_many` for volume).  Raises the record's typed error."""
        return self._call(
            timeout, self._async.send, topic, value, key, headers, partition, timestamp_ms
        )

    def enqueue(
        self,
        topic: str,
        value: KeyOrValue | None,
        key: KeyOrValue | None = None,
        headers: Sequence[tuple[str, KeyOrValue]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        *,
        timeout: float | None = None,
    ) -> SyncRecordHandle:
        """Add one record to its batch and return a handle (``handle.result()``)."""
        handle = self._call(
            timeout, self._async.enqueue, topic, value, key, headers, partition, timestamp_ms
        )
        return SyncRecordHandle(handle, self)

    def send_many(
        self,
        topic: str,
        values: Iterable[KeyOrValue | None],
        *,
        keys: Iterable[KeyOrValue | None] | None = None,
        partition: int | None = None,
        timeout: float | None = None,
    ) -> list[RecordMetadata]:
        """Send a batch of records in one hop and wait for all acknowledgements;
        metadata in input order.  Raises the first failed record's typed error."""
        values = list(values)
        keys = None if keys is None else list(keys)
        return self._call(
            timeout,
            lambda: self._async.send_many(topic, values, keys=keys, partition=partition),
        )

    def enqueue_many(
        self,
        topic: str,
        records: Iterable[
            tuple[KeyOrValue | None, KeyOrValue | None, Sequence[tuple[str, KeyOrValue]] | None]
        ],
        *,
        partition: int | None = None,
        timeout: float | None = None,
    ) -> list[SyncRecordHandle]:
        """Enqueue ``(key, value, headers)`` records in one hop without waiting for
        acknowledgements; call :meth:`flush` (or each handle's ``result``) later."""
        items = list(records)

        async def enqueue_all() -> list[RecordHandle]:
            enqueue = self._async.enqueue
            return [
                await enqueue(topic, value, key, headers, partition)
                for key, value, headers in items
            ]

        return [SyncRecordHandle(handle, self) for handle in self._call(timeout, enqueue_all)]

    def flush(self, timeout: float | None = None) -> None:
        """Send everything enqueued now and wait until each record is acknowledged
        or failed (failures are raised by the handles, not here)."""
        self._call(timeout, self._async.flush)

    def partitions_for(self, topic: str, timeout: float | None = None) -> list[int]:
        """The topic's partition numbers.  Raises UnknownTopicOrPartitionError."""
        return self._call(timeout, self._async.partitions_for, topic)


# -- Consumer ---------------------------------------------------------------------------


class Consumer(_PortalClient[AsyncConsumer]):
    """Blocking consumer; takes the same options as :class:`client.Consumer`.

    ``for record in consumer`` blocks until records arrive (forever, like
    ``async for``); :meth:`records` stops after ``idle_timeout`` seconds without
    one.  Both fetch whole batches per hop and hand records out locally;
    records of one partition come in offset order.  Records are
    :class:`client.ConsumerRecord` (no topic/partition fields: use
    :meth:`getmany`, keyed by partition, when you need them).

    Groups: ``Consumer(..., group="name")`` then :meth:`subscribe`; the group
    options and ``on_assign`` / ``on_revoke`` callbacks are the async
    consumer's (callbacks run on the consumer's event-loop thread).  Records
    held here but not yet handed out are never committed: :meth:`commit` and
    auto-commit count only what the application has taken.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str] = "127.0.0.1:9392",
        *,
        backend: str = DEFAULT_BACKEND,
        poll_interval_ms: int = 500,
        **options: Any,
    ) -> None:
        assert poll_interval_ms > 0
        self._poll_interval_ms = poll_interval_ms
        # Records taken from the async consumer but not yet handed out, per chunk.
        self._buffer: deque[tuple[TopicPartition, list[ConsumerRecord[Any]]]] = deque()
        self._chunk: list[ConsumerRecord[Any]] = []
        self._chunk_tp: TopicPartition | None = None
        self._chunk_index = 0
        super().__init__(lambda: AsyncConsumer(bootstrap, **options), backend)

    @property
    def async_consumer(self) -> AsyncConsumer:
        """The async consumer inside (use it only from the portal's thread)."""
        return self._async

    # -- assignment and positions ---------------------------------------------------------

    def assign(
        self, partitions: Iterable[TopicPartition | str], *, timeout: float | None = None
    ) -> None:
        """Read exactly these partitions (a topic name means all of them)."""
        items = list(partitions)
        self._drop_buffered(None)
        self._call(timeout, self._async.assign, items)

    def assignment(self) -> set[TopicPartition]:
        return self._portal.call(self._async.assignment)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Continue ``tp`` from ``offset``."""
        self._drop_buffered(tp)
        self._portal.call(self._async.seek, tp, offset)

    def seek_to_beginning(self, *partitions: TopicPartition, timeout: float | None = None) -> None:
        self._drop_buffered(*partitions)
        self._call(timeout, self._async.seek_to_beginning, *partitions)

    def seek_to_end(self, *partitions: TopicPartition, timeout: float | None = None) -> None:
        self._drop_buffered(*partitions)
        self._call(timeout, self._async.seek_to_end, *partitions)

    def seek_to_timestamp(
        self, timestamp_ms: int, *partitions: TopicPartition, timeout: float | None = None
    ) -> None:
        self._drop_buffered(*partitions)
        self._call(timeout, self._async.seek_to_timestamp, timestamp_ms, *partitions)

    def position(self, tp: TopicPartition, *, timeout: float | None = None) -> int:
        """The offset of the next record this consumer hands out for ``tp``."""
        if self._chunk_tp == tp and self._chunk_index < len(self._chunk):
            return int(self._chunk[self._chunk_index].offset)
        for buffered_tp, records in self._buffer:
            if buffered_tp == tp:
                return int(records[0].offset)
        return self._call(timeout, self._async.position, tp)

    def high_watermark(self, tp: TopicPartition) -> int:
        return self._portal.call(self._async.high_watermark, tp)

    # -- groups -----------------------------------------------------------------------------

    @property
    def member_id(self) -> str:
        return self._async.member_id

    def subscribe(
        self,
        topics: Iterable[str] = (),
        *,
        pattern: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Join the consumer's group for these topics (or a regex ``pattern``)."""
        items = [topics] if isinstance(topics, str) else list(topics)
        self._call(timeout, lambda: self._async.subscribe(items, pattern=pattern))

    def wait_for_assignment(self, timeout: float = 30.0) -> set[TopicPartition]:
        """Wait until the group assigned this member a partition (or ``timeout`` s)."""
        return self._call(None, self._async.wait_for_assignment, int(timeout * 1000))

    def _local_positions(self) -> dict[TopicPartition, int]:
        """First offset of each partition's records held here, not yet handed out."""
        positions: dict[TopicPartition, int] = {}
        if self._chunk_tp is not None and self._chunk_index < len(self._chunk):
            positions[self._chunk_tp] = int(self._chunk[self._chunk_index].offset)
        for tp, records in self._buffer:
            if tp not in positions and records:
                positions[tp] = int(records[0].offset)
        return positions

    def commit(
        self,
        offsets: dict[TopicPartition, int] | None = None,
        *,
        metadata: str = "",
        timeout: float | None = None,
    ) -> None:
        """Commit the given offsets, or the position of every owned partition (what
        was handed out counts as processed).  Raises like the async ``commit``."""
        if offsets is not None:
            given = dict(offsets)
            self._call(timeout, lambda: self._async.commit(given, metadata=metadata))
            return
        local = self._local_positions()

        async def commit_positions() -> None:
            consumer = self._async
            positions = consumer._current_positions(consumer.assignment())
            positions.update({tp: o for tp, o in local.items() if tp in positions})
            await consumer.commit(positions, metadata=metadata)

        self._call(timeout, commit_positions)

    def committed(
        self, partitions: Iterable[TopicPartition] | None = None, *, timeout: float | None = None
    ) -> dict[TopicPartition, int]:
        items = None if partitions is None else list(partitions)
        return self._call(timeout, self._async.committed, items)

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop handing out these partitions; records held here for them are given
        back (fetched again on resume), so nothing is skipped."""
        local = self._local_positions()
        self._drop_buffered(*partitions)

        async def pause_all() -> None:
            self._async.pause(*partitions)
            for tp in partitions:
                if tp in local:
                    self._async.seek(tp, local[tp])
                    self._async.pause(tp)

        self._portal.call(pause_all)

    def resume(self, *partitions: TopicPartition) -> None:
        self._portal.call(lambda: self._async.resume(*partitions))

    def paused(self) -> set[TopicPartition]:
        return self._portal.call(self._async.paused)

    def lag(self, *, timeout: float | None = None) -> dict[TopicPartition, PartitionLag]:
        """Per partition: position, committed offset, log end offset and lag."""
        local = self._local_positions()
        lags = self._call(timeout, self._async.lag)
        for tp, position in local.items():
            if tp in lags:
                entry = lags[tp]
                lags[tp] = entry._replace(
                    position=position, lag=max(0, entry.log_end_offset - position)
                )
        return lags

    def list_offsets(
        self, targets: dict[TopicPartition, int], *, timeout: float | None = None
    ) -> dict[TopicPartition, int]:
        """See :meth:`client.Consumer.list_offsets`."""
        return self._call(timeout, self._async.list_offsets, dict(targets))

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int], *, timeout: float | None = None
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """See :meth:`client.Consumer.offsets_for_times`."""
        return self._call(timeout, self._async.offsets_for_times, dict(timestamps))

    # -- records ----------------------------------------------------------------------------

    def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[Any]]]:
        """Records per partition, waiting up to ``timeout_ms`` for the first (one hop).
        Records the iterator had buffered come first."""
        result: dict[TopicPartition, list[ConsumerRecord[Any]]] = {}
        budget = max_records if max_records is not None else -1
        for tp, records in self._take_buffered():
            if budget == 0:
                self._buffer.append((tp, records))
                continue
            if budget > 0 and len(records) > budget:
                self._buffer.append((tp, records[budget:]))
                records = records[:budget]
            result.setdefault(tp, []).extend(records)
            budget -= len(records) if budget > 0 else 0
        if result:
            return result
        return self._call(None, self._async.getmany, timeout_ms, max_records)

    def _take_buffered(self) -> list[tuple[TopicPartition, list[ConsumerRecord[Any]]]]:
        chunks: list[tuple[TopicPartition, list[ConsumerRecord[Any]]]] = []
        if self._chunk_tp is not None and self._chunk_index < len(self._chunk):
            chunks.append((self._chunk_tp, self._chunk[self._chunk_index :]))
        self._chunk, self._chunk_tp, self._chunk_index = [], None, 0
        chunks.extend(self._buffer)
        self._buffer.clear()
        return chunks

    def _drop_buffered(self, *partitions: TopicPartition | None) -> None:
        """Forget buffered records of these partitions (all when none or None given)."""
        everything = not partitions or None in partitions
        kept = [
            (tp, records)
            for tp, records in self._take_buffered()
            if not everything and tp not in partitions
        ]
        self._buffer.extend(kept)

    def _next_record(self, deadline: float | None) -> ConsumerRecord[Any] | None:
        """The next record, fetching a batch when the local one is used up; None
        when ``deadline`` (time.monotonic) passes first."""
        index = self._chunk_index
        if index < len(self._chunk):
            self._chunk_index = index + 1
            return self._chunk[index]
        while True:  # each round returns a record, returns at the deadline, or waits
            if self._buffer:
                self._chunk_tp, self._chunk = self._buffer.popleft()
                self._chunk_index = 1
                return self._chunk[0]
            wait_ms = self._poll_interval_ms
            if deadline is not None:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    return None
                wait_ms = min(wait_ms, left_ms)
            fetched = self._call(None, self._async.getmany, wait_ms)
            self._buffer.extend(fetched.items())

    def __iter__(self) -> Iterator[ConsumerRecord[Any]]:
        return self

    def __next__(self) -> ConsumerRecord[Any]:
        """The next record of any assigned partition (blocks until one arrives)."""
        record = self._next_record(None)
        assert record is not None
        return record

    def records(
        self, *, idle_timeout: float | None = None, max_records: int | None = None
    ) -> Iterator[ConsumerRecord[Any]]:
        """Iterate records; stop after ``idle_timeout`` seconds without a new one,
        or after ``max_records``."""
        count = 0
        while max_records is None or count < max_records:
            deadline = None if idle_timeout is None else time.monotonic() + idle_timeout
            record = self._next_record(deadline)
            if record is None:
                return
            count += 1
            yield record


# -- Admin ------------------------------------------------------------------------------


class Admin(_PortalClient[AsyncAdmin]):
    """Blocking admin client; takes the same options as :class:`client.Admin`."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] = "127.0.0.1:9392",
        *,
        backend: str = DEFAULT_BACKEND,
        **options: Any,
    ) -> None:
        super().__init__(lambda: AsyncAdmin(bootstrap, **options), backend)

    def create_topics(
        self,
        topics: Iterable[NewTopic],
        *,
        validate_only: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Create topics.  Raises the first topic's typed error."""
        items = list(topics)
        self._call(timeout, lambda: self._async.create_topics(items, validate_only=validate_only))

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        replication_factor: int = 1,
        configs: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Create one topic.  Raises TopicAlreadyExistsError, InvalidTopicError, ..."""
        self._call(
            timeout,
            lambda: self._async.create_topic(
                name, partitions, replication_factor=replication_factor, configs=configs
            ),
        )

    def delete_topics(self, names: Iterable[str], *, timeout: float | None = None) -> None:
        """Delete topics.  Raises UnknownTopicOrPartitionError for a missing one."""
        items = list(names)
        self._call(timeout, self._async.delete_topics, items)

    def alter_topic_configs(
        self,
        name: str,
        configs: dict[str, str],
        *,
        validate_only: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Change a topic's config overrides; see :meth:`Admin.alter_topic_configs`."""
        self._call(
            timeout,
            lambda: self._async.alter_topic_configs(name, configs, validate_only=validate_only),
        )

    def create_partitions(
        self,
        name: str,
        count: int,
        *,
        validate_only: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Raise a topic's partition count to ``count``; see :meth:`Admin.create_partitions`."""
        self._call(
            timeout, lambda: self._async.create_partitions(name, count, validate_only=validate_only)
        )

    def list_topics(self, *, internal: bool = False, timeout: float | None = None) -> list[str]:
        return self._call(timeout, lambda: self._async.list_topics(internal=internal))

    def describe_topics(
        self, names: Iterable[str] | None = None, *, timeout: float | None = None
    ) -> list[TopicDescription]:
        items = None if names is None else list(names)
        return self._call(timeout, self._async.describe_topics, items)

    def cluster_metadata(
        self, topics: Sequence[str] | None = None, *, timeout: float | None = None
    ) -> ClusterMetadata:
        return self._call(timeout, self._async.cluster_metadata, topics)

    def list_groups(self, *, timeout: float | None = None) -> list[GroupListing]:
        return self._call(timeout, self._async.list_groups)

    def describe_groups(
        self, group_ids: Iterable[str], *, timeout: float | None = None
    ) -> list[GroupDescription]:
        items = list(group_ids)
        return self._call(timeout, self._async.describe_groups, items)

    def describe_group(self, group_id: str, *, timeout: float | None = None) -> GroupDescription:
        return self._call(timeout, self._async.describe_group, group_id)

    def delete_groups(self, group_ids: Iterable[str], *, timeout: float | None = None) -> None:
        items = list(group_ids)
        self._call(timeout, self._async.delete_groups, items)

    def committed_offsets(
        self,
        group_id: str,
        partitions: Iterable[TopicPartition] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[TopicPartition, int]:
        items = None if partitions is None else list(partitions)
        return self._call(timeout, self._async.committed_offsets, group_id, items)

    def set_offsets(
        self, group_id: str, offsets: dict[TopicPartition, int], *, timeout: float | None = None
    ) -> None:
        """Commit offsets for a group without members (reset-offsets)."""
        given = dict(offsets)
        self._call(timeout, self._async.set_offsets, group_id, given)
