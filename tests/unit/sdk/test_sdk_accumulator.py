"""The producer's accumulator, driven without I/O: linger, size, buffer bound, retry order."""

from __future__ import annotations

import random

import pytest

from broker.producer_state import ProducerStateTable, Verdict
from client.accumulator import ProducerBatch, RecordAccumulator
from client.errors import (
    BatchTooLargeError,
    ConnectionClosedError,
    DistributaryError,
    InvalidRequestError,
    OutOfOrderSequenceError,
    UnknownProducerIdError,
)
from client.records.decoder import RecordDecoder
from client.records.header import iter_batches


def make(
    *, batch_bytes_max: int = 10_000, linger_ms: int = 5, buffer_bytes_max: int = 1 << 20
) -> RecordAccumulator:
    return RecordAccumulator(
        batch_bytes_max=batch_bytes_max, linger_ms=linger_ms, buffer_bytes_max=buffer_bytes_max
    )


def test_batch_waits_for_linger_then_drains() -> None:
    """Proves a batch is held for linger_ms and sent once its first record is that old."""
    acc = make(linger_ms=5)
    acc.append("t", 0, b"a", None, (), 1000, now_ms=1000)
    acc.append("t", 0, b"b", None, (), 1003, now_ms=1003)
    assert acc.drain(1004) == []
    assert acc.next_ready_ms(1004) == 1
    (batch,) = acc.drain(1005)
    assert len(batch.builder) == 2
    assert acc.next_ready_ms(1005) is None
    acc.check_invariants()


def test_record_over_the_batch_limit_is_refused_at_append() -> None:
    """Proves a record that alone cannot fit a batch is refused when it is appended (so the
    caller knows which one), leaving the open batch and the buffer count untouched."""
    acc = make(batch_bytes_max=1_000)
    batch, _, _ = acc.append("t", 0, b"small", None, (), 1000, now_ms=1000)
    used = acc.buffer_bytes_used
    with pytest.raises(BatchTooLargeError, match="does not fit a batch"):
        acc.append("t", 0, b"x" * 1_000, None, (), 1000, now_ms=1000)
    assert acc.open_batches[("t", 0)] is batch and len(batch.builder) == 1
    assert acc.buffer_bytes_used == used
    acc.check_invariants()


def test_full_batch_closes_and_is_ready_before_linger() -> None:
    """Proves a batch closes before passing batch_bytes_max and is sendable at once."""
    acc = make(batch_bytes_max=1_000, linger_ms=10_000)
    batches = set()
    for _index in range(30):
        batch, _delta, _wake = acc.append("t", 0, b"x" * 100, None, (), 0, now_ms=0)
        batches.add(batch)
        assert batch.builder.estimated_bytes <= 1_000
    assert len(batches) >= 3
    ready = acc.drain(0)
    assert len(ready) == 1  # one in flight per partition
    assert ready[0].builder.estimated_bytes <= 1_000
    acc.check_invariants()


def test_flush_makes_open_batches_ready() -> None:
    """Proves a flush sends open batches without waiting for linger."""
    acc = make(linger_ms=60_000)
    acc.append("t", 0, b"a", None, (), 0, now_ms=0)
    acc.append("t", 1, b"b", None, (), 0, now_ms=0)
    assert acc.drain(1) == []
    acc.flushing += 1
    assert {(b.topic, b.partition) for b in acc.drain(1)} == {("t", 0), ("t", 1)}


def test_buffer_bound_counts_until_acknowledged() -> None:
    """Proves buffer_bytes_used grows with appends, blocks at the bound, and shrinks on ack."""
    acc = make(buffer_bytes_max=2_000, batch_bytes_max=1_000, linger_ms=0)
    appended = 0
    while acc.has_buffer_space:
        acc.append("t", 0, b"y" * 100, None, (), 0, now_ms=0)
        appended += 1
        assert appended < 100
    assert acc.buffer_bytes_used >= 2_000
    (batch,) = acc.drain(0)
    acc.complete(batch, base_offset=0)
    assert acc.has_buffer_space
    acc.check_invariants()


def test_retry_goes_first_and_keeps_partition_order() -> None:
    """Proves a retried batch is resent before later batches of its partition (order kept)."""
    acc = make(batch_bytes_max=500, linger_ms=0)
    for index in range(20):
        acc.append("t", 0, str(index).encode().ljust(100), None, (), 0, now_ms=0)
    sent_order: list[int] = []
    rng = random.Random(3)
    now = 0
    for _ in range(200):
        ready = acc.drain(now)
        assert len(ready) <= 1, "more than one batch in flight for a partition"
        if not ready:
            if acc.pending_count == 0:
                break
            now += 10
            continue
        (batch,) = ready
        if rng.random() < 0.4:
            acc.retry(batch, retry_at_ms=now + 3)
        else:
            decoded = RecordDecoder().decode_batch(batch.build())
            sent_order.extend(int(record.value or b"") for record in decoded)
            acc.complete(batch, base_offset=len(sent_order))
        acc.check_invariants()
    assert sent_order == list(range(20))


class KafkaRulesTable:
    """The broker's producer state table with Kafka's rules for what it does not
    know: a new producer must start at sequence 0 (else UNKNOWN_PRODUCER_ID), a
    newer epoch too (else OUT_OF_ORDER_SEQUENCE)."""

    def __init__(self) -> None:
        self.table = ProducerStateTable()
        self.epochs: dict[int, int] = {}

    def check(self, producer_id: int, epoch: int, sequence: int) -> tuple[Verdict, object]:
        known = self.epochs.get(producer_id)
        if known is None and sequence != 0:
            raise UnknownProducerIdError(f"producer {producer_id} unknown")
        if known is not None and epoch > known and sequence != 0:
            raise OutOfOrderSequenceError(f"epoch {epoch} starts at {sequence}")
        return self.table.check(producer_id, epoch, sequence)

    def record(self, producer_id: int, epoch: int, *rest: int) -> None:
        self.epochs[producer_id] = max(epoch, self.epochs.get(producer_id, epoch))
        self.table.record(producer_id, epoch, *rest)


def run_idempotent_model(
    seed: int, restart_chance: float, *, kafka_rules: bool = False
) -> tuple[list[int], set[int]]:
    """60 records through an accumulator with 5 batches in flight, over one ordered
    connection that drops (before or after the broker appends the front batch) and
    a broker (broker/producer_state.py rules, or :class:`KafkaRulesTable`) that may
    restart and forget its producer state.  Returns the log's values and the
    values acknowledged to the producer."""
    acc = RecordAccumulator(
        batch_bytes_max=500,
        linger_ms=0,
        buffer_bytes_max=1 << 20,
        inflight_batches_per_partition_max=5,
        producer_id=9,
    )
    batches = list(
        dict.fromkeys(
            acc.append("t", 0, str(index).encode().ljust(100), None, (), 0, now_ms=0)[0]
            for index in range(60)
        )
    )
    table: ProducerStateTable | KafkaRulesTable = (
        KafkaRulesTable() if kafka_rules else ProducerStateTable()
    )
    log: list[int] = []
    network: list[ProducerBatch] = []  # in flight on the connection, in send order
    rng = random.Random(seed)
    now = 0
    most_in_flight = 0

    def drop_connection() -> None:
        for lost in network:
            lost.maybe_appended = True  # as the sender marks a batch without an answer
            acc.retry(lost, retry_at_ms=now + 3)
        network.clear()

    def refused(batch: ProducerBatch, error: DistributaryError) -> None:
        """The sender's handling of an idempotence error (client/sender.py)."""
        if acc.sequence_error(batch, log_start_offset=-1):
            acc.retry(batch, retry_at_ms=now + 3)
        else:
            acc.fail(batch, error)

    for _ in range(5_000):
        for _ in range(10):  # the sender drains as long as something is ready
            for batch in acc.drain(now):
                acc.build(batch)
                network.append(batch)
        most_in_flight = max(most_in_flight, len(network))
        if not network:
            if acc.pending_count == 0:
                break
            now += 10
            continue
        roll = rng.random()
        if roll < 0.1:  # the connection dies before the broker reads the front batch
            drop_connection()
            continue
        if roll < 0.1 + restart_chance:
            table = KafkaRulesTable() if kafka_rules else ProducerStateTable()
            drop_connection()
            continue
        batch = network.pop(0)
        header = iter_batches(batch.build())[0]
        try:
            verdict, _ = table.check(
                header.producer_id, header.producer_epoch, header.base_sequence
            )
        except (OutOfOrderSequenceError, UnknownProducerIdError) as error:
            refused(batch, error)
            continue
        if verdict is Verdict.APPEND:
            values = [int(r.value or b"") for r in RecordDecoder().decode_batch(batch.build())]
            table.record(
                header.producer_id,
                header.producer_epoch,
                header.base_sequence,
                header.record_count,
                len(log),
                len(log) + len(values) - 1,
            )
            log.extend(values)
        if rng.random() < 0.1:  # the connection dies before the answer arrives
            network.insert(0, batch)
            drop_connection()
        else:
            acc.complete(batch, base_offset=0)
        acc.check_invariants()
    assert acc.pending_count == 0
    assert most_in_flight == 5
    acknowledged = {
        int(record.value or b"")
        for batch in batches
        if batch.error is None
        for record in RecordDecoder().decode_batch(batch.build())
    }
    return log, acknowledged


@pytest.mark.parametrize("seed", range(40))
def test_idempotent_batches_keep_order_and_no_duplicates_across_losses(seed: int) -> None:
    """Proves that with sequence numbers, 5 batches in flight and a connection that
    drops before or after appends, the log holds every record exactly once, in order."""
    log, acknowledged = run_idempotent_model(seed, restart_chance=0.0)
    assert log == list(range(60)) and acknowledged == set(log)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("kafka_rules", [False, True])
def test_a_broker_that_forgets_the_producer_never_gets_a_duplicate(
    seed: int, kafka_rules: bool
) -> None:
    """Proves that against a broker that restarts and forgets the producer
    (UNKNOWN_PRODUCER_ID, or OUT_OF_ORDER_SEQUENCE for a newer epoch), the producer
    never writes a record twice nor out of order (KIP-360): it re-sequences only
    when no unacknowledged batch may be in the log, and fails the batch otherwise;
    every acknowledged record is in the log."""
    log, acknowledged = run_idempotent_model(seed, restart_chance=0.03, kafka_rules=kafka_rules)
    assert len(log) == len(set(log)), log
    assert log == sorted(log), log
    assert acknowledged <= set(log)


def test_sequence_numbers_count_records_and_restart_after_a_failure() -> None:
    """Proves base_sequence advances by record count, and that a sequenced batch
    failing for good bumps the partition's epoch and restarts sequences at 0 once
    the batches in flight beside it are done."""
    acc = RecordAccumulator(
        batch_bytes_max=10_000,
        linger_ms=0,
        buffer_bytes_max=1 << 20,
        inflight_batches_per_partition_max=5,
        producer_id=9,
    )
    sequences = []
    batches = []
    for count in (3, 2):
        for _ in range(count):
            acc.append("t", 0, b"v", None, (), 0, now_ms=0)
        (batch,) = acc.drain(0)
        batches.append(batch)
        header = iter_batches(acc.build(batch))[0]
        sequences.append((header.producer_id, header.producer_epoch, header.base_sequence))
    assert sequences == [(9, 0, 0), (9, 0, 3)]
    first, second = batches
    acc.fail(second, InvalidRequestError("refused"))
    acc.append("t", 0, b"v", None, (), 0, now_ms=0)
    assert acc.drain(0) == []  # the first batch, in flight, is not done yet
    acc.complete(first, base_offset=0)
    (batch,) = acc.drain(0)
    header = iter_batches(acc.build(batch))[0]
    assert (header.producer_epoch, header.base_sequence) == (1, 0)
    acc.check_invariants()


def test_retry_respects_backoff_time() -> None:
    """Proves a retried batch is not drained again before its backoff has passed."""
    acc = make(linger_ms=0)
    acc.append("t", 0, b"a", None, (), 0, now_ms=0)
    (batch,) = acc.drain(0)
    acc.retry(batch, retry_at_ms=100)
    assert acc.drain(50) == []
    assert acc.next_ready_ms(50) == 50
    assert acc.drain(100) == [batch]
    assert batch.attempts == 1


def test_failed_and_closed_batches_release_their_waiters() -> None:
    """Proves fail and fail_all mark batches done with the error and free the buffer."""
    acc = make(linger_ms=0)
    acc.append("t", 0, b"a", None, (), 0, now_ms=0)
    (batch,) = acc.drain(0)
    acc.fail(batch, InvalidRequestError("bad"))
    assert batch.done and isinstance(batch.error, InvalidRequestError)
    other, _, _ = acc.append("t", 1, b"b", None, (), 0, now_ms=0)
    acc.fail_all(lambda: ConnectionClosedError("closing"))
    assert other.done and isinstance(other.error, ConnectionClosedError)
    assert acc.buffer_bytes_used == 0 and acc.pending_count == 0


def test_producer_refuses_pipelining_that_could_reorder() -> None:
    """Proves several batches per partition in flight are refused without idempotence
    (a retry could then land after a later batch) and out-of-range values are refused."""
    import pytest

    from client import Producer

    with pytest.raises(ValueError, match="idempotent"):
        Producer(idempotent=False, inflight_batches_per_partition_max=2)
    with pytest.raises(ValueError, match=r"1\.\.5"):
        Producer(inflight_batches_per_partition_max=6)
    assert Producer(idempotent=False, retries_max=0, inflight_batches_per_partition_max=5)
    assert Producer(inflight_batches_per_partition_max=5).idempotent


def test_producer_size_options_are_checked_with_clear_errors() -> None:
    """Proves a batch above the default buffer raises the buffer with it (no bare
    assertion for a 100 MiB batch), while a buffer set below one batch, a negative
    linger and an out-of-range batch size are ValueErrors naming the option."""
    from client import Producer

    big = Producer(batch_bytes_max=100 << 20)
    assert big.batch_bytes_max == 100 << 20
    with pytest.raises(ValueError, match="buffer_bytes_max"):
        Producer(batch_bytes_max=2 << 20, buffer_bytes_max=1 << 20)
    with pytest.raises(ValueError, match="linger_ms"):
        Producer(linger_ms=-1)
    with pytest.raises(ValueError, match="batch_bytes_max must be"):
        Producer(batch_bytes_max=0)
