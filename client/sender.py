"""The producer's sender: ready batches out as Produce requests, answers back in.

:class:`Sender` owns everything between the accumulator (client/accumulator.py)
and the broker connections.  A background task (:meth:`Sender.run`) drains
ready batches (full, ``linger_ms`` old, or flushing), groups them by leader into
Produce requests of several partitions (at most ``request_bytes_max`` bytes
each), writes them pipelined on one connection per broker, and resolves each
batch from the response in the connection's callback (:meth:`_produce_done`),
with no task per request.

On asyncio, where a write never waits, a batch that is ready at once
(``linger_ms=0``) leaves from ``enqueue`` itself, and the next batch of a
partition leaves from the callback that handles the previous one's
acknowledgement (:meth:`Sender.send_now`): no trip through the sender task, as
long as it is parked so nothing it holds is overtaken.

Errors (:meth:`_handle_error`): a retriable one (connection lost, broker
unreachable or restarting, not leader, timeout, out-of-order sequence) puts the
batch back in its partition's queue, ahead of the batches sent after it, after
an exponential backoff (``retry_backoff_ms`` doubling up to
``retry_backoff_max_ms``), so retries never reorder records.  What bounds the
retries is the batch's delivery deadline: ``delivery_timeout_ms`` after its
first record was enqueued, a batch still failing fails for good (with
RequestTimedOutError naming the last error), so a broker restart shorter than
that is ridden out.  ``retries_max`` bounds the attempts too (Kafka's default:
no practical bound).  A connection is tried once per attempt (no reconnect loop
of its own), so the sender never blocks longer than a connect timeout.
OUT_OF_ORDER_SEQUENCE and UNKNOWN_PRODUCER_ID go to
``RecordAccumulator.sequence_error`` with the log start offset the broker
answered: it re-sequences the partition under a new producer epoch when no
record can be written twice (KIP-360), and otherwise the batch fails with
OutOfOrderSequenceFatalError or UnknownProducerIdFatalError.  For that the
sender marks a batch ``maybe_appended`` when an attempt ends without saying
whether the broker appended it (no answer, or an error other than those the
broker gives before appending).  A batch that fails for good with idempotence
fails the batches queued behind it too (``RecordAccumulator.fail``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Final

import anyio

from client._io.cluster import Cluster, backoff_ms
from client._io.connection import BrokerConnection, EventLoopTools, LoopEvent, PendingResponse
from client._logging import get_logger
from client.accumulator import ProducerBatch, RecordAccumulator
from client.errors import (
    BrokerUnavailableError,
    ConnectionClosedError,
    DistributaryError,
    ErrorCode,
    FencedLeaderEpochError,
    NotLeaderError,
    OutOfOrderSequenceError,
    OutOfOrderSequenceFatalError,
    ProtocolError,
    RequestTimedOutError,
    UnknownProducerIdError,
    UnknownProducerIdFatalError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.protocol.messages import (
    ProducePartition,
    ProducePartitionResponse,
    ProduceRequest,
    ProduceResponse,
    ProduceTopic,
)
from client.records.header import BATCH_BYTES_LIMIT

# Errors after which the partition's leader is looked up again: it moved, or its
# broker is gone (a replica elsewhere may lead it now).
_LEADER_MAY_HAVE_MOVED: Final = (
    NotLeaderError,
    UnknownTopicOrPartitionError,
    FencedLeaderEpochError,
    BrokerUnavailableError,
    ConnectionClosedError,
)

# Partition errors a broker answers before appending anything: after any other
# error (or no answer) the batch may be in the log.
_REFUSED_BEFORE_APPEND: Final = frozenset(
    {
        ErrorCode.OUT_OF_ORDER_SEQUENCE,
        ErrorCode.UNKNOWN_PRODUCER_ID,
        ErrorCode.NOT_ENOUGH_REPLICAS,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
        ErrorCode.TOO_MANY_REQUESTS,
    }
)

log = get_logger("client.producer")

# The client waits this much longer for a Produce answer than the timeout it
# gives the broker: the broker itself answers at ``timeout_ms`` (a request still
# waiting on replicas then fails there), and that answer needs time to come back
# before the client gives up on the connection's slot.
REQUEST_TIMEOUT_MARGIN_MS: Final = 5_000


class Sender:
    """See the module docstring.  One per producer; :meth:`start` once connected."""

    def __init__(
        self,
        accumulator: RecordAccumulator,
        *,
        acks: int,
        request_timeout_ms: int,
        request_bytes_max: int,
        retries_max: int,
        delivery_timeout_ms: int,
        retry_backoff_ms: int,
        retry_backoff_max_ms: int,
        clock_ms: Callable[[], int],
        rng: random.Random,
        on_woken: Callable[[], None],
    ) -> None:
        self._accumulator = accumulator
        self.acks = acks
        self.request_timeout_ms = request_timeout_ms
        self.request_bytes_max = request_bytes_max
        self.retries_max = retries_max
        self.delivery_timeout_ms = delivery_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_max_ms = retry_backoff_max_ms
        self._clock_ms = clock_ms
        self._random = rng
        self._on_woken = on_woken  # the producer's enqueue then yields so the sender runs
        self._cluster: Cluster | None = None
        self._wake: LoopEvent | None = None
        self._space: anyio.Event | None = None
        self._stale_topics: set[str] = set()
        self._partition_counts: dict[str, int] = {}
        self.closed = False
        # Batches failed for good so far (those failed behind another included).
        self.failed_batches = 0
        # With retries a partition has one batch in flight; the last one sent per
        # partition tells whether a new batch could leave now (see batch_opened).
        self._last_sent: dict[tuple[str, int], ProducerBatch] = {}
        self._wake_on_new_batch = accumulator.inflight_batches_per_partition_max > 1
        # With linger_ms=0 a batch is ready the moment it opens: send it at once.
        self._send_on_open = accumulator.linger_ms == 0
        # True while the sender task is parked on _wake: only then may batches be
        # sent from outside it (send_now), so they never overtake batches it holds.
        self._parked = False
        # Batches send_now drained but could not write (no connection yet, write
        # buffer full): the sender task sends them first, before draining more.
        self._handoff: list[ProducerBatch] = []
        self._writes_nowait = False  # connections can write synchronously (asyncio)
        self._counters = accumulator.counters  # client/metrics.py
        self._loop_clock: Callable[[], float] | None = None  # seconds, for request latency

    def start(
        self, cluster: Cluster, tools: EventLoopTools, partition_counts: dict[str, int]
    ) -> None:
        """Use ``cluster``'s connections; the caller then runs :meth:`run` as a task.
        ``partition_counts``: the producer's counts, updated when a refresh finds
        more partitions."""
        self._cluster = cluster
        self._partition_counts = partition_counts
        self._writes_nowait = tools.is_asyncio
        self._loop_clock = tools.clock

    def stop(self) -> None:
        """The producer is closing: fail what is unfinished and wake every waiter."""
        self.closed = True
        self._accumulator.fail_all(lambda: ConnectionClosedError("the producer is closed"))
        self.wake()
        self.signal_space()

    # -- waking ---------------------------------------------------------------------

    def batch_opened(self, topic: str, partition: int, now_ms: int) -> None:
        """A record opened a new batch of ``topic``-``partition``: send or wake."""
        last_sent = self._last_sent.get((topic, partition))
        if last_sent is None or last_sent.done or self._wake_on_new_batch:
            # Otherwise (one batch in flight per partition) the partition's batch
            # in flight or waiting to be retried holds this one back, and its
            # outcome wakes the sender anyway.
            if self._send_on_open:
                self.send_now(now_ms)
            else:
                self.wake()

    def wake(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            self._on_woken()
            wake.set()

    async def wait_for_space(self) -> None:
        """Wait until the accumulator's buffer has room.  Raises
        ConnectionClosedError if the producer closes."""
        accumulator = self._accumulator
        while True:  # every wake re-checks; closing wakes it for good
            if self.closed:
                raise ConnectionClosedError("the producer is closed")
            if accumulator.buffer_bytes_used < accumulator.buffer_bytes_max:
                return
            if self._space is None:
                self._space = anyio.Event()
            self.wake()
            await self._space.wait()

    def signal_space(self) -> None:
        space = self._space
        if space is not None:
            self._space = None
            space.set()

    # -- the sender task ------------------------------------------------------------

    async def run(self) -> None:
        """The sender task, until the producer closes."""
        accumulator = self._accumulator
        new_event = EventLoopTools().event
        while not self.closed:
            if self._stale_topics:
                await self._refresh_stale_topics()
            now_ms = self._clock_ms()
            if self._handoff:
                # Drained by send_now (at most one per partition): they go first,
                # in their own requests (a request lists a partition once).
                batches, self._handoff = self._handoff, []
            else:
                batches = accumulator.drain(now_ms)
            if batches:
                await self._send_batches(batches)
                continue
            wait_ms = accumulator.next_ready_ms(now_ms)
            self._wake = wake = new_event()
            self._parked = True
            try:
                if wait_ms is None:  # nothing lingers: only a new batch or a response wakes us
                    await wake.wait()
                else:
                    with anyio.move_on_after(wait_ms / 1000):
                        await wake.wait()
            finally:
                self._parked = False

    def send_now(self, now_ms: int | None = None) -> None:
        """Send the batches ready now from right here (an enqueue, or the response
        callback that freed their partition), with no trip through the sender
        task: a plain call that writes each request synchronously.  ``now_ms``:
        the clock, when the caller has just read it.

        Only while the sender is parked, so nothing it holds can be overtaken;
        batches that need awaiting (no live connection, a full write buffer) are
        handed to it, and it is woken whenever something is left for it (such as
        a lingering batch, a retry backoff or a metadata refresh)."""
        if self.closed:
            return
        accumulator = self._accumulator
        if not (accumulator.waiting_batches or self._handoff or self._stale_topics):
            return  # nothing to send or to wake the sender for (an idle acknowledgement)
        if not (self._parked and self._writes_nowait) or self._handoff or self._stale_topics:
            self.wake()
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
            self.wake()

    async def _refresh_stale_topics(self) -> None:
        topics = sorted(self._stale_topics)
        self._stale_topics.clear()
        assert self._cluster is not None
        try:
            await self._cluster.refresh_metadata(topics)
        except DistributaryError as error:
            log.info("metadata refresh failed", topics=topics, error=str(error))
            return
        counts = self._cluster.partition_counts
        for topic in topics:
            count = counts.get(topic)
            if count is not None and count > self._partition_counts.get(topic, 0):
                self._partition_counts[topic] = count

    # -- requests -------------------------------------------------------------------

    def _send_one_now(self, batch: ProducerBatch) -> bool:
        """send_now for one drained batch whose leader's connection is writable
        now; False (nothing done) otherwise."""
        cluster = self._cluster
        assert cluster is not None
        connection = cluster.open_leader_connection(batch.topic, batch.partition)
        if connection is None or not connection.writable_now:
            return False
        self._last_sent[(batch.topic, batch.partition)] = batch
        try:
            self._accumulator.build(batch, BATCH_BYTES_LIMIT)
        except DistributaryError as error:
            self._fail(batch, error)
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
                connection = await cluster.connection_for_node(leader, attempts_max=1)
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
                size = len(self._accumulator.build(batch, BATCH_BYTES_LIMIT))
            except DistributaryError as error:
                self._fail(batch, error)
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
        self._counters.requests_sent += 1
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
                timeout_ms=self.request_timeout_ms + REQUEST_TIMEOUT_MARGIN_MS,
                on_done=partial(self._produce_done, ordered),
                checked=False,  # valid by construction (acks and timeout checked by Producer)
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
                timeout_ms=self.request_timeout_ms + REQUEST_TIMEOUT_MARGIN_MS,
                on_done=partial(self._produce_done, ordered),
                checked=False,
            )
        except DistributaryError as error:
            for batch in ordered:
                self._handle_error(batch, error)
            return
        if pending is None:
            self._complete_unacknowledged(ordered)

    # -- answers --------------------------------------------------------------------

    def _complete_unacknowledged(self, batches: list[ProducerBatch]) -> None:
        """acks=none: nothing will come back; the batches are done once written."""
        for batch in batches:
            self._accumulator.complete(batch, -1)
        self.signal_space()

    def _produce_done(self, batches: list[ProducerBatch], pending: PendingResponse) -> None:
        """The response (or the error) of a Produce request: complete, retry or fail
        each batch.  Runs inside the connection's dispatch: no awaiting here."""
        loop_clock = self._loop_clock
        if loop_clock is not None:
            # The slot's deadline is its send time plus its timeout.
            sent_at = pending.deadline - pending.timeout_ms / 1000
            self._counters.request_latency.observe(max(0.0, loop_clock() - sent_at))
        try:
            response = pending.result()
        except DistributaryError as error:
            for batch in batches:
                batch.maybe_appended = True  # no answer: the broker may have appended it
                self._handle_error(batch, error)
            self.send_now()
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
            self.signal_space()
        # The next batches of these partitions may leave now: send them from here.
        self.send_now()

    def _complete(self, batch: ProducerBatch, result: ProducePartitionResponse | None) -> None:
        if result is None:
            self._handle_error(
                batch, ProtocolError(f"no produce result for {batch.topic}-{batch.partition}")
            )
        elif result.error_code:
            if result.error_code not in _REFUSED_BEFORE_APPEND:
                batch.maybe_appended = True
            self._handle_error(
                batch,
                error_for_code(result.error_code, result.error_message),
                result.log_start_offset,
            )
        else:
            self._accumulator.complete(batch, result.base_offset)

    def _handle_error(
        self, batch: ProducerBatch, error: DistributaryError, log_start_offset: int = -1
    ) -> None:
        """Retry ``batch`` later if the error allows it, else fail its records (and,
        with idempotence, the batches queued behind it).  ``log_start_offset``: the
        partition's, from the broker's answer (-1: none)."""
        self._counters.count_error(error.code.name)
        if isinstance(error, _LEADER_MAY_HAVE_MOVED):
            self._stale_topics.add(batch.topic)
            if self._cluster is not None:
                self._cluster.invalidate(batch.topic)
        # A batch in flight behind one that failed for good is never resent.
        retriable = error.retriable and not batch.no_resend
        if not (retriable and batch.attempts < self.retries_max and not self.closed):
            self._fail(batch, error)
            return
        now_ms = self._clock_ms()
        deadline_ms = batch.created_ms + self.delivery_timeout_ms
        if now_ms >= deadline_ms:
            self._fail(
                batch,
                RequestTimedOutError(
                    f"not acknowledged within delivery_timeout_ms "
                    f"({self.delivery_timeout_ms:,} ms); last error: {error.message}"
                ),
            )
            return
        if isinstance(
            error, OutOfOrderSequenceError | UnknownProducerIdError
        ) and not self._accumulator.sequence_error(batch, log_start_offset):
            self._fail(batch, _fatal_sequence_error(batch, error, log_start_offset))
            return
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
        self._counters.retries += 1
        # The last attempt comes at the deadline, not after it.
        self._accumulator.retry(batch, min(now_ms + int(delay_ms), deadline_ms))

    def _fail(self, batch: ProducerBatch, error: DistributaryError) -> None:
        """Fail ``batch`` for good; the accumulator fails what must not follow it."""
        failed_behind = self._accumulator.fail(batch, error)
        self.failed_batches += 1 + len(failed_behind)
        counters = self._counters
        counters.batches_failed += 1 + len(failed_behind)
        counters.records_failed += len(batch.builder) + sum(len(b.builder) for b in failed_behind)
        if failed_behind:
            log.warning(
                "batch failed: failing the batches queued behind it",
                topic=batch.topic,
                partition=batch.partition,
                batches=len(failed_behind),
                error=str(error),
            )
        self.signal_space()


def _fatal_sequence_error(
    batch: ProducerBatch, error: DistributaryError, log_start_offset: int
) -> DistributaryError:
    """The non-retriable error of a batch that resending could duplicate."""
    where = f"{batch.topic}-{batch.partition}"
    if isinstance(error, UnknownProducerIdError):
        return UnknownProducerIdFatalError(
            f"{where} lost this producer's state (log start {log_start_offset}) while an "
            f"unacknowledged batch may be in the log: not resent ({error.message})"
        )
    return OutOfOrderSequenceFatalError(
        f"{where} refused the batch as out of order while an unacknowledged batch may be "
        f"in the log: not resent ({error.message})"
    )
