"""The file mechanics shared by the two sparse indexes (offset and time).

An index is an array of fixed-size big-endian entries, kept whole in memory as a
``bytearray`` that is byte for byte the file's contents, and appended to the file
with ``os.write``.  Lookups binary-search the bytearray with ``struct.unpack_from``
(about 20 calls for a full 1 GiB segment), so no per-entry Python objects exist.
Indexes carry no checksum: they are rebuildable from the log, and the segment
rebuilds one whenever it is missing or fails its sanity check.

Entries are added to memory first and written by :meth:`IndexFile.write_pending`
(one write per append call); :meth:`truncate_entries` rolls both back.  Between
appends, ``entry_count * ENTRY.size == file_bytes``.

Concurrency: the owning segment calls everything from the event-loop thread.  A
flush fsyncs index files by path from a worker thread, through a descriptor of its
own (flush.sync_to_disk), so the writer here may close meanwhile.
"""

from __future__ import annotations

import abc
import os
import struct
from pathlib import Path
from typing import Self

from broker.storage import file_handle
from client.errors import StorageError


class IndexFile(abc.ABC):
    """A sparse index file: ``ENTRY``-sized entries, first field the search key."""

    ENTRY: struct.Struct = struct.Struct(">II")  # overridden by subclasses

    __slots__ = ("_descriptor", "base_offset", "entries", "file_bytes", "path")

    def __init__(self, path: Path, base_offset: int, entries: bytearray) -> None:
        assert len(entries) % self.ENTRY.size == 0, (path, len(entries))
        self.path = path
        self.base_offset = base_offset
        self.entries = entries
        self.file_bytes = len(entries)
        self._descriptor: int | None = None

    @classmethod
    def read_entries(cls, path: Path) -> bytearray | None:
        """The file's bytes, or None if it is missing.  Raises StorageError."""
        try:
            with open(path, "rb") as index_file:
                return bytearray(index_file.read())
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StorageError(f"cannot read {path}: {error}") from error

    @classmethod
    def load(cls, path: Path, base_offset: int) -> Self | None:
        """The index stored at ``path``, or None if missing or malformed (the caller
        rebuilds it).  Raises StorageError if it cannot be read."""
        entries = cls.read_entries(path)
        if entries is None or len(entries) % cls.ENTRY.size:
            return None
        index = cls(path, base_offset, entries)
        return index if index.is_well_formed() else None

    @abc.abstractmethod
    def is_well_formed(self) -> bool:
        """Whether the entries satisfy the subclass's ordering rules (checked in C)."""

    @property
    def entry_count(self) -> int:
        return len(self.entries) // self.ENTRY.size

    def entry(self, number: int) -> tuple[int, int]:
        """The raw (key, value) fields of entry ``number``."""
        assert 0 <= number < self.entry_count, (number, self.entry_count)
        key, value = self.ENTRY.unpack_from(self.entries, number * self.ENTRY.size)
        return int(key), int(value)

    def floor_entry_number(self, key: int, *, field: int = 0) -> int:
        """The number of the last entry whose ``field`` is <= ``key``, or -1.

        The field must be non-decreasing across entries (both are, in both indexes).
        """
        low, high = 0, self.entry_count  # answer is in [low - 1, high - 1]
        entry, size = self.ENTRY, self.ENTRY.size
        for _ in range(64):  # binary search over at most 2**64 entries
            if low >= high:
                break
            middle = (low + high) // 2
            if entry.unpack_from(self.entries, middle * size)[field] <= key:
                low = middle + 1
            else:
                high = middle
        return low - 1

    def _append_entry(self, key: int, value: int) -> None:
        self.entries += self.ENTRY.pack(key, value)

    def write_pending(self) -> None:
        """Write entries added since the last write.  Raises OSError (the segment rolls
        back with :meth:`truncate_entries` and reports StorageError)."""
        if self.file_bytes == len(self.entries):
            return
        if self._descriptor is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self._descriptor = os.open(self.path, flags, 0o644)
        # A copy (a few entries), not a view: a view kept alive by a traceback would
        # stop truncate_entries from resizing the bytearray during a rollback.
        file_handle.write_all(self._descriptor, bytes(self.entries[self.file_bytes :]))
        self.file_bytes = len(self.entries)

    def truncate_entries(self, count: int) -> None:
        """Keep only the first ``count`` entries, in memory and on disk.  Raises OSError."""
        assert 0 <= count <= self.entry_count, (count, self.entry_count)
        keep_bytes = count * self.ENTRY.size
        del self.entries[keep_bytes:]
        if self.file_bytes > keep_bytes:
            os.truncate(self.path, keep_bytes)
            self.file_bytes = keep_bytes

    def rewrite(self) -> None:
        """Replace the file with the in-memory entries (after a rebuild).  Raises OSError."""
        self.close()
        with open(self.path, "wb") as index_file:
            index_file.write(self.entries)
        self.file_bytes = len(self.entries)

    def close(self) -> None:
        """Close the append descriptor (entries stay in memory; reopened on demand)."""
        if self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            os.close(descriptor)

    def check_file_invariants(self) -> None:
        """entries * entry size == index file position == the file's size."""
        assert len(self.entries) % self.ENTRY.size == 0
        assert self.file_bytes == len(self.entries), (self.path, self.file_bytes)
        assert os.path.getsize(self.path) == self.file_bytes, self.path
