"""The producer's record accumulator: per-partition batches, linger, order, buffer bound.

Sans-I/O: it never sleeps, never touches a socket and takes ``now_ms`` from the
caller.  The producer's I/O shell (client/producer.py) appends records and runs
a sender task that asks :meth:`RecordAccumulator.drain` for ready batches.

Per partition there is at most one *open* batch (a ``BatchBuilder`` still taking
records) and a queue of *closed* batches waiting to be sent.  A batch is ready
when it is closed (full: the next record would pass ``batch_bytes_max``), when
its first record is ``linger_ms`` old, or when a flush is in progress.

Ordering: at most ``inflight_batches_per_partition_max`` batches of a partition
are in flight, and a batch that must be retried goes back to its partition's
queue ahead of every batch sent after it (in send order), so a partition's
batches reach the log in the order they were appended even across retries.
Without idempotence the producer allows 1 in flight when retries are enabled,
and a retried batch may be written twice (at least once).

Idempotence (``producer_id >= 0``): each batch gets its partition's producer
epoch and next sequence number when it is built (first sent): ``base_sequence``
counts records, wrapping at 2^31 as in Kafka, and a retry resends the same
bytes.  The broker drops a retried batch it already has, so up to 5 batches may
be in flight per partition.  A retried batch is resent only when nothing else
of its partition is in flight, and nothing newer leaves while it is in flight,
so the broker sees a partition's sequences in order.  What each idempotence
error does:

- OUT_OF_ORDER_SEQUENCE or UNKNOWN_PRODUCER_ID (:meth:`RecordAccumulator.
  sequence_error`, KIP-360).  A batch with an earlier batch of its partition
  still unacknowledged in the same epoch is simply retried: the earlier batches,
  queued ahead, are resent first and their answers decide.  A batch sent before
  the partition was re-sequenced is retried under the new epoch.  Otherwise the
  broker has lost this producer's state (or holds a gap), and starting over is
  safe only if none of the partition's unacknowledged batches can already be in
  the log: either the log start offset the broker answered is past the last
  offset acknowledged to this producer (retention removed its records, and the
  state with them), or no unacknowledged batch of the partition had an attempt
  whose outcome is unknown (``maybe_appended``: no answer, or an error that may
  follow an append, such as NOT_LEADER or REQUEST_TIMED_OUT).  Then the
  partition's producer epoch goes up and its sequence restarts at 0; every
  unacknowledged batch of the partition is re-stamped with the new epoch and the
  next sequence when it is resent (:meth:`RecordAccumulator.build`), in send
  order, before any new batch.  If not, the batch fails for good with a
  non-retriable OutOfOrderSequenceFatalError or UnknownProducerIdFatalError:
  resending it under a new epoch could write its records twice.
- A batch that fails for good (its delivery timeout passed, or an error that is
  not retriable): every batch queued behind it (and the open batch) fails with
  OutOfOrderSequenceError, so no record is written after an earlier record of
  the same partition failed -- also when the failed batch was never sent (no
  connection, no leader).  If it was sent (it used sequence numbers), the
  partition's epoch goes up and its sequence restarts at 0, and the
  partition's batches still in flight are marked ``no_resend``: acknowledged,
  they stand (a batch sent after the failed one is acknowledged only if the
  broker wrote the failed one too); any error fails them, and what was queued
  behind them meanwhile.  Nothing else of the partition leaves until they are
  done, so no batch of the old epoch is ever resent among the new epoch's.

Buffer bound: ``buffer_bytes_used`` counts the estimated bytes of every record
not yet acknowledged (or failed); the shell makes ``enqueue`` wait while it is at
``buffer_bytes_max``.

Invariants (:meth:`check_invariants`): a partition has no more in-flight batches
than allowed; ``buffer_bytes_used`` equals the sum over unfinished batches; a
queued batch is not ``no_resend``, and one that was built has been sent
(``attempts > 0``).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from client.errors import BatchTooLargeError, DistributaryError, OutOfOrderSequenceError
from client.metrics import ProducerCounters
from client.records.builder import RECORD_OVERHEAD_BYTES, BatchBuilder, Header
from client.records.header import CRC_AT, CRC_FROM, HEADER_BYTES, Compression, crc32c

PartitionKey = tuple[str, int]

# A record's share of the buffer: its key and value plus the framing estimate.
RECORD_BYTES_OVERHEAD: Final = RECORD_OVERHEAD_BYTES


def record_size(value: bytes | None, key: bytes | None, headers: Sequence[Header]) -> int:
    """A record's estimated encoded bytes: its share of a batch and of the buffer."""
    size = RECORD_BYTES_OVERHEAD + (len(value) if value else 0) + (len(key) if key else 0)
    if headers:
        size += sum(len(name) + len(data) + 8 for name, data in headers)
    return size


class Waiter(Protocol):
    """What the I/O shell parks on a batch to be woken when it is done (an anyio.Event)."""

    def set(self) -> None: ...


class ProducerBatch:
    """One batch through its life: open -> closed -> in flight -> done.

    The batch doubles as the *future* of all its records: a record's handle is
    ``(batch, offset_delta)``, so no per-record future exists.  ``waiter`` is set
    by the I/O shell when someone waits; it is set once when the batch is done.
    """

    __slots__ = (
        "attempts",
        "base_offset",
        "buffer_bytes",
        "builder",
        "created_ms",
        "done",
        "error",
        "maybe_appended",
        "no_resend",
        "partition",
        "payload",
        "record_count",
        "retry_at_ms",
        "send_order",
        "topic",
        "waiter",
    )

    def __init__(self, topic: str, partition: int, builder: BatchBuilder, now_ms: int) -> None:
        self.topic = topic
        self.partition = partition
        self.builder = builder
        self.created_ms = now_ms
        self.buffer_bytes = 0
        self.record_count = 0
        self.attempts = 0
        self.send_order = -1  # per partition, set when first built (sent)
        self.retry_at_ms = 0
        self.payload: bytearray | None = None  # built once, resent as is on retry
        self.done = False
        self.base_offset = -1
        self.error: DistributaryError | None = None
        self.waiter: Waiter | None = None
        # A batch of the partition failed for good while this one was in flight:
        # it is never resent (acknowledged, it stands; an error fails it).
        self.no_resend = False
        # An attempt ended without saying whether the broker appended the batch
        # (no answer, or an error that may follow an append): it may be in the log.
        self.maybe_appended = False

    def build(self, batch_bytes_max: int | None = None) -> bytearray:
        """The wire bytes of this batch (built on first use, then cached).
        Raises BatchTooLargeError."""
        if self.payload is None:
            self.payload = self.builder.build(batch_bytes_max)
            self.record_count = len(self.builder)
        return self.payload

    def __repr__(self) -> str:
        return (
            f"ProducerBatch({self.topic}-{self.partition}, records={len(self.builder)}, "
            f"attempts={self.attempts}, done={self.done})"
        )


SEQUENCE_MODULUS: Final = 1 << 31  # base_sequence is an i32 that wraps (Kafka)
PRODUCER_EPOCH_MAX: Final = (1 << 15) - 1
# producer_epoch (i16) then base_sequence (i32), at byte 51 of the batch header
# (client/records/header.py): re-stamped in place when a batch is re-sequenced.
PRODUCER_EPOCH_AT: Final = 51
_EPOCH_AND_SEQUENCE = struct.Struct(">hi")
_CRC_PACK = struct.Struct(">I")
assert struct.calcsize(">qiibIhiqqq") == PRODUCER_EPOCH_AT


def restamp_sequence(payload: bytearray, producer_epoch: int, base_sequence: int) -> None:
    """Rewrite a built batch's producer epoch and base sequence in place and
    re-checksum it (the CRC covers the producer fields).  Per batch: one CRC-32C
    pass over its bytes, in C."""
    assert 0 <= producer_epoch <= PRODUCER_EPOCH_MAX and 0 <= base_sequence < SEQUENCE_MODULUS
    _EPOCH_AND_SEQUENCE.pack_into(payload, PRODUCER_EPOCH_AT, producer_epoch, base_sequence)
    _CRC_PACK.pack_into(payload, CRC_AT, crc32c(memoryview(payload)[CRC_FROM:]))


class _PartitionSendState:
    """One partition's batches on their way out: the open one, the queue, the
    in-flight counts, and (with idempotence) the producer epoch and sequence."""

    __slots__ = (
        "epoch",
        "inflight",
        "last_acked_offset",
        "next_sequence",
        "no_resend_inflight",
        "open",
        "queue",
        "retry_inflight",
        "sent",
    )

    def __init__(self) -> None:
        self.open: ProducerBatch | None = None
        self.queue: deque[ProducerBatch] = deque()
        self.inflight = 0
        self.retry_inflight = 0  # retried batches in flight (at most 1, alone)
        # In-flight batches marked no_resend: nothing else leaves until they are done.
        self.no_resend_inflight = 0
        self.sent = 0  # batches built so far: the next send_order
        self.epoch = 0  # producer epoch of new batches (idempotence)
        self.next_sequence = 0  # base_sequence of the next batch built
        # The last offset of the partition's last acknowledged batch (-1: none, or
        # acks=none), against which the broker's log start offset is compared.
        self.last_acked_offset = -1


class RecordAccumulator:
    """See the module docstring.  One owner (the producer); not thread-safe."""

    def __init__(
        self,
        *,
        batch_bytes_max: int,
        linger_ms: int,
        buffer_bytes_max: int,
        compression: Compression = Compression.NONE,
        inflight_batches_per_partition_max: int = 1,
        on_batch_closed: Callable[[str, int], None] | None = None,
        producer_id: int = -1,
    ) -> None:
        assert batch_bytes_max > 0 and buffer_bytes_max > 0 and linger_ms >= 0
        assert inflight_batches_per_partition_max >= 1
        assert -1 <= producer_id < 1 << 63, producer_id
        self.producer_id = producer_id  # >= 0: idempotent (sequenced) batches
        self.batch_bytes_max = batch_bytes_max
        self.linger_ms = linger_ms
        self.buffer_bytes_max = buffer_bytes_max
        self.compression = compression
        self.inflight_batches_per_partition_max = inflight_batches_per_partition_max
        self.on_batch_closed = on_batch_closed
        self.buffer_bytes_used = 0
        self.closed = False
        self.flushing = 0  # > 0 while a flush wants open batches sent now
        self._partitions: dict[PartitionKey, _PartitionSendState] = {}
        # The open batch of each partition that has one (read on the hot path).
        self.open_batches: dict[PartitionKey, ProducerBatch] = {}
        # A batch takes records while its records' estimated bytes stay within this.
        self.fit_bytes = batch_bytes_max - HEADER_BYTES
        self._unfinished: set[ProducerBatch] = set()
        # Batches open or queued (not in flight, not done), over all partitions:
        # while it is 0, drain() finds nothing and next_ready_ms() is None, so the
        # producer's per-acknowledgement path can skip both.
        self.waiting_batches = 0
        # The producer's metrics (client/metrics.py), shared with the sender.
        self.counters = ProducerCounters()

    # -- appending (hot path) ---------------------------------------------------------

    def append(
        self,
        topic: str,
        partition: int,
        value: bytes | None,
        key: bytes | None,
        headers: Sequence[Header],
        timestamp_ms: int | None,
        now_ms: int,
        size: int | None = None,
    ) -> tuple[ProducerBatch, int, bool]:
        """Add a record to its partition's open batch (``timestamp_ms`` None: the
        batch builder reads the wall clock).  ``size``: the record's
        :func:`record_size` when the caller has it already.

        Raises BatchTooLargeError when the record alone is over the batch limit.

        Returns ``(batch, offset_delta, wake)``: ``wake`` is true when a batch was
        opened or a full one closed, i.e. when the sender should look again.

        The producer's hot path may skip this call when the record fits the open
        batch: ``open_batches[(topic, partition)]`` exists and
        ``batch.buffer_bytes + size <= fit_bytes`` (``size`` from
        :func:`record_size`); it then appends to ``batch.builder`` itself and adds
        ``size`` to ``batch.buffer_bytes`` and ``buffer_bytes_used``.
        """
        assert not self.closed, "append after the producer closed"
        if size is None:
            size = record_size(value, key, headers)
        if size > self.fit_bytes:
            # Refused here, at enqueue, not when the batch is built: the caller learns
            # which record it was, and no later record is written in its place.
            raise BatchTooLargeError(
                f"a record of about {size:,} bytes does not fit a batch of "
                f"batch_bytes_max {self.fit_bytes + HEADER_BYTES:,} bytes"
            )
        key_tp = (topic, partition)
        batch = self.open_batches.get(key_tp)
        wake = False
        if batch is None:
            batch = self._open(key_tp, now_ms)
            wake = True
        elif batch.buffer_bytes + size > self.fit_bytes:
            self._close(key_tp)
            batch = self._open(key_tp, now_ms)
            wake = True
        delta = batch.builder.append(value, key, headers, timestamp_ms)
        batch.buffer_bytes += size
        self.buffer_bytes_used += size
        return batch, delta, wake

    def _open(self, key_tp: PartitionKey, now_ms: int) -> ProducerBatch:
        state = self._partitions.get(key_tp)
        if state is None:
            state = self._partitions[key_tp] = _PartitionSendState()
        assert state.open is None
        batch = ProducerBatch(key_tp[0], key_tp[1], BatchBuilder(self.compression), now_ms)
        state.open = batch
        self.open_batches[key_tp] = batch
        self._unfinished.add(batch)
        self.waiting_batches += 1
        return batch

    def _close(self, key_tp: PartitionKey) -> None:
        batch = self.open_batches.pop(key_tp)
        state = self._partitions[key_tp]
        assert state.open is batch
        state.open = None
        state.queue.append(batch)
        if self.on_batch_closed is not None:
            self.on_batch_closed(key_tp[0], key_tp[1])

    @property
    def has_buffer_space(self) -> bool:
        return self.buffer_bytes_used < self.buffer_bytes_max

    # -- draining (sender) --------------------------------------------------------------

    def drain(self, now_ms: int) -> list[ProducerBatch]:
        """Take the batches that are ready to send now, at most one per partition
        per call and never more in flight than allowed.  Marks them in flight."""
        ready: list[ProducerBatch] = []
        linger_ms = self.linger_ms
        flushing = self.flushing > 0
        for key_tp, state in self._partitions.items():
            if (
                state.inflight >= self.inflight_batches_per_partition_max
                or state.retry_inflight
                or state.no_resend_inflight
            ):
                continue
            if state.queue:
                batch = state.queue[0]
                if batch.retry_at_ms > now_ms:
                    continue
                if batch.attempts:
                    if state.inflight:
                        continue  # a retry goes alone, after what is in flight
                    state.retry_inflight += 1
                state.queue.popleft()
            elif state.open is not None and (
                flushing or now_ms - state.open.created_ms >= linger_ms
            ):
                batch = state.open
                self._close(key_tp)
                state.queue.pop()
            else:
                continue
            state.inflight += 1
            self.waiting_batches -= 1
            ready.append(batch)
        return ready

    def next_ready_ms(self, now_ms: int) -> int | None:
        """Milliseconds until some batch may become ready without new records
        (0: something is ready now), or None when nothing is waiting."""
        earliest: int | None = None
        flushing = self.flushing > 0
        for state in self._partitions.values():
            if (
                state.inflight >= self.inflight_batches_per_partition_max
                or state.retry_inflight
                or state.no_resend_inflight
            ):
                continue
            if state.queue:
                if state.queue[0].attempts and state.inflight:
                    continue  # its in-flight batches' outcomes wake the sender
                at = state.queue[0].retry_at_ms
            elif state.open is not None:
                at = now_ms if flushing else state.open.created_ms + self.linger_ms
            else:
                continue
            if earliest is None or at < earliest:
                earliest = at
        return None if earliest is None else max(0, earliest - now_ms)

    # -- building (sender) ---------------------------------------------------------------

    def build(self, batch: ProducerBatch, batch_bytes_max: int | None = None) -> bytearray:
        """The batch's wire bytes; the first call (the first send) gives it its
        send order and, with idempotence, its producer epoch and base sequence.
        A batch built under an older epoch of its partition (the partition was
        re-sequenced, see :meth:`sequence_error`) is re-stamped with the current
        epoch and the next sequence.  The sender builds a partition's batches in
        drain order.  Raises BatchTooLargeError (then no sequence number is used up)."""
        payload = batch.payload
        if payload is not None:
            if self.producer_id >= 0:
                self._resequence_if_stale(batch, payload)
            return payload
        state = self._partitions[(batch.topic, batch.partition)]
        builder = batch.builder
        if self.producer_id >= 0:
            builder.producer_id = self.producer_id
            builder.producer_epoch = state.epoch
            builder.base_sequence = state.next_sequence
        # ProducerBatch.build, without its extra calls (once per batch sent).
        payload = batch.payload = builder.build(batch_bytes_max)
        batch.record_count = len(builder)
        if self.producer_id >= 0:
            state.next_sequence = (state.next_sequence + batch.record_count) % SEQUENCE_MODULUS
        batch.send_order = state.sent
        state.sent += 1
        return payload

    def _resequence_if_stale(self, batch: ProducerBatch, payload: bytearray) -> None:
        state = self._partitions[(batch.topic, batch.partition)]
        builder = batch.builder
        if builder.producer_epoch == state.epoch:
            return
        assert not batch.no_resend, "a batch behind a failure is never resent"
        builder.producer_epoch = state.epoch
        builder.base_sequence = state.next_sequence
        restamp_sequence(payload, state.epoch, state.next_sequence)
        state.next_sequence = (state.next_sequence + batch.record_count) % SEQUENCE_MODULUS

    def sequence_error(self, batch: ProducerBatch, log_start_offset: int) -> bool:
        """The broker answered OUT_OF_ORDER_SEQUENCE or UNKNOWN_PRODUCER_ID for
        ``batch`` (still in flight), with its partition's ``log_start_offset``
        (-1: not known).  True: retry it (re-sequenced if the partition's epoch went
        up, here or before); False: resending could duplicate records, fail it
        (see the module docstring).  Rare: walks the unfinished batches."""
        if self.producer_id < 0:
            return True
        state = self._partitions[(batch.topic, batch.partition)]
        epoch = batch.builder.producer_epoch
        if epoch != state.epoch:
            return True  # sent before the partition was re-sequenced: resent re-stamped
        key_tp = (batch.topic, batch.partition)
        unacknowledged = [
            other
            for other in self._unfinished
            if (other.topic, other.partition) == key_tp and other.payload is not None
        ]
        order = batch.send_order
        if any(
            0 <= other.send_order < order and other.builder.producer_epoch == epoch
            for other in unacknowledged
        ):
            return True  # an earlier batch goes first; its answer decides
        if 0 <= state.last_acked_offset < log_start_offset or not any(
            other.maybe_appended for other in unacknowledged
        ):
            self._bump_epoch(state)
            return True
        return False

    @staticmethod
    def _bump_epoch(state: _PartitionSendState) -> None:
        state.epoch = (state.epoch + 1) % (PRODUCER_EPOCH_MAX + 1)
        state.next_sequence = 0

    # -- completion ---------------------------------------------------------------------

    def complete(self, batch: ProducerBatch, base_offset: int) -> None:
        """The batch was acknowledged at ``base_offset`` (-1 with acks=none)."""
        if self.closed:
            return
        state = self._finish(batch)
        if base_offset >= 0:
            state.last_acked_offset = base_offset + batch.record_count - 1
        batch.base_offset = base_offset
        counters = self.counters
        counters.batches_sent += 1
        counters.records_sent += batch.record_count
        counters.bytes_sent += len(batch.payload) if batch.payload is not None else 0
        waiter = batch.waiter  # _notify(batch), inline: once per acknowledged batch
        if waiter is not None:
            waiter.set()

    def fail(self, batch: ProducerBatch, error: DistributaryError) -> list[ProducerBatch]:
        """The batch failed for good: every record's handle raises ``error``.

        With idempotence, a batch that was sent leaves a gap in its partition's
        sequence: the epoch goes up, the sequence restarts at 0, every queued
        batch of the partition and its open batch fail with
        OutOfOrderSequenceError, and its batches in flight are marked
        ``no_resend``.  A ``no_resend`` batch failing fails what was queued
        behind it in the same way (the epoch went up when it was marked).
        Returns the batches failed with it."""
        if self.closed:
            return []
        self._finish(batch)
        batch.error = error
        key_tp = (batch.topic, batch.partition)
        state = self._partitions[key_tp]
        failed: list[ProducerBatch] = []
        if self.producer_id >= 0:
            sent = batch.payload is not None
            if sent and not batch.no_resend:  # otherwise the epoch went up when it was marked
                self._bump_epoch(state)
            # A batch never built used no sequence number, and what is in flight of
            # its partition was sent before it: only what waits behind it fails.
            failed = self._fail_behind(key_tp, state, batch, error, mark_inflight=sent)
        _notify(batch)
        return failed

    def _fail_behind(
        self,
        key_tp: PartitionKey,
        state: _PartitionSendState,
        failed_batch: ProducerBatch,
        error: DistributaryError,
        *,
        mark_inflight: bool,
    ) -> list[ProducerBatch]:
        """Fail what waits behind ``failed_batch`` on its partition; with
        ``mark_inflight``, mark what is in flight ``no_resend``.  Rare (a batch
        failed for good): walks every unfinished batch."""
        reason = OutOfOrderSequenceError(
            f"not written: an earlier batch of {key_tp[0]}-{key_tp[1]} failed ({error.message})"
        )
        waiting = list(state.queue)
        state.queue.clear()
        if state.open is not None:
            waiting.append(state.open)
            state.open = None
            del self.open_batches[key_tp]
        self.waiting_batches -= len(waiting)
        for queued in waiting:
            queued.done = True
            queued.error = reason
            self._unfinished.discard(queued)
            self.buffer_bytes_used -= queued.buffer_bytes
            _notify(queued)
        assert failed_batch not in waiting and failed_batch not in self._unfinished
        if not mark_inflight:
            return waiting
        # What is left of the partition is in flight under the old epoch.  Resent,
        # it would need a sequence of the new epoch after batches built since.
        for unfinished in self._unfinished:
            if (
                unfinished.partition == key_tp[1]
                and unfinished.topic == key_tp[0]
                and not unfinished.no_resend
            ):
                unfinished.no_resend = True
                state.no_resend_inflight += 1
        return waiting

    def retry(self, batch: ProducerBatch, retry_at_ms: int) -> None:
        """Put an in-flight batch back in its partition's queue, ahead of every
        batch drained after it."""
        if self.closed:
            return
        state = self._partitions[(batch.topic, batch.partition)]
        assert state.inflight > 0 and not batch.done
        assert not batch.no_resend, "a batch behind a failure is never resent"
        state.inflight -= 1
        if batch.attempts:
            state.retry_inflight -= 1
        batch.attempts += 1
        batch.retry_at_ms = retry_at_ms
        # Sent (built) batches come first, in send order; a batch never built (no
        # leader yet) is newer than all of them and older than the unsent ones.
        queue = state.queue
        order = batch.send_order
        position = 0
        for queued in queue:  # bounded by the in-flight limit: few were sent
            if queued.send_order < 0 or 0 <= order < queued.send_order:
                break
            position += 1
        queue.insert(position, batch)
        self.waiting_batches += 1

    def _finish(self, batch: ProducerBatch) -> _PartitionSendState:
        assert not batch.done, batch
        state = self._partitions[(batch.topic, batch.partition)]
        assert state.inflight > 0
        state.inflight -= 1
        if batch.attempts:
            state.retry_inflight -= 1
        if batch.no_resend:
            state.no_resend_inflight -= 1
        batch.done = True
        self._unfinished.discard(batch)
        self.buffer_bytes_used -= batch.buffer_bytes
        return state

    # -- inspection ---------------------------------------------------------------------

    def unfinished_batches(self) -> list[ProducerBatch]:
        """Every batch not yet acknowledged or failed (for flush)."""
        return list(self._unfinished)

    @property
    def pending_count(self) -> int:
        return len(self._unfinished)

    def fail_all(self, error_factory: Callable[[], DistributaryError]) -> None:
        """Fail every unfinished batch, in flight or not (the producer is closing
        without waiting).  The accumulator is then closed: later completions are
        ignored and appends are refused."""
        self.closed = True
        for key_tp, state in self._partitions.items():
            if state.open is not None:
                self._close(key_tp)
            state.queue.clear()
            state.inflight = 0
            state.retry_inflight = 0
            state.no_resend_inflight = 0
        self.waiting_batches = 0
        for batch in list(self._unfinished):
            batch.done = True
            batch.error = error_factory()
            self.buffer_bytes_used -= batch.buffer_bytes
            _notify(batch)
        self._unfinished.clear()

    def check_invariants(self) -> None:
        total = 0
        waiting = sum(
            len(state.queue) + (state.open is not None) for state in self._partitions.values()
        )
        assert waiting == self.waiting_batches, (waiting, self.waiting_batches)
        for key_tp, state in self._partitions.items():
            assert 0 <= state.inflight <= self.inflight_batches_per_partition_max, key_tp
            assert 0 <= state.retry_inflight <= 1, key_tp
            assert not state.retry_inflight or state.inflight == 1, key_tp
            marked = sum(
                1
                for batch in self._unfinished
                if batch.no_resend and (batch.topic, batch.partition) == key_tp
            )
            assert marked == state.no_resend_inflight <= state.inflight, key_tp
            orders = [batch.send_order for batch in state.queue if batch.send_order >= 0]
            assert orders == sorted(orders), key_tp
            assert (state.open is None) == (key_tp not in self.open_batches), key_tp
            for batch in state.queue:
                assert not batch.done and batch in self._unfinished
                assert not batch.no_resend, batch
                assert batch.payload is None or batch.attempts > 0, batch
        for batch in self._unfinished:
            assert not batch.done
            total += batch.buffer_bytes
        assert total == self.buffer_bytes_used, (total, self.buffer_bytes_used)


def _notify(batch: ProducerBatch) -> None:
    waiter = batch.waiter
    if waiter is not None:
        waiter.set()
