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
- ``APPEND``: the producer id is unknown here (its first batch, or state lost by
  a restart), its epoch is newer (the producer reset its sequences after a batch
  failed for good), or the base sequence follows the last one;
- else OutOfOrderSequenceError (retriable: the producer resends earlier batches
  first).  An older epoch than the remembered one is out of order too.

The caller appends, then calls :meth:`ProducerStateTable.record` with the
offsets the log assigned.  One owner (the partition, under its append lock).

State lives in memory; on open the partition rebuilds it from the headers of
the last :data:`REBUILD_SCAN_BYTES_MAX` bytes of its log (:meth:`replay`), so a
retry across a restart is still recognized unless the producer's last batches
are further back (then it is appended again: at least once).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from typing import Final, NamedTuple

from client.errors import OutOfOrderSequenceError

# Kafka's limit: a producer has at most 5 batches in flight per partition, so
# the last 5 appended batches are enough to recognize any retry.
REMEMBERED_BATCHES_MAX: Final = 5
SEQUENCE_MODULUS: Final = 1 << 31
# Producer ids remembered per partition at most; the least recently used goes
# first (a forgotten producer's next batch is simply appended).
PRODUCERS_PER_PARTITION_MAX: Final = 10_000


# Header bytes scanned on open to rebuild the table: a producer's last 5 batches
# are normally near the log end; 8 MiB of headers walk in well under a second
# even for small batches.
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
        self._producers: dict[int, _ProducerEntry] = {}

    def __len__(self) -> int:
        return len(self._producers)

    def check(
        self, producer_id: int, producer_epoch: int, base_sequence: int
    ) -> tuple[Verdict, AppendedBatch | None]:
        """Classify a batch: ``(APPEND, None)`` or ``(DUPLICATE, remembered)``.
        Raises OutOfOrderSequenceError."""
        assert producer_id >= 0
        entry = self._producers.get(producer_id)
        if entry is None or producer_epoch > entry.epoch:
            return Verdict.APPEND, None
        if producer_epoch < entry.epoch:
            raise OutOfOrderSequenceError(
                f"producer {producer_id}: epoch {producer_epoch} is older than {entry.epoch}"
            )
        for batch in entry.batches:
            if batch.base_sequence == base_sequence:
                return Verdict.DUPLICATE, batch
        last = entry.batches[-1].last_sequence if entry.batches else None
        if last is None or base_sequence == (last + 1) % SEQUENCE_MODULUS:
            return Verdict.APPEND, None
        raise OutOfOrderSequenceError(
            f"producer {producer_id}: base sequence {base_sequence}, expected {(last + 1) % SEQUENCE_MODULUS}"
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
        entry.batches.append(
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
        self.check_invariants_of(producer_id)

    def replay(self, fields: Iterable[tuple[int, ...]]) -> None:
        """Rebuild from batch header fields (client.records.header.HEADER order) of
        appended batches, oldest first; batches without a producer id or of an
        older epoch than one already seen are skipped."""
        for header in fields:
            base_offset, producer_id, epoch, sequence = header[0], header[9], header[10], header[11]
            if producer_id < 0 or epoch < 0 or sequence < 0:
                continue
            entry = self._producers.get(producer_id)
            if entry is not None and epoch < entry.epoch:
                continue
            self.record(
                producer_id, epoch, sequence, header[12], base_offset, base_offset + header[6]
            )

    def check_invariants_of(self, producer_id: int) -> None:
        """A producer's remembered batches have increasing offsets and are at most
        REMEMBERED_BATCHES_MAX."""
        entry = self._producers.get(producer_id)
        if entry is None:
            return
        assert len(entry.batches) <= REMEMBERED_BATCHES_MAX
        previous = -1
        for batch in entry.batches:
            assert previous < batch.base_offset <= batch.last_offset, entry.batches
            previous = batch.last_offset
