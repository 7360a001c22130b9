"""Idempotent produce: per partition, what each producer id last appended.

Sans-I/O.  A batch with ``producer_id >= 0`` carries ``producer_epoch`` and
``base_sequence`` (sequence numbers count records, as in Kafka: a batch of n
records uses ``base_sequence .. base_sequence + n - 1``, modulo 2^31).  For each
producer id the partition remembers its epoch and its last
:data:`REMEMBERED_BATCHES_MAX` appended batches (sequence range and offsets).
:meth:`ProducerStateTable.check` classifies a batch from its header fields only
(never per record):

- ``DUPLICATE``: same epoch and base sequence as a remembered batch (a retry of
  a batch already appended): do not append, answer with the remembered offsets;
- ``APPEND``: the base sequence follows the producer's last one, or the batch
  starts at sequence 0 for a producer id the partition does not know (its first
  batch) or with a newer epoch (the producer reset its sequences after a batch
  failed for good);
- else UnknownProducerIdError (an unknown producer id not at sequence 0: the
  partition forgot it -- its batches were truncated away, fell out of the table
  or predate the rebuild on open) or OutOfOrderSequenceError (a gap, a newer
  epoch not at sequence 0, or an older epoch).  Both are retriable: the producer
  resends earlier batches first, or starts a new epoch at sequence 0.

The caller appends, then calls :meth:`ProducerStateTable.record` with the
offsets the log assigned.  One owner (the partition, under its append lock).

The table follows the log: every remembered batch lies below the log end
(:meth:`check_invariants`), and the table holds what replaying the log's batch
headers would give (:meth:`replay`: each producer's last batches of its newest
epoch).  After the log is truncated, :meth:`truncate` forgets every producer
with a batch at or past the new end and returns them; the partition rebuilds
those from the headers still in the log (:meth:`replay` with ``producer_ids``),
so a truncation leaves them as a restart would.  Other producers keep their
state (rebuilding the whole table would forget those whose batches lie further
back than the rebuild reads).

State lives in memory; on open the partition rebuilds it from the headers of
the last :data:`REBUILD_SCAN_BYTES_MAX` bytes of its log (:meth:`replay`), so a
retry across a restart is still recognized unless the producer's last batches
are further back (then the producer is unknown: UnknownProducerIdError).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Collection, Iterable
from typing import Final, NamedTuple

from client.errors import OutOfOrderSequenceError, UnknownProducerIdError

# Kafka's limit: a producer has at most 5 batches in flight per partition, so
# the last 5 appended batches are enough to recognize any retry.
REMEMBERED_BATCHES_MAX: Final = 5
SEQUENCE_MODULUS: Final = 1 << 31
# Producer ids remembered per partition at most; the least recently used goes
# first (a forgotten producer's next batch must start at sequence 0).
PRODUCERS_PER_PARTITION_MAX: Final = 10_000


# Header bytes scanned to rebuild the table (on open, and after a truncation for
# the producers it touched): a producer's last 5 batches are normally near the
# log end; 8 MiB of headers walk in well under a second even for small batches.
REBUILD_SCAN_BYTES_MAX: Final = 8 * 1024 * 1024


class Verdict(enum.Enum):
    APPEND = "append"
    DUPLICATE = "duplicate"


class AppendedBatch(NamedTuple):
    """One remembered batch (a NamedTuple: made once per idempotent append, and a
    frozen dataclass's constructor costs several Python calls)."""

    base_sequence: int
    last_sequence: int
    base_offset: int
    last_offset: int


def last_sequence_of(base_sequence: int, record_count: int) -> int:
    """The sequence of a batch's last record (wrapping at 2^31)."""
    assert 0 <= base_sequence < SEQUENCE_MODULUS and record_count >= 1
    return (base_sequence + record_count - 1) % SEQUENCE_MODULUS


class _ProducerEntry:
    __slots__ = ("batches", "epoch")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches: deque[AppendedBatch] = deque(maxlen=REMEMBERED_BATCHES_MAX)


class ProducerStateTable:
    """See the module docstring.  Not thread-safe; one owner."""

    def __init__(self, producers_max: int = PRODUCERS_PER_PARTITION_MAX) -> None:
        assert producers_max >= 1
        self.producers_max = producers_max
        # Insertion order doubles as recency order (record() moves to the end).
        # Every entry holds at least one batch.
        self._producers: dict[int, _ProducerEntry] = {}

    def __len__(self) -> int:
        return len(self._producers)

    def __contains__(self, producer_id: int) -> bool:
        return producer_id in self._producers

    def check(
        self, producer_id: int, producer_epoch: int, base_sequence: int
    ) -> tuple[Verdict, AppendedBatch | None]:
        """Classify a batch: ``(APPEND, None)`` or ``(DUPLICATE, remembered)``.
        Raises UnknownProducerIdError, OutOfOrderSequenceError."""
        assert producer_id >= 0
        entry = self._producers.get(producer_id)
        if entry is None:
            if base_sequence == 0:
                return Verdict.APPEND, None
            raise UnknownProducerIdError(
                f"producer {producer_id}: unknown here, and base sequence {base_sequence} is not 0"
            )
        if producer_epoch != entry.epoch:
            if producer_epoch > entry.epoch and base_sequence == 0:
                return Verdict.APPEND, None
            raise OutOfOrderSequenceError(
                f"producer {producer_id}: epoch {producer_epoch} with base sequence "
                f"{base_sequence} after epoch {entry.epoch} (a newer epoch starts at 0)"
            )
        batches = entry.batches
        last = batches[-1].last_sequence
        if base_sequence == (last + 1) % SEQUENCE_MODULUS:
            return Verdict.APPEND, None
        for batch in batches:
            if batch.base_sequence == base_sequence:
                return Verdict.DUPLICATE, batch
        raise OutOfOrderSequenceError(
            f"producer {producer_id}: base sequence {base_sequence}, "
            f"expected {(last + 1) % SEQUENCE_MODULUS}"
        )

    def record(
        self,
        producer_id: int,
        producer_epoch: int,
        base_sequence: int,
        record_count: int,
        base_offset: int,
        last_offset: int,
    ) -> None:
        """Remember a batch just appended at ``base_offset .. last_offset``."""
        assert producer_id >= 0 and 0 <= base_offset <= last_offset
        entry = self._producers.pop(producer_id, None)
        if entry is None or producer_epoch > entry.epoch:
            entry = _ProducerEntry(producer_epoch)
        assert producer_epoch == entry.epoch, (producer_epoch, entry.epoch)
        batches = entry.batches
        assert not batches or batches[-1].last_offset < base_offset, (batches, base_offset)
        batches.append(
            AppendedBatch(
                base_sequence,
                last_sequence_of(base_sequence, record_count),
                base_offset,
                last_offset,
            )
        )
        self._producers[producer_id] = entry  # most recent last
        if len(self._producers) > self.producers_max:
            del self._producers[next(iter(self._producers))]

    def truncate(self, end_offset: int) -> list[int]:
        """Forget every producer with a remembered batch at or past ``end_offset``
        (the log's new end after a truncation) and return their ids: replaying the
        log's headers with ``producer_ids`` (:meth:`replay`) restores their batches
        still in the log."""
        assert end_offset >= 0
        forgotten = [
            producer_id
            for producer_id, entry in self._producers.items()
            if entry.batches[-1].last_offset >= end_offset
        ]
        for producer_id in forgotten:
            del self._producers[producer_id]
        return forgotten

    def forget_before(self, log_start_offset: int) -> list[int]:
        """Forget every producer whose last remembered batch ends below
        ``log_start_offset`` (retention removed its records, as Kafka evicts
        them): its next batch is answered UNKNOWN_PRODUCER_ID with the log start
        offset, from which the producer learns it may start over.  Returns their ids."""
        assert log_start_offset >= 0
        forgotten = [
            producer_id
            for producer_id, entry in self._producers.items()
            if entry.batches[-1].last_offset < log_start_offset
        ]
        for producer_id in forgotten:
            del self._producers[producer_id]
        return forgotten

    def replay(
        self, fields: Iterable[tuple[int, ...]], producer_ids: Collection[int] | None = None
    ) -> None:
        """Rebuild from batch header fields (client.records.header.HEADER order) of
        appended batches, oldest first: of every producer, or only of
        ``producer_ids``.  Batches without a producer id or of an older epoch than
        one already seen are skipped, and so are headers no append could have
        written (read from disk: damage must not trip the table's assertions)."""
        for header in fields:
            (
                base_offset,
                _batch_length,
                _leader_epoch,
                _magic,
                _crc,
                _attributes,
                last_offset_delta,
                _first_timestamp,
                _max_timestamp,
                producer_id,
                epoch,
                sequence,
                record_count,
            ) = header
            if producer_id < 0 or epoch < 0 or not 0 <= sequence < SEQUENCE_MODULUS:
                continue
            if record_count < 1 or last_offset_delta < 0 or base_offset < 0:
                continue  # not a batch we appended: a damaged header is not replayed
            if producer_ids is not None and producer_id not in producer_ids:
                continue
            entry = self._producers.get(producer_id)
            if entry is not None and (
                epoch < entry.epoch or entry.batches[-1].last_offset >= base_offset
            ):
                continue
            self.record(
                producer_id,
                epoch,
                sequence,
                record_count,
                base_offset,
                base_offset + last_offset_delta,
            )

    def check_invariants(self, log_end_offset: int) -> None:
        """At most ``producers_max`` producers; each has 1 to REMEMBERED_BATCHES_MAX
        batches, in increasing offset order, all below ``log_end_offset``."""
        assert len(self._producers) <= self.producers_max
        for producer_id, entry in self._producers.items():
            batches = entry.batches
            assert 1 <= len(batches) <= REMEMBERED_BATCHES_MAX, (producer_id, batches)
            previous = -1
            for batch in batches:
                assert previous < batch.base_offset <= batch.last_offset, (producer_id, batches)
                previous = batch.last_offset
            assert previous < log_end_offset, (producer_id, batches, log_end_offset)
