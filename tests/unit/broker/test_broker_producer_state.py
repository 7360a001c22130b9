"""The idempotent-produce table: duplicates, in-order, out-of-order, unknown producers, wrap-around."""

from __future__ import annotations

import pytest

from broker.producer_state import (
    REMEMBERED_BATCHES_MAX,
    SEQUENCE_MODULUS,
    AppendedBatch,
    ProducerStateTable,
    Verdict,
    last_sequence_of,
)
from client.errors import OutOfOrderSequenceError

PRODUCER = 7


def appended(table: ProducerStateTable, base_sequence: int, count: int, base_offset: int) -> None:
    """Check a batch (it must be appendable) and record it at ``base_offset``."""
    assert table.check(PRODUCER, 0, base_sequence) == (Verdict.APPEND, None)
    table.record(PRODUCER, 0, base_sequence, count, base_offset, base_offset + count - 1)


def test_unknown_producer_appends_at_any_sequence() -> None:
    """A producer id the partition never saw (or forgot in a restart) is appended."""
    table = ProducerStateTable()
    assert table.check(PRODUCER, 0, 0) == (Verdict.APPEND, None)
    assert table.check(PRODUCER, 3, 12345) == (Verdict.APPEND, None)


def test_in_order_batches_append() -> None:
    """Each batch whose base sequence follows the last record's sequence appends."""
    table = ProducerStateTable()
    appended(table, 0, 3, 0)
    appended(table, 3, 2, 3)
    appended(table, 5, 1, 5)
    table.check_invariants_of(PRODUCER)


def test_retried_batch_is_a_duplicate_with_its_offsets() -> None:
    """A retried batch (same base sequence) is answered with the offsets of the first append."""
    table = ProducerStateTable()
    appended(table, 0, 3, 10)
    appended(table, 3, 2, 13)
    assert table.check(PRODUCER, 0, 0) == (Verdict.DUPLICATE, AppendedBatch(0, 2, 10, 12))
    assert table.check(PRODUCER, 0, 3) == (Verdict.DUPLICATE, AppendedBatch(3, 4, 13, 14))


def test_only_the_last_batches_are_remembered() -> None:
    """After REMEMBERED_BATCHES_MAX newer batches, an old one is no longer a duplicate."""
    table = ProducerStateTable()
    for index in range(REMEMBERED_BATCHES_MAX + 1):
        appended(table, index, 1, index)
    with pytest.raises(OutOfOrderSequenceError):
        table.check(PRODUCER, 0, 0)
    assert table.check(PRODUCER, 0, 1)[0] is Verdict.DUPLICATE


@pytest.mark.parametrize("base_sequence", [1, 2, 4, 100])
def test_gap_or_unknown_old_sequence_is_out_of_order(base_sequence: int) -> None:
    """A batch that neither follows nor repeats a remembered one is OutOfOrderSequenceError."""
    table = ProducerStateTable()
    appended(table, 0, 1, 0)
    appended(table, 1, 2, 1)  # last sequence 2: 3 is expected
    if base_sequence == 1:
        assert table.check(PRODUCER, 0, 1)[0] is Verdict.DUPLICATE
        return
    with pytest.raises(OutOfOrderSequenceError) as caught:
        table.check(PRODUCER, 0, base_sequence)
    assert caught.value.retriable


def test_sequence_wraps_at_two_to_the_31() -> None:
    """Sequences count modulo 2^31: the batch after one ending at 2^31 - 1 starts at 0."""
    table = ProducerStateTable()
    start = SEQUENCE_MODULUS - 2
    assert last_sequence_of(start, 4) == 1
    appended(table, start, 4, 0)  # sequences 2^31-2, 2^31-1, 0, 1
    with pytest.raises(OutOfOrderSequenceError):
        table.check(PRODUCER, 0, 0)
    appended(table, 2, 1, 4)
    assert table.check(PRODUCER, 0, start)[0] is Verdict.DUPLICATE


def test_epochs_newer_start_over_older_are_refused() -> None:
    """A newer producer epoch appends at any sequence; an older one is out of order."""
    table = ProducerStateTable()
    table.record(PRODUCER, 1, 0, 5, 0, 4)
    assert table.check(PRODUCER, 2, 0) == (Verdict.APPEND, None)
    with pytest.raises(OutOfOrderSequenceError):
        table.check(PRODUCER, 0, 5)
    table.record(PRODUCER, 2, 0, 1, 5, 5)
    assert table.check(PRODUCER, 2, 1) == (Verdict.APPEND, None)
    with pytest.raises(OutOfOrderSequenceError):
        table.check(PRODUCER, 1, 5)


def test_producers_are_independent_and_bounded() -> None:
    """Each producer id has its own sequence; past the bound the least recent is forgotten."""
    table = ProducerStateTable(producers_max=2)
    table.record(1, 0, 0, 1, 0, 0)
    table.record(2, 0, 0, 1, 1, 1)
    assert table.check(1, 0, 1) == (Verdict.APPEND, None)
    assert table.check(2, 0, 0)[0] is Verdict.DUPLICATE
    table.record(1, 0, 1, 1, 2, 2)  # 1 is now the most recent
    table.record(3, 0, 0, 1, 3, 3)  # evicts 2
    assert len(table) == 2
    assert table.check(2, 0, 40) == (Verdict.APPEND, None)
    assert table.check(1, 0, 1)[0] is Verdict.DUPLICATE


def header_fields(
    base_offset: int, count: int, producer_id: int, epoch: int, base_sequence: int
) -> tuple[int, ...]:
    """A batch header's fields in client.records.header.HEADER order."""
    return (base_offset, 0, 0, 2, 0, 0, count - 1, 0, 0, producer_id, epoch, base_sequence, count)


def test_replay_rebuilds_from_log_headers() -> None:
    """Replaying appended headers (as on open) restores duplicates and the expected next
    sequence, skips batches without a producer id, and keeps only the newest epoch."""
    table = ProducerStateTable()
    table.replay(
        [
            header_fields(0, 2, PRODUCER, 0, 0),
            header_fields(2, 5, -1, -1, -1),
            header_fields(7, 3, PRODUCER, 0, 2),
            header_fields(10, 1, 8, 1, 40),
            header_fields(11, 1, 8, 2, 0),
        ]
    )
    assert table.check(PRODUCER, 0, 2) == (Verdict.DUPLICATE, AppendedBatch(2, 4, 7, 9))
    assert table.check(PRODUCER, 0, 5) == (Verdict.APPEND, None)
    assert table.check(8, 2, 0)[0] is Verdict.DUPLICATE
    with pytest.raises(OutOfOrderSequenceError):
        table.check(8, 1, 40)
