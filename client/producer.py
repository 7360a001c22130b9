"""The async producer: records in, batches per partition, Produce requests out.

Runs on trio or asyncio (anyio).  Per record, :meth:`Producer.enqueue` does one
cheap step: pick a partition (sticky for keyless records, CRC-32C of the key
otherwise, see client/partitioner.py) and append a tuple to that partition's
open :class:`~client.records.builder.BatchBuilder` (client/accumulator.py).  It
returns a :class:`RecordHandle` -- the batch plus the record's index in it -- so
there is no per-record future: the batch is the future of all its records.

The sender (client/sender.py) drains ready batches, groups them by leader into
pipelined Produce requests, resolves each batch from its response, and retries
retriable errors in order, with backoff, until the batch's delivery deadline
(``delivery_timeout_ms`` after its first record was enqueued): a broker restart
shorter than that is ridden out.  A batch that fails for good fails the batches
of its partition queued behind it, so no record is written after an earlier one
of its partition failed (client/accumulator.py).

The producer keeps the partition count of each topic it has used (its own copy:
the cluster's cache forgets a topic after NOT_LEADER), so enqueueing goes on
without metadata while the broker is unreachable.

Idempotence (the default with acks leader/all and retries): the producer picks
a random 63-bit producer id, each batch carries a per-partition producer epoch
and sequence number (client/accumulator.py), and the broker drops a retried
batch it already appended (broker/producer_state.py).  Up to 5 batches per
partition are then in flight.  What the producer does on each idempotence error
(out-of-order sequence, unknown producer id, a batch that fails for good) is
described in client/accumulator.py and docs/sdk.md.  Without idempotence a
partition has one batch in flight when retries are enabled, and delivery is at
least once: a batch whose connection died after the broker appended it is sent
again.  The broker rebuilds producer state from its log tail on restart, so a
retry across a restart is recognized too.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, Final, Literal, cast

import anyio
import anyio.abc
import msgspec

from client._io.cluster import Cluster, ClusterClient
from client._io.connection import EventLoopTools, LoopEvent
from client.accumulator import (
    RECORD_BYTES_OVERHEAD,
    ProducerBatch,
    RecordAccumulator,
    record_size,
)
from client.clock import wall_clock_ms
from client.errors import (
    ConnectionClosedError,
    TooManyRequestsError,
    UnknownTopicOrPartitionError,
)
from client.partitioner import StickyPartitioner, partition_for_key
from client.records.builder import Header
from client.records.header import BATCH_BYTES_LIMIT, Compression
from client.sender import Sender
from client.types import MiB, RecordMetadata

CompressionName = Literal["none", "gzip", "lz4", "zstd"]
AcksSetting = Literal["none", "leader", "all", 0, 1, -1]
KeyOrValue = bytes | bytearray | memoryview | str

_COMPRESSION: Final[dict[str, Compression]] = {
    "none": Compression.NONE,
    "gzip": Compression.GZIP,
    "lz4": Compression.LZ4,
    "zstd": Compression.ZSTD,
}
_ACKS: Final[dict[object, int]] = {"none": 0, "leader": 1, "all": -1, 0: 0, 1: 1, -1: -1}
# One Produce request carries at most this many bytes of batches; more ready
# batches for the same broker go in the next (pipelined) request.
REQUEST_BYTES_MAX_DEFAULT: Final = 8 * MiB
# A tight enqueue loop yields to the event loop every this many records (~0.3 ms
# of appends): often enough to keep acks and sends flowing, rare enough to be free.
CHECKPOINT_EVERY_MASK: Final = 512 - 1
# As Kafka's delivery.timeout.ms: how long a batch may take, from the enqueue of
# its first record, to be acknowledged, retries included.
DELIVERY_TIMEOUT_MS_DEFAULT: Final = 120_000
# As Kafka's retries: no practical bound; the delivery timeout is what bounds them.
RETRIES_MAX_DEFAULT: Final = 2_147_483_647
# Batches per partition in flight with idempotence (Kafka's
# max.in.flight.requests.per.connection limit; the broker remembers as many).
INFLIGHT_BATCHES_IDEMPOTENT_MAX: Final = 5


def _as_bytes(data: KeyOrValue, what: str) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


# Unacknowledged record bytes a producer holds by default (at least one batch).
BUFFER_BYTES_MAX_DEFAULT: Final = 64 * MiB


class RecordHandle(msgspec.Struct, gc=False, frozen=True):
    """The result-to-be of one enqueued record: await it for its RecordMetadata.

    Awaiting raises the batch's typed error if it failed for good.  Cheap: a
    msgspec Struct of two fields (about a third of a slotted class's creation
    cost), no event until someone awaits.
    """

    batch: ProducerBatch
    offset_delta: int

    def done(self) -> bool:
        return self.batch.done

    def result(self) -> RecordMetadata:
        """The metadata of a done record.  Raises its typed error, or
        AssertionError (programmer error) if it is not done yet."""
        batch = self.batch
        assert batch.done, "the record is not acknowledged yet: await the handle"
        if batch.error is not None:
            raise batch.error
        delta = self.offset_delta
        offset = batch.base_offset + delta if batch.base_offset >= 0 else -1
        return RecordMetadata(
            batch.topic, batch.partition, offset, batch.builder.timestamp_ms_of(delta)
        )

    async def wait(self) -> RecordMetadata:
        await wait_for_batch(self.batch)
        return self.result()

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        return self.wait().__await__()


async def wait_for_batch(
    batch: ProducerBatch, new_event: Callable[[], LoopEvent] | None = None
) -> None:
    """Park until ``batch`` is acknowledged or failed (one event per batch).
    ``new_event``: the running loop's Event class (looked up when not given)."""
    if batch.done:
        return
    waiter = batch.waiter
    if waiter is None:
        event = (new_event or EventLoopTools().event)()
        batch.waiter = event
    else:
        event = cast(LoopEvent, waiter)
    await event.wait()


class Producer(ClusterClient):
    """Sends records to topics.  Use as ``async with Producer(...) as producer:``.

    Parameters (all sizes in bytes, all times in milliseconds):

    - ``linger_ms``: how long a batch waits for more records before it is sent.
    - ``batch_bytes_max``: a batch is closed before it would pass this size.
    - ``buffer_bytes_max``: bytes of unacknowledged records held at most;
      ``enqueue``/``send`` wait for space beyond it (backpressure).  Default
      64 MiB, or one batch when ``batch_bytes_max`` is larger.
    - ``compression``: "none", "gzip", "lz4" or "zstd", per batch.
    - ``acks``: "all" (-1, the default: every in-sync replica has the records),
      "leader" (1) or "none" (0: offsets are then -1).
    - ``delivery_timeout_ms``: a record is acknowledged within this time of its
      enqueue, or its handle raises (RequestTimedOutError naming the last error).
      Retriable errors (broker unreachable or restarting, connection lost, not
      leader, timeouts) are retried until then, keeping order.
    - ``retry_backoff_ms`` / ``retry_backoff_max_ms``: the exponential backoff
      between retries of a batch.
    - ``retries_max``: attempts per batch at most besides the first (default: no
      practical bound; 0 turns retries off).
    - ``idempotent``: sequence each batch so the broker drops retried duplicates
      (exactly once per partition for this producer's lifetime, across broker
      restarts) and refuses gaps; see docs/sdk.md for what each idempotence
      error does.  Default (None): on when acks is "leader" or
      "all" and ``retries_max > 0``; True requires both.
    - ``inflight_batches_per_partition_max``: batches of one partition in flight
      at once.  Default 1.  Up to 5 when idempotent (order is still kept): a
      lower median latency and fewer stalls behind a slow ack, at the price of
      more, smaller requests and a higher tail latency when the broker shares the
      producer's cores (docs/benchmarks.md).  Without idempotence and with
      retries it must be 1, or a retry could reorder records.
    - ``allow_auto_create_topics``: ask the broker to create unknown topics (it
      may still refuse if its own auto-create setting is off).
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str] = "127.0.0.1:9392",
        *,
        client_id: str = "",
        linger_ms: int = 5,
        batch_bytes_max: int = 1 * MiB,
        buffer_bytes_max: int | None = None,
        compression: CompressionName = "none",
        acks: AcksSetting = "all",
        retries_max: int = RETRIES_MAX_DEFAULT,
        delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS_DEFAULT,
        idempotent: bool | None = None,
        inflight_batches_per_partition_max: int = 1,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1_000,
        request_timeout_ms: int = 30_000,
        connect_timeout_ms: int = 5_000,
        reconnect_attempts_max: int = 5,
        inflight_requests_max: int = 16,
        request_bytes_max: int = REQUEST_BYTES_MAX_DEFAULT,
        allow_auto_create_topics: bool = False,
        clock_ms: Callable[[], int] = wall_clock_ms,
        rng: random.Random | None = None,
    ) -> None:
        if compression not in _COMPRESSION:
            raise ValueError(f"compression must be one of {sorted(_COMPRESSION)}")
        if acks not in _ACKS:
            raise ValueError("acks must be 'none', 'leader', 'all', 0, 1 or -1")
        if not 0 < batch_bytes_max <= BATCH_BYTES_LIMIT:
            raise ValueError(
                f"batch_bytes_max must be 1..{BATCH_BYTES_LIMIT}, got {batch_bytes_max}"
            )
        # The buffer holds at least one whole batch: a batch above the default buffer
        # raises the buffer with it; a buffer set smaller than one batch is an error.
        if buffer_bytes_max is None:
            buffer_bytes_max = max(BUFFER_BYTES_MAX_DEFAULT, batch_bytes_max)
        elif buffer_bytes_max < batch_bytes_max:
            raise ValueError(
                f"buffer_bytes_max ({buffer_bytes_max}) must be at least "
                f"batch_bytes_max ({batch_bytes_max})"
            )
        if retries_max < 0 or linger_ms < 0 or request_timeout_ms <= 0:
            raise ValueError(
                "retries_max and linger_ms must not be negative, request_timeout_ms positive"
            )
        if delivery_timeout_ms <= 0:
            raise ValueError("delivery_timeout_ms must be positive")
        self.delivery_timeout_ms = delivery_timeout_ms
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.acks = _ACKS[acks]
        self.retries_max = retries_max
        if idempotent is None:
            idempotent = self.acks != 0 and retries_max > 0
        elif idempotent and (self.acks == 0 or retries_max == 0):
            raise ValueError("idempotent=True needs acks 'leader' or 'all' and retries_max > 0")
        self.idempotent = idempotent
        if not 1 <= inflight_batches_per_partition_max <= INFLIGHT_BATCHES_IDEMPOTENT_MAX:
            raise ValueError(
                f"inflight_batches_per_partition_max must be 1..{INFLIGHT_BATCHES_IDEMPOTENT_MAX}"
            )
        if inflight_batches_per_partition_max > 1 and retries_max > 0 and not idempotent:
            # Without sequence numbers a retried batch could land after a later one.
            raise ValueError("more than one batch in flight with retries needs idempotent=True")
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_max_ms = retry_backoff_max_ms
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.reconnect_attempts_max = reconnect_attempts_max
        self.inflight_requests_max = inflight_requests_max
        self.request_bytes_max = max(request_bytes_max, batch_bytes_max)
        self.batch_bytes_max = batch_bytes_max
        self.allow_auto_create_topics = allow_auto_create_topics
        self._clock_ms = clock_ms
        # Record timestamps: with the default wall clock the builder reads the time
        # itself (one Python call fewer per record); an injected clock stamps them.
        self._record_clock_ms = None if clock_ms is wall_clock_ms else clock_ms
        self._random = rng if rng is not None else random.Random()
        self._sticky = StickyPartitioner(self._random)
        # Idempotence: one random producer id per instance (epochs are per
        # partition, see the accumulator); -1 sends unsequenced batches.
        self.producer_id = self._random.getrandbits(63) if idempotent else -1
        self._accumulator = RecordAccumulator(
            batch_bytes_max=batch_bytes_max,
            linger_ms=linger_ms,
            buffer_bytes_max=buffer_bytes_max,
            compression=_COMPRESSION[compression],
            inflight_batches_per_partition_max=inflight_batches_per_partition_max,
            on_batch_closed=self._batch_closed,
            producer_id=self.producer_id,
        )
        self._sender = Sender(
            self._accumulator,
            acks=self.acks,
            request_timeout_ms=request_timeout_ms,
            request_bytes_max=self.request_bytes_max,
            retries_max=retries_max,
            delivery_timeout_ms=delivery_timeout_ms,
            retry_backoff_ms=retry_backoff_ms,
            retry_backoff_max_ms=retry_backoff_max_ms,
            clock_ms=clock_ms,
            rng=self._random,
            on_woken=self._sender_was_woken,
        )
        self._task_group: anyio.abc.TaskGroup | None = None
        self._cluster: Cluster | None = None
        self._metadata_lock: anyio.Lock | None = None
        self._closing = False
        self._closed = False
        # Partition counts of the topics used so far (see the module docstring).
        self._partition_counts: dict[str, int] = {}
        # Set when the sender is woken: enqueue then yields so it runs soon.
        self._sender_woken = False
        self._enqueued = 0  # enqueue calls, for the periodic checkpoint
        self._tools: EventLoopTools | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close(flush=exc_type is None)

    async def start(self) -> None:
        """Start the background sender.  ``close()`` must then be called from the
        same task (``async with`` does both)."""
        cluster = await self._open_cluster(inflight_requests_max=self.inflight_requests_max)
        self._tools = EventLoopTools()
        self._sender.start(cluster, self._tools, self._partition_counts)
        self._metadata_lock = anyio.Lock()
        cluster.task_group.start_soon(self._sender.run)

    async def close(self, *, flush: bool = True) -> None:
        """Flush (unless ``flush=False``), stop the sender and close connections.
        Records still unacknowledged afterwards fail with ConnectionClosedError."""
        if self._closed:
            return
        assert self._cluster is not None, "the producer was never started"
        try:
            if flush:
                await self.flush()
        finally:
            self._closed = self._closing = True
            self._sender.stop()
            await self._cluster.shutdown()

    # -- sending --------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: KeyOrValue | None,
        key: KeyOrValue | None = None,
        headers: Sequence[tuple[str, KeyOrValue]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        """Send one record and wait for its acknowledgement.  See :meth:`enqueue`."""
        handle = await self.enqueue(topic, value, key, headers, partition, timestamp_ms)
        batch = handle.batch
        if not batch.done:
            tools = self._tools
            await wait_for_batch(batch, tools.event if tools is not None else None)
        return handle.result()

    async def enqueue(
        self,
        topic: str,
        value: KeyOrValue | None,
        key: KeyOrValue | None = None,
        headers: Sequence[tuple[str, KeyOrValue]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordHandle:
        """Add a record to its batch; return at once with a handle to await later.

        Waits only for buffer space (``buffer_bytes_max``) and, the first time a
        topic is used, for its metadata.  ``str`` keys, values and header values
        are encoded as UTF-8.  Raises BatchTooLargeError (the record alone is over
        ``batch_bytes_max``), UnknownTopicOrPartitionError (topic absent,
        or ``partition`` out of range), BrokerUnavailableError (no metadata),
        ConnectionClosedError (producer closed).
        """
        for _ in range(3):  # bounded: metadata, then space; a third miss is an error
            try:
                handle = self.send_nowait(topic, value, key, headers, partition, timestamp_ms)
            except TooManyRequestsError:
                await self._sender.wait_for_space()
                continue
            except UnknownTopicOrPartitionError:
                # No metadata yet (first use) or a partition beyond what we know:
                # ask the broker; these raise the typed error if it is really absent.
                if partition is None:
                    await self._partition_count(topic)
                else:
                    await self._check_partition(topic, partition)
                continue
            self._enqueued += 1
            if self._sender_woken or not self._enqueued & CHECKPOINT_EVERY_MASK:
                # The sender was woken (a batch to send or to linger on), or another
                # 512 records went in: let the reader and sender tasks run, so a
                # tight enqueue loop still feeds the network and acks arrive on time.
                self._sender_woken = False
                tools = self._tools
                if tools is not None:
                    await tools.checkpoint()
            return handle
        raise TooManyRequestsError("producer buffer stayed full while enqueueing a record")

    def send_nowait(
        self,
        topic: str,
        value: KeyOrValue | None,
        key: KeyOrValue | None = None,
        headers: Sequence[tuple[str, KeyOrValue]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordHandle:
        """The fastest way in: like :meth:`enqueue` but a plain call that never waits.

        Raises TooManyRequestsError (retriable) when the buffer is full -- then
        ``await producer.wait_for_space()`` and call again; UnknownTopicOrPartitionError
        (retriable) when the topic's metadata is not loaded yet -- ``await
        producer.partitions_for(topic)`` once first; ConnectionClosedError when closed.
        It never yields to the event loop: a loop of it must await something now
        and then (``wait_for_space``, ``flush``, ``anyio.sleep(0)``) so batches leave.
        """
        if type(value) is not bytes and value is not None:
            value = _as_bytes(value, "value")
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "key")
        if partition is None:
            count = self._partition_counts.get(topic)
            if count is None:
                raise UnknownTopicOrPartitionError(
                    f"no metadata for topic {topic!r} yet: await partitions_for() first"
                )
            if key is None:
                partition = self._sticky.current.get(topic)
                if partition is None:
                    partition = self._sticky.next_partition(topic, count)
            else:
                partition = partition_for_key(key, count)
        elif not 0 <= partition < self._partition_counts.get(topic, 0):
            raise UnknownTopicOrPartitionError(
                f"partition {partition} of {topic!r} is unknown: await partitions_for() first"
            )
        accumulator = self._accumulator
        if accumulator.buffer_bytes_used >= accumulator.buffer_bytes_max or self._closing:
            if self._closing:
                raise ConnectionClosedError("the producer is closed")
            raise TooManyRequestsError(
                f"producer buffer full ({accumulator.buffer_bytes_max} bytes): "
                "await wait_for_space()"
            )
        if headers:
            encoded_headers: Sequence[Header] = _encode_headers(headers)
            size = record_size(value, key, encoded_headers)
        else:
            encoded_headers = ()
            size = RECORD_BYTES_OVERHEAD + (len(value) if value else 0) + (len(key) if key else 0)
        if timestamp_ms is None and self._record_clock_ms is not None:
            timestamp_ms = self._record_clock_ms()
        batch = accumulator.open_batches.get((topic, partition))
        if batch is not None and batch.buffer_bytes + size <= accumulator.fit_bytes:
            delta = batch.builder.append(value, key, encoded_headers, timestamp_ms)
            batch.buffer_bytes += size
            accumulator.buffer_bytes_used += size
            return RecordHandle(batch, delta)
        now_ms = self._clock_ms()
        batch, delta, _wake = accumulator.append(
            topic, partition, value, key, encoded_headers, timestamp_ms, now_ms, size
        )
        self._sender.batch_opened(topic, partition, now_ms)
        return RecordHandle(batch, delta)

    async def wait_for_space(self) -> None:
        """Wait until the buffer has room (and let the sender run meanwhile).
        Raises ConnectionClosedError if the producer closes."""
        await anyio.sleep(0)
        await self._sender.wait_for_space()

    async def enqueue_many(
        self,
        topic: str,
        values: Iterable[KeyOrValue | None],
        *,
        keys: Iterable[KeyOrValue | None] | None = None,
        partition: int | None = None,
    ) -> list[RecordHandle]:
        """:meth:`enqueue` for many records in one call (same rules); handles in
        input order.  ``keys``, when given, must be as long as ``values``.

        Each record takes the synchronous fast path (:meth:`send_nowait`); only a
        record that finds the buffer full or the topic's metadata missing waits.
        """
        pairs: Iterable[tuple[KeyOrValue | None, KeyOrValue | None]] = (
            ((value, None) for value in values) if keys is None else zip(values, keys, strict=True)
        )
        send_nowait = self.send_nowait
        handles: list[RecordHandle] = []
        for value, key in pairs:
            try:
                handle = send_nowait(topic, value, key, None, partition)
            except (TooManyRequestsError, UnknownTopicOrPartitionError):
                handle = await self.enqueue(topic, value, key, None, partition)
            else:
                if not handle.offset_delta & CHECKPOINT_EVERY_MASK:
                    await anyio.sleep(0)
            handles.append(handle)
        return handles

    async def send_many(
        self,
        topic: str,
        values: Iterable[KeyOrValue | None],
        *,
        keys: Iterable[KeyOrValue | None] | None = None,
        partition: int | None = None,
    ) -> list[RecordMetadata]:
        """Send many records and wait until all are acknowledged; metadata in input
        order.  Raises the first failed record's typed error."""
        handles = await self.enqueue_many(topic, values, keys=keys, partition=partition)
        seen: set[int] = set()
        for handle in handles:
            batch = handle.batch
            if id(batch) not in seen:
                seen.add(id(batch))
                await wait_for_batch(batch)
        return [handle.result() for handle in handles]

    async def flush(self) -> None:
        """Send every record enqueued so far now (ignoring ``linger_ms``) and wait
        until each is acknowledged or failed.  Does not raise for failed records:
        their handles do."""
        accumulator = self._accumulator
        batches = accumulator.unfinished_batches()
        if not batches:
            return
        accumulator.flushing += 1
        try:
            self._sender.wake()
            for batch in batches:
                await wait_for_batch(batch)
        finally:
            accumulator.flushing -= 1

    @property
    def failed_batches(self) -> int:
        """How many batches have failed for good so far (their records' handles
        raise).  A caller that must leave no gap after a failed record stops
        enqueueing once this is above 0: a record enqueued before the failure was
        failed with it (if it was of the same partition and queued behind it), a
        record enqueued after it would be written."""
        return self._sender.failed_batches

    async def partitions_for(self, topic: str) -> list[int]:
        """The topic's partition numbers.  Raises UnknownTopicOrPartitionError."""
        return list(range(await self._partition_count(topic)))

    # -- metadata ---------------------------------------------------------------------------

    async def _partition_count(self, topic: str) -> int:
        if self._closing:
            raise ConnectionClosedError("the producer is closed")
        cluster = self._cluster
        assert cluster is not None and self._metadata_lock is not None, "producer not started"
        async with self._metadata_lock:
            count = cluster.partition_counts.get(topic)
            if count is None:
                await cluster.topic_metadata(topic, allow_auto_create=self.allow_auto_create_topics)
                count = cluster.partition_counts[topic]
            self._partition_counts[topic] = count
        return count

    async def _check_partition(self, topic: str, partition: int) -> None:
        count = await self._partition_count(topic)
        if not 0 <= partition < count:
            raise UnknownTopicOrPartitionError(
                f"topic {topic!r} has {count} partitions; there is no partition {partition}"
            )

    def _sender_was_woken(self) -> None:
        self._sender_woken = True

    def _batch_closed(self, topic: str, partition: int) -> None:
        # StickyPartitioner.batch_closed, checked here first: most closed batches
        # are not of the sticky partition (records sent to a chosen partition).
        if self._sticky.current.get(topic) != partition:
            return
        count = self._partition_counts.get(topic)
        if count:
            self._sticky.batch_closed(topic, partition, count)


def _encode_headers(headers: Sequence[tuple[str, KeyOrValue]]) -> tuple[Header, ...]:
    return tuple(
        (name, value if type(value) is bytes else _as_bytes(value, "header value"))
        for name, value in headers
    )
