"""The leader-epoch checkpoint of one partition directory: which leader epoch starts
at which offset, kept across restarts (Kafka's ``leader-epoch-checkpoint``).

``leader-epoch-checkpoint`` is text, replaced whole and atomically (atomic_file)::

    0                 <- format version
    2                 <- entry count
    0 0               <- epoch, start offset
    3 1200

The file only mirrors what the batch headers already say: every batch carries the
epoch of the leader that wrote it (``leader_epoch`` in client/records/header.py).
So a missing, unreadable or implausible file is never fatal: :func:`load_epochs`
rebuilds the entries from the headers, one per epoch change, reading every batch
header of the log (per batch, never per record).  A file that is readable but
disagrees with the log -- an entry past the log end (the log lost an unflushed
tail), or a last batch whose epoch the entries do not give it (the file lost a
write the log kept) -- is clipped to the log, or rebuilt, likewise.

Blocking (file reads and fsyncs): callers on the event loop run these in a worker
thread.  Concurrency: one writer, the partition, which serialises its writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Final, NamedTuple

from broker.replication.epochs import EpochEntry, LeaderEpochCache
from broker.storage.atomic_file import write_atomic
from client.errors import StorageError

EPOCH_CHECKPOINT_FILE: Final = "leader-epoch-checkpoint"
EPOCH_CHECKPOINT_VERSION: Final = 0
# Far more than a partition's leader changes in its lifetime (each entry is a
# leader change that wrote a batch); a larger file is treated as corrupt.
EPOCH_ENTRIES_MAX: Final = 100_000
_LINE_BYTES_MAX: Final = 48  # two 64-bit numbers in decimal, a space and a newline
_FILE_BYTES_MAX: Final = 64 + EPOCH_ENTRIES_MAX * _LINE_BYTES_MAX

# Header fields (client.records.header.HEADER order) used here.
_BASE_OFFSET_FIELD: Final = 0
_LEADER_EPOCH_FIELD: Final = 2

# Header fields of the batches in about the last N bytes of the log, oldest first
# (Log.tail_header_fields); N at least the log's size gives every batch.
HeaderFields = Callable[[int], Iterator[tuple[int, ...]]]


class LoadedEpochs(NamedTuple):
    cache: LeaderEpochCache
    # "read" (the file, as is), "clipped" (the file, cut to the log: write it
    # back), "rebuilt" (from the headers: write it back).
    source: str


def encode_entries(entries: Iterable[EpochEntry]) -> bytes:
    listed = list(entries)
    lines = [str(EPOCH_CHECKPOINT_VERSION), str(len(listed))]
    lines.extend(f"{epoch} {start_offset}" for epoch, start_offset in listed)
    return ("\n".join(lines) + "\n").encode("ascii")


def decode_entries(data: bytes) -> list[EpochEntry] | None:
    """The entries of a checkpoint file's bytes, or None when they are not a
    well-formed checkpoint (wrong version or count, a bad line, epochs or start
    offsets not strictly increasing)."""
    try:
        lines = data.decode("ascii").split("\n")
    except UnicodeDecodeError:
        return None
    if len(lines) < 3 or lines[-1] != "":
        return None
    if lines[0] != str(EPOCH_CHECKPOINT_VERSION):
        return None
    try:
        count = int(lines[1])
        body = lines[2:-1]
        if count != len(body) or count > EPOCH_ENTRIES_MAX:
            return None
        entries = []
        for line in body:
            epoch_text, start_text = line.split(" ")
            entries.append(EpochEntry(int(epoch_text), int(start_text)))
        LeaderEpochCache(entries)  # validates: strictly increasing, not negative
    except ValueError:
        return None
    return entries


def read_epoch_checkpoint(directory: Path) -> list[EpochEntry] | None:
    """The stored entries, or None when the file is missing or not a well-formed
    checkpoint (the caller rebuilds them from the log).  Raises StorageError on an
    I/O error other than a missing file."""
    path = directory / EPOCH_CHECKPOINT_FILE
    try:
        with open(path, "rb") as checkpoint_file:
            data = checkpoint_file.read(_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StorageError(f"cannot read {path}: {error}") from error
    if len(data) > _FILE_BYTES_MAX:
        return None
    return decode_entries(data)


def write_epoch_checkpoint(directory: Path, entries: Iterable[EpochEntry]) -> None:
    """Replace the checkpoint atomically and durably.  Blocking (fsyncs).
    Raises StorageError."""
    write_atomic(directory / EPOCH_CHECKPOINT_FILE, encode_entries(entries))


def rebuild_entries(header_fields: Iterable[tuple[int, ...]]) -> LeaderEpochCache:
    """The cache the batch headers describe: an entry where each new epoch starts.
    A batch with a negative epoch (never stamped by a leader) adds nothing; an epoch
    lower than an earlier one (only a damaged log holds that) is ignored."""
    cache = LeaderEpochCache()
    latest = -1
    for fields in header_fields:
        epoch = fields[_LEADER_EPOCH_FIELD]
        if epoch > latest:
            cache.assign(epoch, fields[_BASE_OFFSET_FIELD])
            latest = epoch
    return cache


def load_epochs(
    directory: Path,
    *,
    log_start_offset: int,
    log_end_offset: int,
    log_size_bytes: int,
    header_fields: HeaderFields,
) -> LoadedEpochs:
    """The partition's epoch cache at open: the checkpoint clipped to the log's
    ``[log_start_offset, log_end_offset)``, or rebuilt from every batch header when
    the file is missing, corrupt, or does not give the log's last batch its epoch.
    Blocking.  Raises StorageError, LogCorruptError (a header walk met a damaged
    header)."""
    entries = read_epoch_checkpoint(directory)
    if entries is not None:
        cache = LeaderEpochCache(entries)
        clipped = cache.truncate_from_end(log_end_offset)
        clipped = cache.truncate_from_start(log_start_offset) or clipped
        if _agrees_with_tail(cache, log_end_offset, header_fields):
            return LoadedEpochs(cache, "clipped" if clipped else "read")
    if log_end_offset == log_start_offset:
        return LoadedEpochs(LeaderEpochCache(), "rebuilt")
    cache = rebuild_entries(header_fields(log_size_bytes + 1))
    cache.truncate_from_start(log_start_offset)
    return LoadedEpochs(cache, "rebuilt")


def _agrees_with_tail(
    cache: LeaderEpochCache, log_end_offset: int, header_fields: HeaderFields
) -> bool:
    """Whether the cache gives the log's last batch the epoch its header holds (an
    empty log contradicts nothing: retention may have emptied it, and the entry of
    its latest epoch, moved up to the log start, stays)."""
    last: tuple[int, ...] | None = None
    for fields in header_fields(1):  # the last segment's tail: a few headers
        last = fields
    if last is None:
        return True
    epoch = last[_LEADER_EPOCH_FIELD]
    if epoch < 0:
        return True
    assert last[_BASE_OFFSET_FIELD] < log_end_offset, (last, log_end_offset)
    return cache.epoch_for_offset(last[_BASE_OFFSET_FIELD]) == epoch
