"""The idempotent-produce table: duplicates, in-order, out-of-order, unknown producers,
wrap-around, truncation and rebuilding from log headers."""

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
from client.errors import ErrorCode, OutOfOrderSequenceError, UnknownProducerIdError

PRODUCER = 7


def appended(table: ProducerStateTable, base_sequence: int, count: int, base_offset: int) -> None:
    """Check a batch (it must be appendable) and record it at ``base_offset``."""
    assert table.check(PRODUCER, 0, base_sequence) == (Verdict.APPEND, None)
    table.record(PRODUCER, 0, base_sequence, count, base_offset, base_offset + count - 1)


def test_unknown_producer_appends_only_from_sequence_zero() -> None:
    """A producer id the partition does not know appends at sequence 0 (any epoch);
    at any other sequence it is UnknownProducerIdError, retriable, code 61."""
    table = ProducerStateTable()
    assert table.check(PRODUCER, 0, 0) == (Verdict.APPEND, None)
    assert table.check(PRODUCER, 3, 0) == (Verdict.APPEND, None)
    with pytest.raises(UnknownProducerIdError) as caught:
        table.check(PRODUCER, 0, 12345)
    assert caught.value.retriable and caught.value.code is ErrorCode.UNKNOWN_PRODUCER_ID
    assert len(table) == 0


def test_in_order_batches_append() -> None:
    """Each batch whose base sequence follows the last record's sequence appends."""
    table = ProducerStateTable()
    appended(table, 0, 3, 0)
    appended(table, 3, 2, 3)
    appended(table, 5, 1, 5)
    table.check_invariants(log_end_offset=6)


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
    table.record(PRODUCER, 0, start, 4, 0, 3)  # sequences 2^31-2, 2^31-1, 0, 1
    with pytest.raises(OutOfOrderSequenceError):
        table.check(PRODUCER, 0, 0)
    appended(table, 2, 1, 4)
    assert table.check(PRODUCER, 0, start)[0] is Verdict.DUPLICATE


def test_epochs_newer_start_over_older_are_refused() -> None:
    """A newer producer epoch appends from sequence 0 only (else out of order); an
    older one is out of order."""
    table = ProducerStateTable()
    table.record(PRODUCER, 1, 0, 5, 0, 4)
    assert table.check(PRODUCER, 2, 0) == (Verdict.APPEND, None)
    with pytest.raises(OutOfOrderSequenceError):
        table.check(PRODUCER, 2, 5)
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
    with pytest.raises(UnknownProducerIdError):
        table.check(2, 0, 1)
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


def test_replay_can_rebuild_chosen_producers_only() -> None:
    """Replay with ``producer_ids`` restores those producers and leaves others unknown."""
    table = ProducerStateTable()
    table.replay(
        [header_fields(0, 2, PRODUCER, 0, 0), header_fields(2, 1, 8, 0, 0)], producer_ids=[8]
    )
    assert PRODUCER not in table and 8 in table
    assert table.check(8, 0, 1) == (Verdict.APPEND, None)


def test_truncation_forgets_producers_with_batches_past_the_new_end() -> None:
    """After the log is cut at offset 2, a producer with a batch there is forgotten
    and rebuilt from the headers left in the log: a retry of the batch that was at
    offset 2 is appended again (not a duplicate at an offset that no longer
    exists), earlier batches are still recognized, other producers are kept."""
    table = ProducerStateTable()
    table.record(8, 0, 0, 1, 0, 0)  # another producer, below the cut
    table.record(42, 0, 0, 2, 1, 2)  # sequences 0-1 at offsets 1-2
    table.record(42, 0, 2, 1, 3, 3)  # sequence 2 at offset 3
    assert table.truncate(3) == [42]
    assert 42 not in table and 8 in table
    table.check_invariants(log_end_offset=3)
    table.replay([header_fields(0, 1, 8, 0, 0), header_fields(1, 2, 42, 0, 0)], producer_ids=[42])
    assert table.check(42, 0, 2) == (Verdict.APPEND, None)
    assert table.check(42, 0, 0) == (Verdict.DUPLICATE, AppendedBatch(0, 1, 1, 2))
    assert table.check(8, 0, 1) == (Verdict.APPEND, None)


def test_retention_forgets_producers_whose_records_all_went() -> None:
    """After retention moves the log start to 3, a producer whose last batch ended
    below it is forgotten (its next batch is UNKNOWN_PRODUCER_ID, KIP-360), one
    with a batch at or past it is kept."""
    table = ProducerStateTable()
    table.record(8, 0, 0, 3, 0, 2)  # offsets 0-2: all below the new start
    table.record(42, 0, 0, 2, 2, 3)  # ends at offset 3: kept
    assert table.forget_before(3) == [8]
    assert 8 not in table and 42 in table
    with pytest.raises(UnknownProducerIdError):
        table.check(8, 0, 3)
    assert table.check(42, 0, 2) == (Verdict.APPEND, None)


def test_truncation_rebuilds_older_batches_from_the_log() -> None:
    """A producer whose remembered batches are all cut away gets its last
    sequence back from older batches still in the log (beyond the remembered 5)."""
    table = ProducerStateTable()
    fields = [header_fields(sequence, 1, PRODUCER, 0, sequence) for sequence in range(8)]
    table.replay(fields)
    assert table.truncate(3) == [PRODUCER]  # the remembered batches were at 3..7
    table.replay(fields[:3], producer_ids=[PRODUCER])
    table.check_invariants(log_end_offset=3)
    assert table.check(PRODUCER, 0, 3) == (Verdict.APPEND, None)
    assert table.check(PRODUCER, 0, 0)[0] is Verdict.DUPLICATE


def test_invariant_ties_remembered_batches_to_the_log_end() -> None:
    """check_invariants fails when a remembered batch lies at or past the log end."""
    table = ProducerStateTable()
    table.record(PRODUCER, 0, 0, 3, 0, 2)
    table.check_invariants(log_end_offset=3)
    with pytest.raises(AssertionError):
        table.check_invariants(log_end_offset=2)
