"""What the producer does on each idempotence error, driven without sockets: the
sender's answer handling over a real accumulator, with hand-made Produce answers."""

from __future__ import annotations

import random

import pytest

from client._io.event_loop import LoopEvent
from client._io.pending_response import PendingResponse
from client.accumulator import ProducerBatch, RecordAccumulator, restamp_sequence
from client.errors import (
    BrokerUnavailableError,
    ErrorCode,
    NotEnoughReplicasError,
    OutOfOrderSequenceError,
    OutOfOrderSequenceFatalError,
    RequestTimedOutError,
    UnknownProducerIdError,
    UnknownProducerIdFatalError,
    error_for_code,
)
from client.producer import RETRIES_MAX_DEFAULT
from client.protocol.connection import IncomingResponse
from client.protocol.messages import (
    ApiKey,
    ProducePartitionResponse,
    ProduceResponse,
    ProduceTopicResponse,
)
from client.records.builder import BatchBuilder
from client.records.decoder import RecordDecoder
from client.records.header import iter_batches
from client.sender import Sender

PRODUCER_ID = 77
RETRIES_MAX = 3


class Harness:
    """An idempotent accumulator (5 batches in flight) and its sender, with no
    cluster: answers are handed to the sender's response callback directly."""

    def __init__(
        self, *, retries_max: int = RETRIES_MAX, delivery_timeout_ms: int = 1_000_000
    ) -> None:
        self.now_ms = 0
        self.accumulator = RecordAccumulator(
            batch_bytes_max=10_000,
            linger_ms=0,
            buffer_bytes_max=1 << 20,
            inflight_batches_per_partition_max=5,
            producer_id=PRODUCER_ID,
        )
        self.sender = Sender(
            self.accumulator,
            acks=1,
            request_timeout_ms=1_000,
            request_bytes_max=1 << 20,
            retries_max=retries_max,
            delivery_timeout_ms=delivery_timeout_ms,
            retry_backoff_ms=0,
            retry_backoff_max_ms=0,
            clock_ms=lambda: self.now_ms,
            rng=random.Random(1),
            on_woken=lambda: None,
        )

    def append(self, *values: bytes, partition: int = 0) -> ProducerBatch:
        """Records that open one new batch (the previous open one is drained first)."""
        batch = None
        for value in values:
            batch, _, _ = self.accumulator.append("t", partition, value, None, (), 0, 0)
        assert batch is not None
        return batch

    def send(self) -> list[ProducerBatch]:
        """Drain and build what is ready, as the sender does before writing."""
        batches = self.accumulator.drain(self.now_ms)
        for batch in batches:
            self.accumulator.build(batch)
        self.accumulator.check_invariants()
        return batches

    def answer(
        self,
        batch: ProducerBatch,
        error_code: int = 0,
        base_offset: int = 0,
        log_start_offset: int = 0,
    ) -> None:
        """The broker's answer for ``batch``, through the sender's response callback."""
        result = ProducePartitionResponse(
            batch.partition,
            error_code=error_code,
            base_offset=base_offset,
            log_start_offset=log_start_offset,
        )
        body = ProduceResponse([ProduceTopicResponse(batch.topic, [result])])
        pending = PendingResponse(0, 0.0, 1_000, event_class=_no_event)
        pending.resolve(IncomingResponse(0, int(ApiKey.PRODUCE), body, memoryview(b"")))
        self.sender._produce_done([batch], pending)
        self.accumulator.check_invariants()

    def lose(self, batch: ProducerBatch) -> None:
        """The request of ``batch`` timed out: no answer."""
        pending = PendingResponse(0, 0.0, 1_000, event_class=_no_event)
        pending.fail(RequestTimedOutError("no answer"))
        self.sender._produce_done([batch], pending)
        self.accumulator.check_invariants()


def _no_event() -> LoopEvent:
    raise AssertionError("nobody waits in these tests")


def fields(batch: ProducerBatch) -> tuple[int, int, int]:
    """(producer id, epoch, base sequence) as the wire bytes say, CRC checked."""
    assert batch.payload is not None
    (header,) = iter_batches(batch.payload)  # verifies the CRC
    return header.producer_id, header.producer_epoch, header.base_sequence


def test_unknown_producer_resequences_unacknowledged_batches_in_order() -> None:
    """Proves UNKNOWN_PRODUCER_ID bumps the partition's epoch once and resends every
    unacknowledged batch, one at a time in send order, re-stamped from sequence 0
    (valid CRC), before any newer batch; later batches continue the new sequence."""
    h = Harness()
    sent = []
    for index, count in enumerate((2, 3, 1)):
        h.append(*[f"{index}-{n}".encode() for n in range(count)])
        sent += h.send()
    assert [fields(batch) for batch in sent] == [(77, 0, 0), (77, 0, 2), (77, 0, 5)]
    newer = h.append(b"newer")
    for batch in sent:  # the broker lost the producer: every in-flight batch is refused
        h.answer(batch, ErrorCode.UNKNOWN_PRODUCER_ID)
    resent = []
    for _ in range(len(sent)):
        (batch,) = h.send()  # alone: nothing else of the partition in flight
        resent.append(fields(batch))
        h.answer(batch, base_offset=len(resent))
    assert resent == [(77, 1, 0), (77, 1, 2), (77, 1, 5)]
    assert all(batch.done and batch.error is None for batch in sent)
    (batch,) = h.send()
    assert batch is newer and fields(batch) == (77, 1, 6)


def test_restamped_batch_keeps_its_records() -> None:
    """Proves re-stamping the producer fields in place keeps the records and the
    other header fields, and leaves a batch whose CRC checks."""
    builder = BatchBuilder(producer_id=5, producer_epoch=0, base_sequence=40)
    for value in (b"a", b"bb", b"ccc"):
        builder.append(value, b"k", (("h", b"v"),), 1_000)
    payload = builder.build()
    before = iter_batches(payload)[0]
    restamp_sequence(payload, 3, 7)
    after = iter_batches(payload)[0]
    assert (after.producer_id, after.producer_epoch, after.base_sequence) == (5, 3, 7)
    assert (after.record_count, after.first_timestamp) == (before.record_count, 1_000)
    values = [record.value for record in RecordDecoder().decode_batch(payload)]
    assert values == [b"a", b"bb", b"ccc"]


def test_out_of_order_sequence_is_retried_after_the_earlier_batch() -> None:
    """Proves OUT_OF_ORDER_SEQUENCE is retriable: the earlier batch (lost) is resent
    first, then the refused one, both with their original sequence."""
    h = Harness()
    h.append(b"a")
    (first,) = h.send()
    h.append(b"b")
    (second,) = h.send()
    h.lose(first)
    h.answer(second, ErrorCode.OUT_OF_ORDER_SEQUENCE)
    (batch,) = h.send()
    assert batch is first and fields(batch) == (77, 0, 0)
    h.answer(batch, base_offset=0)
    (batch,) = h.send()
    assert batch is second and fields(batch) == (77, 0, 1)
    h.answer(batch, base_offset=1)
    assert first.error is None and second.error is None


def test_a_batch_past_the_retry_bound_fails_everything_behind() -> None:
    """Proves a batch still refused after retries_max retries fails, and with it
    every batch queued behind it and the open batch (never written after it); the
    partition starts a new epoch at sequence 0 once that batch is done."""
    h = Harness()
    h.append(b"a")
    (stuck,) = h.send()
    h.append(b"b")
    (behind,) = h.send()
    h.answer(stuck, ErrorCode.NOT_ENOUGH_REPLICAS)
    h.answer(behind, ErrorCode.OUT_OF_ORDER_SEQUENCE)  # its earlier batch is missing
    resends = 0
    while not stuck.done:
        (batch,) = h.send()
        assert batch is stuck and fields(batch) == (77, 0, 0)  # first, alone, unchanged
        resends += 1
        h.answer(stuck, ErrorCode.NOT_ENOUGH_REPLICAS)
    assert resends == RETRIES_MAX
    assert isinstance(stuck.error, NotEnoughReplicasError)
    # The batch behind it waited in the queue for its retry: it fails unsent.
    assert behind.done and isinstance(behind.error, OutOfOrderSequenceError)
    assert "earlier batch of t-0 failed" in str(behind.error)
    fresh = h.append(b"c")
    (batch,) = h.send()
    assert batch is fresh and fields(batch) == (77, 1, 0)


def test_batches_in_flight_beside_a_failure_are_not_resent() -> None:
    """Proves that when a batch fails for good, the queued and open batches of its
    partition fail at once, a batch of the partition still in flight fails on its
    error instead of being retried (and so does what was queued behind it
    meanwhile), and nothing new leaves until it is done."""
    h = Harness()
    h.append(b"a")
    (failing,) = h.send()
    h.append(b"b")
    (beside,) = h.send()
    queued = h.append(b"c" * 6_000)
    open_batch = h.append(b"d" * 6_000)  # does not fit: closes (queues) the one before
    assert open_batch is not queued
    h.answer(failing, ErrorCode.INVALID_BATCH)  # not retriable: fails at once
    assert isinstance(failing.error, Exception)
    for batch in (queued, open_batch):
        assert batch.done and isinstance(batch.error, OutOfOrderSequenceError)
    assert beside.no_resend and not beside.done
    later = h.append(b"e")
    assert h.send() == []  # held until the batch in flight is done
    h.lose(beside)
    assert beside.done and isinstance(beside.error, RequestTimedOutError)
    assert beside.attempts == 0  # failed, never put back to be resent
    # What waited behind it fails too: it would be written after a failed record.
    assert later.done and isinstance(later.error, OutOfOrderSequenceError)
    fresh = h.append(b"f")
    (batch,) = h.send()
    assert batch is fresh and fields(batch) == (77, 1, 0)


def test_acknowledged_batch_beside_a_failure_stands() -> None:
    """Proves a batch in flight when another fails is completed by its acknowledgement."""
    h = Harness()
    h.append(b"a")
    (failing,) = h.send()
    h.append(b"b")
    (beside,) = h.send()
    h.answer(failing, ErrorCode.INVALID_BATCH)
    h.answer(beside, base_offset=9)
    assert beside.done and beside.error is None and beside.base_offset == 9


@pytest.mark.parametrize("code", [ErrorCode.UNKNOWN_PRODUCER_ID, ErrorCode.OUT_OF_ORDER_SEQUENCE])
def test_other_partitions_keep_their_sequence(code: int) -> None:
    """Proves an idempotence error on one partition leaves another's epoch alone."""
    h = Harness()
    h.append(b"a", partition=0)
    h.append(b"b", partition=1)
    zero, one = sorted(h.send(), key=lambda b: b.partition)
    h.answer(zero, code)
    h.answer(one)
    h.append(b"c", partition=1)
    batches = h.send()
    (later_one,) = [b for b in batches if b.partition == 1]
    assert fields(later_one) == (77, 0, 1)


def test_retries_go_on_until_the_delivery_timeout() -> None:
    """Proves a batch whose broker stays unreachable is retried (many more times
    than a small attempt count) until its delivery deadline, is acknowledged if
    the broker answers before it, and fails with RequestTimedOutError naming the
    last error once the deadline has passed -- failing the batches behind it."""
    h = Harness(retries_max=RETRIES_MAX_DEFAULT, delivery_timeout_ms=20_000)
    h.append(b"a")
    (first,) = h.send()
    for _ in range(30):  # a broker restart: 30 losses over 15 s
        h.now_ms += 500
        h.lose(first)
        (batch,) = h.send()
        assert batch is first
    h.answer(first, base_offset=0)
    assert first.done and first.error is None
    h.now_ms = 30_000
    h.append(b"b")  # created at 0 too (the harness enqueues at time 0)
    (second,) = h.send()
    queued = h.append(b"c" * 6_000)
    open_batch = h.append(b"d" * 6_000)
    h.lose(second)  # past its deadline: no retry
    assert second.done and isinstance(second.error, RequestTimedOutError)
    assert "delivery_timeout_ms" in str(second.error) and "no answer" in str(second.error)
    for batch in (queued, open_batch):
        assert batch.done and isinstance(batch.error, OutOfOrderSequenceError)


def test_last_retry_comes_at_the_deadline() -> None:
    """Proves a retry's backoff never reaches past the batch's delivery deadline."""
    h = Harness(retries_max=RETRIES_MAX_DEFAULT, delivery_timeout_ms=1_000)
    h.sender.retry_backoff_ms = h.sender.retry_backoff_max_ms = 5_000
    h.append(b"a")
    (batch,) = h.send()
    h.now_ms = 400
    h.lose(batch)
    assert batch.retry_at_ms == 1_000


def test_a_batch_never_sent_that_fails_fails_the_batches_behind_it() -> None:
    """Proves a batch that fails for good before it was ever built (the broker was
    unreachable, so it never got a sequence number) fails the queued and open
    batches of its partition too: none of them is written after it, and the
    partition's sequence is not disturbed."""
    h = Harness(retries_max=RETRIES_MAX_DEFAULT, delivery_timeout_ms=5_000)
    h.append(b"a")
    (unsent,) = h.accumulator.drain(h.now_ms)  # drained, then no connection
    queued = h.append(b"c" * 6_000)
    open_batch = h.append(b"d" * 6_000)
    for now_ms in (1_000, 3_000, 6_000):
        h.now_ms = now_ms
        h.sender._handle_error(unsent, BrokerUnavailableError("connection refused"))
        h.accumulator.check_invariants()
        if not unsent.done:
            (batch,) = h.accumulator.drain(h.now_ms)
            assert batch is unsent
    assert unsent.payload is None and isinstance(unsent.error, RequestTimedOutError)
    for batch in (queued, open_batch):
        assert batch.done and isinstance(batch.error, OutOfOrderSequenceError)
    fresh = h.append(b"e")
    (batch,) = h.send()
    assert batch is fresh and fields(batch) == (77, 0, 0)


@pytest.mark.parametrize(
    "code",
    [
        ErrorCode.NOT_ENOUGH_REPLICAS,
        ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
    ],
)
def test_replication_errors_are_retried_with_the_same_sequence(code: int) -> None:
    """Proves a batch refused by a replication error (70-73) is resent unchanged
    (same producer epoch and sequence, so the broker deduplicates it if it was
    appended), before the batch behind it, and succeeds on the retry."""
    h = Harness()
    h.append(b"a")
    (first,) = h.send()
    h.answer(first, code)
    assert not first.done
    h.append(b"b")
    retried = h.send()
    assert retried[0] is first and fields(first) == (77, 0, 0)
    h.answer(first, base_offset=4)
    assert first.done and first.error is None and first.base_offset == 4
    behind = retried[1:] or h.send()
    assert [fields(batch) for batch in behind] == [(77, 0, 1)]


# -- KIP-360: when losing the producer's state may be recovered from -----------------


def test_unknown_producer_after_retention_is_resequenced_even_if_a_batch_may_be_in() -> None:
    """Proves UNKNOWN_PRODUCER_ID answered with a log start offset past the last
    offset acknowledged to the producer (retention removed its records and its
    state) re-sequences the partition under a new epoch, even though a batch's
    earlier attempt had no answer."""
    h = Harness()
    h.append(b"a", b"b")
    (first,) = h.send()
    h.answer(first, base_offset=10)  # acknowledged: offsets 10..11
    h.append(b"c")
    (second,) = h.send()
    h.lose(second)  # no answer: it may be in the log
    (batch,) = h.send()
    assert batch is second and batch.maybe_appended
    h.answer(second, ErrorCode.UNKNOWN_PRODUCER_ID, log_start_offset=12)
    (batch,) = h.send()
    assert batch is second and fields(batch) == (77, 1, 0)
    h.answer(second, base_offset=40)
    assert second.done and second.error is None and second.base_offset == 40


def test_unknown_producer_with_nothing_possibly_in_the_log_is_resequenced() -> None:
    """Proves UNKNOWN_PRODUCER_ID for a batch whose partition has no batch with an
    unknown outcome (each was refused before any append) re-sequences the
    partition, whatever the log start offset."""
    h = Harness()
    h.append(b"a")
    (first,) = h.send()
    h.answer(first, base_offset=0)
    h.append(b"b")
    (second,) = h.send()
    h.answer(second, ErrorCode.NOT_ENOUGH_REPLICAS)  # refused before the append
    (batch,) = h.send()
    assert batch is second and not batch.maybe_appended
    h.answer(second, ErrorCode.UNKNOWN_PRODUCER_ID, log_start_offset=0)
    (batch,) = h.send()
    assert batch is second and fields(batch) == (77, 1, 0)


@pytest.mark.parametrize(
    ("code", "fatal"),
    [
        (ErrorCode.UNKNOWN_PRODUCER_ID, UnknownProducerIdFatalError),
        (ErrorCode.OUT_OF_ORDER_SEQUENCE, OutOfOrderSequenceFatalError),
    ],
)
def test_lost_state_with_a_batch_maybe_in_the_log_fails_it(
    code: int, fatal: type[Exception]
) -> None:
    """Proves that when the broker forgot the producer (or holds a gap) while a
    batch of the partition may already be in the log (its attempt ended in
    NOT_LEADER, which may follow an append) and the log start is not past the last
    acknowledged offset, the batch is not resent under a new epoch: it fails with
    the non-retriable typed error, the batch queued behind fails, and the next
    batch leaves under a new epoch from sequence 0."""
    h = Harness()
    h.append(b"a")
    (first,) = h.send()
    h.answer(first, base_offset=5)
    h.append(b"b")
    (second,) = h.send()
    h.answer(second, ErrorCode.NOT_LEADER)
    assert second.maybe_appended
    queued = h.append(b"c")
    (batch,) = h.send()
    assert batch is second and fields(batch) == (77, 0, 1)
    h.answer(second, code, log_start_offset=5)
    assert second.done and isinstance(second.error, fatal)
    assert not second.error.retriable and "not resent" in str(second.error)
    assert queued.done and isinstance(queued.error, OutOfOrderSequenceError)
    fresh = h.append(b"d")
    (batch,) = h.send()
    assert batch is fresh and fields(batch) == (77, 1, 0)
    h.answer(fresh, base_offset=7)
    assert fresh.error is None


def test_batches_sent_before_a_resequencing_are_resent_under_the_new_epoch() -> None:
    """Proves the in-flight batches behind the one whose error re-sequenced the
    partition are retried re-stamped even though one of them had no answer: the
    decision was taken once, for the partition, by the earliest batch."""
    h = Harness()
    h.append(b"a")
    (first,) = h.send()
    h.append(b"b")
    (second,) = h.send()
    h.answer(first, ErrorCode.UNKNOWN_PRODUCER_ID, log_start_offset=0)
    h.lose(second)
    for expected in (first, second):
        (batch,) = h.send()
        assert batch is expected
        h.answer(batch, base_offset=3)
    assert [fields(batch) for batch in (first, second)] == [(77, 1, 0), (77, 1, 1)]
    assert first.error is None and second.error is None


def test_out_of_order_behind_an_unacknowledged_batch_waits_for_its_answer() -> None:
    """Proves OUT_OF_ORDER_SEQUENCE for a batch with an earlier unacknowledged batch
    of the same epoch neither re-sequences nor fails, even when that earlier batch
    may be in the log: it is retried after it, with its original sequence."""
    h = Harness()
    h.append(b"a")
    (first,) = h.send()
    h.append(b"b")
    (second,) = h.send()
    h.lose(first)
    h.answer(second, ErrorCode.OUT_OF_ORDER_SEQUENCE)
    assert not second.done
    (batch,) = h.send()
    assert batch is first and fields(batch) == (77, 0, 0)
    h.answer(first, base_offset=0)
    (batch,) = h.send()
    assert batch is second and fields(batch) == (77, 0, 1)


def test_wire_codes_still_decode_to_the_retriable_classes() -> None:
    """Proves the SDK-only fatal variants never come out of a wire code."""
    unknown = error_for_code(ErrorCode.UNKNOWN_PRODUCER_ID)
    gap = error_for_code(ErrorCode.OUT_OF_ORDER_SEQUENCE)
    assert type(unknown) is UnknownProducerIdError and unknown.retriable
    assert type(gap) is OutOfOrderSequenceError and gap.retriable
