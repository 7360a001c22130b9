"""The recovery checkpoint and the clean-shutdown marker of one partition directory.

``recovery-checkpoint.json`` (written atomically by every flush, see atomic_file)::

    {"version": 1, "offset": 1234, "segment_base_offset": 1000, "position": 56789,
     "max_timestamp_ms": 1700000000000, "offset_of_max_timestamp": 1200}

``offset`` is the recovery point: every batch below it, at bytes below
``position`` of segment ``segment_base_offset``, and every earlier segment, was
fsynced together with its indexes.  The two timestamp fields are that segment's
largest batch timestamp up to the recovery point (the sparse time index may not
hold it).  Recovery after an unclean stop re-validates only what lies after it.

``clean-shutdown`` (empty) exists only between a clean close and the next open:
open removes it (durably) so a crash after open is detected, close writes it last.

Concurrency: called by the Log, from a worker thread for flushes (the file is only
ever replaced whole, by rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import msgspec

from broker.storage.atomic_file import remove_durably, write_atomic
from client.errors import StorageError

CHECKPOINT_FILE: Final = "recovery-checkpoint.json"
CLEAN_SHUTDOWN_FILE: Final = "clean-shutdown"
CHECKPOINT_VERSION: Final = 1
_CHECKPOINT_BYTES_MAX: Final = 4096


class RecoveryCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Everything before ``offset`` (at ``position`` of its segment) is durable."""

    version: int = CHECKPOINT_VERSION
    offset: int
    segment_base_offset: int
    position: int
    max_timestamp_ms: int = -1
    offset_of_max_timestamp: int | None = None

    def is_plausible(self) -> bool:
        return (
            self.version == CHECKPOINT_VERSION
            and 0 <= self.segment_base_offset <= self.offset
            and self.position >= 0
            and (self.position == 0) == (self.offset == self.segment_base_offset)
        )


_decoder = msgspec.json.Decoder(RecoveryCheckpoint)


def read_checkpoint(directory: Path) -> RecoveryCheckpoint | None:
    """The stored checkpoint, or None when it is missing or unreadable (recovery then
    scans every segment).  Raises StorageError on an I/O error other than missing."""
    path = directory / CHECKPOINT_FILE
    try:
        with open(path, "rb") as checkpoint_file:
            data = checkpoint_file.read(_CHECKPOINT_BYTES_MAX + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StorageError(f"cannot read {path}: {error}") from error
    if len(data) > _CHECKPOINT_BYTES_MAX:
        return None
    try:
        checkpoint = _decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return checkpoint if checkpoint.is_plausible() else None


def write_checkpoint(directory: Path, checkpoint: RecoveryCheckpoint) -> None:
    """Replace the checkpoint atomically and durably.  Blocking (fsyncs): run it off
    the event loop.  Raises StorageError."""
    assert checkpoint.is_plausible(), checkpoint
    write_atomic(directory / CHECKPOINT_FILE, msgspec.json.encode(checkpoint))


def clean_shutdown_marker_exists(directory: Path) -> bool:
    return (directory / CLEAN_SHUTDOWN_FILE).exists()


def write_clean_shutdown_marker(directory: Path) -> None:
    """Record a clean shutdown (last step of close).  Raises StorageError."""
    write_atomic(directory / CLEAN_SHUTDOWN_FILE, b"")


def remove_clean_shutdown_marker(directory: Path) -> None:
    """Forget the clean shutdown, durably (first step after open).  Raises StorageError."""
    remove_durably(directory / CLEAN_SHUTDOWN_FILE)
