"""The async producer: records in, batches per partition, Produce requests out.

Runs on trio or asyncio (anyio).  Per record, :meth:`Producer.enqueue` does one
cheap step: pick a partition (sticky for keyless records, CRC-32C of the key
otherwise, see client/partitioner.py) and append a tuple to that partition's
open :class:`~client.records.builder.BatchBuilder` (client/accumulator.py).  It
returns a :class:`RecordHandle` -- the batch plus the record's index in it -- so
there is no per-record future: the batch is the future of all its records.

A background sender task drains ready batches (full, ``linger_ms`` old, or
flushing), groups them by leader into Produce requests of several partitions,
writes them pipelined on one connection per broker, and resolves each batch
from the response.  On asyncio, where a write never waits, a batch that is
ready at once (``linger_ms=0``) leaves from ``enqueue`` itself, and the next
batch of a partition leaves from the callback that handles the previous one's
acknowledgement (``_send_now``): no trip through the sender task, as long as it
is idle so nothing it holds is overtaken.  Retriable errors (connection lost, broker restarting, not
leader, timeouts) put a batch back in its partition's queue, ahead of the
batches sent after it, after an exponential backoff, at most ``retries_max``
times, so retries never reorder records.

Idempotence (the default with acks leader/all and retries): the producer picks
a random 63-bit producer id, each batch carries a per-partition sequence number
(client/accumulator.py), and the broker drops a retried batch it already
appended (broker/producer_state.py).  Up to 5 batches per partition are then in
flight.  Without idempotence a partition has one batch in flight when retries
are enabled, and delivery is at least once: a batch whose connection died after
the broker appended it is sent again.  The broker rebuilds producer state from
its log tail on restart, so a retry across a restart is recognized too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Final, Literal, cast

import anyio
import anyio.abc
import msgspec

from client._io.cluster import Cluster, ClusterClient, backoff_ms
from client._io.connection import (
    BrokerConnection,
    EventLoopTools,
    LoopEvent,
    PendingResponse,
)
from client._logging import get_logger
from client.accumulator import (
    RECORD_BYTES_OVERHEAD,
    ProducerBatch,
    RecordAccumulator,
    record_size,
)
from client.errors import (
    ConnectionClosedError,
    DistributaryError,
    NotLeaderError,
    OutOfOrderSequenceError,
    ProtocolError,
    TooManyRequestsError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.partitioner import StickyPartitioner, partition_for_key
from client.protocol.messages import (
    ProducePartition,
    ProducePartitionResponse,
    ProduceRequest,
    ProduceResponse,
    ProduceTopic,
)
from client.records.builder import Header
from client.records.header import BATCH_BYTES_MAX_DEFAULT, Compression
from client.types import MiB, RecordMetadata

log = get_logger("client.producer")

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
# Batches per partition in flight with idempotence (Kafka's
# max.in.flight.requests.per.connection limit; the broker remembers as many).
INFLIGHT_BATCHES_IDEMPOTENT_MAX: Final = 5


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _as_bytes(data: KeyOrValue, what: str) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


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
      ``enqueue``/``send`` wait for space beyond it (backpressure).
    - ``compression``: "none", "gzip", "lz4" or "zstd", per batch.
    - ``acks``: "leader" (1), "all" (-1) or "none" (0: offsets are then -1).
    - ``retries_max`` / ``retry_backoff_ms`` / ``retry_backoff_max_ms``: retriable
      errors are retried this many times with exponential backoff, keeping order.
    - ``idempotent``: sequence each batch so the broker drops retried duplicates
      (exactly once per partition for this producer's lifetime, across broker
      restarts) and refuses gaps.  Default (None): on when acks is "leader" or
      "all" and ``retries_max > 0``; True requires both.
    - ``inflight_batches_per_partition_max``: batches of one partition in flight
      at once.  Default 1.  Up to 5 when idempotent (order is still kept): a
      lower median latency and fewer stalls behind a slow ack, at the price of
      more, smaller requests -- on the 2-core reference machine, with the broker
      on the same cores, p99 latency at 5,000 records/s rose from ~2.1 to ~3.5 ms
      with 5 (docs/benchmarks.md).  Without idempotence and with retries it must
      be 1, or a retry could reorder records.
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
        buffer_bytes_max: int = 64 * MiB,
        compression: CompressionName = "none",
        acks: AcksSetting = "leader",
        retries_max: int = 10,
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
        clock_ms: Callable[[], int] = _wall_clock_ms,
        rng: random.Random | None = None,
    ) -> None:
        if compression not in _COMPRESSION:
            raise ValueError(f"compression must be one of {sorted(_COMPRESSION)}")
        if acks not in _ACKS:
            raise ValueError("acks must be 'none', 'leader', 'all', 0, 1 or -1")
        assert 0 < batch_bytes_max <= BATCH_BYTES_MAX_DEFAULT, batch_bytes_max
        assert buffer_bytes_max >= batch_bytes_max, "buffer_bytes_max < batch_bytes_max"
        assert retries_max >= 0 and linger_ms >= 0 and request_timeout_ms > 0
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
        self._record_clock_ms = None if clock_ms is _wall_clock_ms else clock_ms
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
        self._task_group: anyio.abc.TaskGroup | None = None
        self._cluster: Cluster | None = None
        self._wake: LoopEvent | None = None
        self._space: anyio.Event | None = None
        self._metadata_lock: anyio.Lock | None = None
        self._stale_topics: set[str] = set()
        self._closing = False
        self._closed = False
        # Hot-path alias of the cluster's partition-count cache (filled on start).
        self._partition_counts: dict[str, int] = {}
        # With retries a partition has one batch in flight; the last one sent per
        # partition tells whether a new batch could leave now (see send_nowait).
        self._last_sent: dict[tuple[str, int], ProducerBatch] = {}
        self._wake_on_new_batch = self._accumulator.inflight_batches_per_partition_max > 1
        # With linger_ms=0 a batch is ready the moment it opens: send it at once.
        self._send_on_open = linger_ms == 0
        # True while the sender task is parked on _wake: only then may batches be
        # sent from outside it (_send_now), so they never overtake batches it holds.
        self._sender_parked = False
        # Batches _send_now drained but could not write (no connection yet, write
        # buffer full): the sender sends them first, before draining more.
        self._handoff: list[ProducerBatch] = []
        # Set when the sender is woken: enqueue then yields so it runs soon.
        self._sender_woken = False
        self._enqueued = 0  # enqueue calls, for the periodic checkpoint
        self._tools: EventLoopTools | None = None
        self._writes_nowait = False  # connections can write synchronously (asyncio)

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
        self._writes_nowait = self._tools.is_asyncio
        task_group = cluster.task_group
        self._partition_counts = cluster.partition_counts
        self._metadata_lock = anyio.Lock()
        task_group.start_soon(self._sender_loop)

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
            self._accumulator.fail_all(lambda: ConnectionClosedError("the producer is closed"))
            self._wake_sender()
            self._signal_space()
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
        are encoded as UTF-8.  Raises UnknownTopicOrPartitionError (topic absent,
        or ``partition`` out of range), BrokerUnavailableError (no metadata),
        ConnectionClosedError (producer closed).
        """
        for _ in range(3):  # bounded: metadata, then space; a third miss is an error
            try:
                handle = self.send_nowait(topic, value, key, headers, partition, timestamp_ms)
            except TooManyRequestsError:
                await self._wait_for_space()
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
        last_sent = self._last_sent.get((topic, partition))
        if last_sent is None or last_sent.done or self._wake_on_new_batch:
            # Otherwise (one batch in flight per partition) the partition's batch
            # in flight or waiting to be retried holds this one back, and its
            # outcome wakes the sender anyway.
            if self._send_on_open:
                self._send_now(now_ms)
            else:
                self._wake_sender()
        return RecordHandle(batch, delta)

    async def wait_for_space(self) -> None:
        """Wait until the buffer has room (and let the sender run meanwhile).
        Raises ConnectionClosedError if the producer closes."""
        await anyio.sleep(0)
        await self._wait_for_space()

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
            self._wake_sender()
            for batch in batches:
                await wait_for_batch(batch)
        finally:
            accumulator.flushing -= 1

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
        return count

    async def _check_partition(self, topic: str, partition: int) -> None:
        count = await self._partition_count(topic)
        if not 0 <= partition < count:
            raise UnknownTopicOrPartitionError(
                f"topic {topic!r} has {count} partitions; there is no partition {partition}"
            )

    def _batch_closed(self, topic: str, partition: int) -> None:
        # StickyPartitioner.batch_closed, checked here first: most closed batches
        # are not of the sticky partition (records sent to a chosen partition).
        if self._sticky.current.get(topic) != partition:
            return
        count = self._partition_counts.get(topic)
        if count:
            self._sticky.batch_closed(topic, partition, count)

    # -- buffer space -------------------------------------------------------------------------

    async def _wait_for_space(self) -> None:
        accumulator = self._accumulator
        for _ in range(1 << 30):  # bounded: every wake re-checks
            if self._closing:
                raise ConnectionClosedError("the producer is closed")
            if accumulator.buffer_bytes_used < accumulator.buffer_bytes_max:
                return
            if self._space is None:
                self._space = anyio.Event()
            self._wake_sender()
            await self._space.wait()

    def _signal_space(self) -> None:
        space = self._space
        if space is not None:
            self._space = None
            space.set()

    def _wake_sender(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            self._sender_woken = True
            wake.set()

    # -- the sender task ------------------------------------------------------------------------

    async def _sender_loop(self) -> None:
        accumulator = self._accumulator
        new_event = EventLoopTools().event
        while not self._closed:
            if self._stale_topics:
                await self._refresh_stale_topics()
            now_ms = self._clock_ms()
            if self._handoff:
                # Drained by _send_now (at most one per partition): they go first,
                # in their own requests (a request lists a partition once).
                batches, self._handoff = self._handoff, []
            else:
                batches = accumulator.drain(now_ms)
            if batches:
                await self._send_batches(batches)
                continue
            wait_ms = accumulator.next_ready_ms(now_ms)
            self._wake = wake = new_event()
            self._sender_parked = True
            try:
                if wait_ms is None:  # nothing lingers: only a new batch or a response wakes us
                    await wake.wait()
                else:
                    with anyio.move_on_after(wait_ms / 1000):
                        await wake.wait()
            finally:
                self._sender_parked = False

    def _send_now(self, now_ms: int | None = None) -> None:
        """Send the batches ready now from right here (an enqueue, or the response
        callback that freed their partition), with no trip through the sender
        task: a plain call that writes each request synchronously.  ``now_ms``:
        the clock, when the caller has just read it.

        Only while the sender is parked, so nothing it holds can be overtaken;
        batches that need awaiting (no live connection, a full write buffer) are
        handed to it, and it is woken whenever something is left for it (such as
        a lingering batch, a retry backoff or a metadata refresh)."""
        if self._closed:
            return
        accumulator = self._accumulator
        if not (accumulator.waiting_batches or self._handoff or self._stale_topics):
            return  # nothing to send or to wake the sender for (an idle acknowledgement)
        if not (self._sender_parked and self._writes_nowait) or self._handoff or self._stale_topics:
            self._wake_sender()
            return
        cluster = self._cluster
        assert cluster is not None
        if now_ms is None:
            now_ms = self._clock_ms()
        batches = accumulator.drain(now_ms)
        if len(batches) == 1 and self._send_one_now(batches[0]):
            pass  # the usual case, without the grouping below
        elif batches:
            for leader, group in self._group_by_leader(batches).items():
                connection = cluster.open_connection_for_node(leader)
                if connection is None:
                    self._handoff.extend(group)
                    continue
                for request_batches in self._split_requests(group):
                    if self._handoff or not connection.writable_now:
                        self._handoff.extend(request_batches)
                    else:
                        self._send_request_nowait(connection, request_batches)
        if (
            self._handoff
            or self._stale_topics
            or (accumulator.waiting_batches and accumulator.next_ready_ms(now_ms) is not None)
        ):
            self._wake_sender()

    async def _refresh_stale_topics(self) -> None:
        topics = sorted(self._stale_topics)
        self._stale_topics.clear()
        assert self._cluster is not None
        try:
            await self._cluster.refresh_metadata(topics)
        except DistributaryError as error:
            log.info("metadata refresh failed", topics=topics, error=str(error))

    def _send_one_now(self, batch: ProducerBatch) -> bool:
        """_send_now for one drained batch whose leader's connection is writable
        now; False (nothing done) otherwise."""
        cluster = self._cluster
        assert cluster is not None
        connection = cluster.open_leader_connection(batch.topic, batch.partition)
        if connection is None or not connection.writable_now:
            return False
        self._last_sent[(batch.topic, batch.partition)] = batch
        try:
            self._accumulator.build(batch, BATCH_BYTES_MAX_DEFAULT)
        except DistributaryError as error:
            self._accumulator.fail(batch, error)
            self._signal_space()
            return True
        self._send_request_nowait(connection, [batch])
        return True

    def _group_by_leader(self, batches: list[ProducerBatch]) -> dict[int, list[ProducerBatch]]:
        """Drained batches per leader; a batch without a known leader is retried."""
        cluster = self._cluster
        assert cluster is not None
        by_leader: dict[int, list[ProducerBatch]] = {}
        for batch in batches:
            leader = cluster.leader_for(batch.topic, batch.partition)
            if leader is None:
                self._handle_error(
                    batch, NotLeaderError(f"no known leader for {batch.topic}-{batch.partition}")
                )
                continue
            group = by_leader.get(leader)
            if group is None:
                by_leader[leader] = [batch]
            else:
                group.append(batch)
            self._last_sent[(batch.topic, batch.partition)] = batch
        return by_leader

    async def _send_batches(self, batches: list[ProducerBatch]) -> None:
        cluster = self._cluster
        assert cluster is not None
        for leader, group in self._group_by_leader(batches).items():
            try:
                connection = await cluster.connection_for_node(leader)
            except DistributaryError as error:
                for batch in group:
                    self._handle_error(batch, error)
                continue
            for request_batches in self._split_requests(group):
                await self._send_request(connection, request_batches)

    def _split_requests(self, batches: list[ProducerBatch]) -> list[list[ProducerBatch]]:
        """Build each batch's bytes and cut the list into requests of at most
        ``request_bytes_max`` bytes.  A batch that cannot be built fails."""
        requests: list[list[ProducerBatch]] = []
        current: list[ProducerBatch] = []
        current_bytes = 0
        for batch in batches:
            try:
                size = len(self._accumulator.build(batch, BATCH_BYTES_MAX_DEFAULT))
            except DistributaryError as error:
                self._accumulator.fail(batch, error)
                self._signal_space()
                continue
            if current and current_bytes + size > self.request_bytes_max:
                requests.append(current)
                current, current_bytes = [], 0
            current.append(batch)
            current_bytes += size
        if current:
            requests.append(current)
        return requests

    def _produce_request(
        self, batches: list[ProducerBatch]
    ) -> tuple[ProduceRequest, list[bytearray], list[ProducerBatch]]:
        """The request for built batches, its payload, and the batches in payload
        order (the body's order: topics as listed, partitions within)."""
        if len(batches) == 1:
            batch = batches[0]
            payload = batch.payload
            assert payload is not None
            topics = [ProduceTopic(batch.topic, [ProducePartition(batch.partition, len(payload))])]
            request = ProduceRequest(self.acks, self.request_timeout_ms, topics)
            return request, [payload], batches
        by_topic: dict[str, list[ProducerBatch]] = {}
        for batch in batches:
            by_topic.setdefault(batch.topic, []).append(batch)
        ordered = [batch for group in by_topic.values() for batch in group]
        request = ProduceRequest(
            acks=self.acks,
            timeout_ms=self.request_timeout_ms,
            topics=[
                ProduceTopic(
                    name,
                    [ProducePartition(b.partition, len(b.payload or b"")) for b in group],
                )
                for name, group in by_topic.items()
            ],
        )
        payloads = [batch.payload or bytearray() for batch in ordered]
        return request, payloads, ordered

    async def _send_request(
        self, connection: BrokerConnection, batches: list[ProducerBatch]
    ) -> None:
        request, payload, ordered = self._produce_request(batches)
        try:
            pending = await connection.send(
                request,
                payload,
                wants_response=self.acks != 0,
                timeout_ms=self.request_timeout_ms + 5_000,
                on_done=partial(self._produce_done, ordered),
                checked=False,  # valid by construction (acks and timeout checked in __init__)
            )
        except DistributaryError as error:
            for batch in ordered:
                self._handle_error(batch, error)
            return
        if pending is None:  # acks=none: nothing will come back
            self._complete_unacknowledged(ordered)

    def _send_request_nowait(
        self, connection: BrokerConnection, batches: list[ProducerBatch]
    ) -> None:
        """:meth:`_send_request` on a connection that is ``writable_now``."""
        request, payload, ordered = self._produce_request(batches)
        try:
            pending = connection.send_nowait(
                request,
                payload,
                wants_response=self.acks != 0,
                timeout_ms=self.request_timeout_ms + 5_000,
                on_done=partial(self._produce_done, ordered),
                checked=False,
            )
        except DistributaryError as error:
            for batch in ordered:
                self._handle_error(batch, error)
            return
        if pending is None:
            self._complete_unacknowledged(ordered)

    def _complete_unacknowledged(self, batches: list[ProducerBatch]) -> None:
        """acks=none: nothing will come back; the batches are done once written."""
        for batch in batches:
            self._accumulator.complete(batch, -1)
        self._signal_space()

    def _produce_done(self, batches: list[ProducerBatch], pending: PendingResponse) -> None:
        """The response (or the error) of a Produce request: complete, retry or fail
        each batch.  Runs inside the connection's dispatch: no awaiting here."""
        try:
            response = pending.result()
        except DistributaryError as error:
            for batch in batches:
                self._handle_error(batch, error)
            self._send_now()
            return
        body = response.body
        assert isinstance(body, ProduceResponse)
        topics = body.topics
        if len(topics) == 1 and len(topics[0].partitions) == 1 and len(batches) == 1:
            # The common case (one partition per request, acknowledged): no lookup table.
            batch = batches[0]
            only = topics[0].partitions[0]
            matches = topics[0].name == batch.topic and only.partition == batch.partition
            if matches and not only.error_code:
                self._accumulator.complete(batch, only.base_offset)
            else:
                self._complete(batch, only if matches else None)
        else:
            results = {
                (topic.name, part.partition): part for topic in topics for part in topic.partitions
            }
            for batch in batches:
                self._complete(batch, results.get((batch.topic, batch.partition)))
        if self._space is not None:
            self._signal_space()
        # The next batches of these partitions may leave now: send them from here.
        self._send_now()

    def _complete(self, batch: ProducerBatch, result: ProducePartitionResponse | None) -> None:
        if result is None:
            self._handle_error(
                batch, ProtocolError(f"no produce result for {batch.topic}-{batch.partition}")
            )
        elif result.error_code:
            self._handle_error(batch, error_for_code(result.error_code, result.error_message))
        else:
            self._accumulator.complete(batch, result.base_offset)

    def _handle_error(self, batch: ProducerBatch, error: DistributaryError) -> None:
        """Retry ``batch`` later if the error allows it, else fail its records."""
        if isinstance(error, NotLeaderError | UnknownTopicOrPartitionError):
            self._stale_topics.add(batch.topic)
            if self._cluster is not None:
                self._cluster.invalidate(batch.topic)
        retriable = error.retriable
        if isinstance(error, OutOfOrderSequenceError) and self._accumulator.is_stale(batch):
            retriable = False  # an earlier batch failed for good: a gap for ever
        if retriable and batch.attempts < self.retries_max and not self._closed:
            delay_ms = backoff_ms(
                batch.attempts, self.retry_backoff_ms, self.retry_backoff_max_ms, self._random
            )
            log.info(
                "retrying batch",
                topic=batch.topic,
                partition=batch.partition,
                attempt=batch.attempts + 1,
                error=str(error),
            )
            self._accumulator.retry(batch, self._clock_ms() + int(delay_ms))
        else:
            self._accumulator.fail(batch, error)
            self._signal_space()


def _encode_headers(headers: Sequence[tuple[str, KeyOrValue]]) -> tuple[Header, ...]:
    return tuple(
        (name, value if type(value) is bytes else _as_bytes(value, "header value"))
        for name, value in headers
    )
