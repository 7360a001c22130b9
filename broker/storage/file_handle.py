"""Reference-counted file descriptors and the file regions handed to readers.

A segment's ``.log`` file is opened once; the segment owns one reference to its
:class:`FileHandle` and every :class:`FileRegion` handed to a reader owns another.
The descriptor is closed when the last reference is released, so retention may
delete (unlink) a segment while a fetch is still sending from it: Linux keeps an
unlinked file's data until its last descriptor closes.  This is the "deferred
close" that keeps a region valid across a concurrent append, roll or retention.

Truncation is the one operation that changes bytes a region may cover (only
``Log.truncate_to``, which replication uses on a follower).  Each handle counts
its truncations; :meth:`FileRegion.is_intact` tells a sender whether the bytes
it was handed may have been cut since.

Thread-safety: ``acquire``/``release`` take a lock, so a region may be released
from a worker thread.  Reading a region (``os.pread``, ``os.sendfile``) is safe
from any thread while a reference is held.  Everything else belongs to the
event-loop thread that owns the log.

The I/O helpers (:func:`write_all`, :func:`read_exactly`) are module-level so
tests can replace them to simulate a full disk or a failing read.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

from client.errors import StorageError


def write_all(descriptor: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data`` at the descriptor's position (O_APPEND: the end).

    A single ``os.write`` may be short; each one writes at least a byte or raises, so
    the loop runs at most ``len(data)`` times.  Raises OSError (the caller turns it
    into StorageError after rolling back).
    """
    view = memoryview(data)
    written = 0
    total = len(view)
    while written < total:
        count = os.write(descriptor, view[written:])
        if count <= 0:
            raise OSError(f"write returned {count}")
        written += count


def read_exactly(descriptor: int, position: int, size: int) -> bytes:
    """Read ``size`` bytes at ``position`` (fewer only at end of file).

    Raises StorageError on an I/O error.
    """
    try:
        return os.pread(descriptor, size, position)
    except OSError as error:
        raise StorageError(f"read of {size} bytes at {position} failed: {error}") from error


class FileHandle:
    """An open file descriptor shared by a segment and the regions read from it.

    Invariant: ``references >= 0``; the descriptor is open iff ``references > 0``.
    """

    __slots__ = ("_lock", "descriptor", "path", "references", "truncations")

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self.descriptor = descriptor
        self.references = 1  # the opener's reference
        self.truncations = 0
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, create: bool) -> FileHandle:
        """Open ``path`` read-write in append mode.  Raises StorageError."""
        flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        try:
            descriptor = os.open(path, flags, 0o644)
        except OSError as error:
            raise StorageError(f"cannot open {path}: {error}") from error
        return cls(path, descriptor)

    @property
    def is_open(self) -> bool:
        return self.references > 0

    def acquire(self) -> FileHandle:
        """Take one more reference.  The handle must still be open."""
        with self._lock:
            assert self.references > 0, f"acquire on closed handle {self.path}"
            self.references += 1
        return self

    def release(self) -> None:
        """Drop one reference; the last one closes the descriptor.

        Raises StorageError if closing fails (the descriptor is gone either way).
        """
        with self._lock:
            assert self.references > 0, f"release on closed handle {self.path}"
            self.references -= 1
            closing = self.references == 0
        if closing:
            try:
                os.close(self.descriptor)
            except OSError as error:
                raise StorageError(f"cannot close {self.path}: {error}") from error

    def __repr__(self) -> str:
        return f"FileHandle({self.path.name}, fd={self.descriptor}, refs={self.references})"


def _release_quietly(handle: FileHandle) -> None:
    # Safety net for a region its reader forgot to release (garbage collected).
    # Close errors cannot be raised from a finalizer; the fd is gone either way.
    if handle.is_open:
        try:
            handle.release()
        except StorageError:
            return


class FileRegion:
    """A byte range of one segment file holding whole batches, for sending as is.

    ``descriptor``, ``position`` and ``length`` are what ``os.sendfile`` needs.
    ``base_offset`` is the first batch's base offset and ``next_offset`` the offset
    just after the last batch in the region (the next fetch position).  An empty
    region (``length == 0``) has no file.

    The region holds a reference on the file: call :meth:`release` (or use it as a
    context manager) when sent.  A forgotten region is released when collected.
    """

    __slots__ = (
        "__weakref__",
        "_finalizer",
        "_truncations",
        "base_offset",
        "handle",
        "length",
        "next_offset",
        "position",
    )

    def __init__(
        self,
        handle: FileHandle | None,
        position: int,
        length: int,
        base_offset: int,
        next_offset: int,
    ) -> None:
        assert length >= 0 and position >= 0, (position, length)
        assert (handle is None) == (length == 0), "only an empty region has no file"
        assert next_offset >= base_offset, (base_offset, next_offset)
        self.handle = handle.acquire() if handle is not None else None
        self.position = position
        self.length = length
        self.base_offset = base_offset
        self.next_offset = next_offset
        self._truncations = handle.truncations if handle is not None else 0
        self._finalizer = (
            weakref.finalize(self, _release_quietly, self.handle) if self.handle else None
        )

    @classmethod
    def empty(cls, offset: int) -> FileRegion:
        """The region returned for a read at the log end."""
        return cls(None, 0, 0, offset, offset)

    @property
    def descriptor(self) -> int:
        assert self.handle is not None and self.handle.is_open, "region has no open file"
        return self.handle.descriptor

    def is_intact(self) -> bool:
        """False if the file was truncated since this region was handed out."""
        return self.handle is None or self.handle.truncations == self._truncations

    def read_bytes(self) -> bytes:
        """The region's bytes (a copy into Python, for callers that need them).

        Raises StorageError on an I/O error or when the file was truncated under the
        region (its bytes may no longer be the batches it was created for).
        """
        if self.handle is None:
            return b""
        data = read_exactly(self.descriptor, self.position, self.length)
        if len(data) != self.length or not self.is_intact():
            raise StorageError(
                f"{self.handle.path.name}: region at {self.position} was truncated while read"
            )
        return data

    def send_blocking(self, out_descriptor: int) -> int:
        """``os.sendfile`` the whole region to a *blocking* descriptor; returns bytes
        sent (short only if the file was truncated).  For tools, tests and benches;
        the server drives sendfile itself on its non-blocking sockets.  Each call
        sends at least a byte or ends the loop, so it runs at most ``length`` times.

        Raises StorageError on an I/O error.
        """
        sent = 0
        while sent < self.length:
            try:
                count = os.sendfile(
                    out_descriptor, self.descriptor, self.position + sent, self.length - sent
                )
            except OSError as error:
                raise StorageError(f"sendfile failed: {error}") from error
            if count == 0:
                break
            sent += count
        return sent

    def release(self) -> None:
        """Give the file reference back.  Idempotent."""
        if self._finalizer is not None and self._finalizer.detach() is not None:
            assert self.handle is not None
            self.handle.release()

    def __enter__(self) -> FileRegion:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        name = self.handle.path.name if self.handle else "-"
        return (
            f"FileRegion({name}, position={self.position}, length={self.length}, "
            f"offsets=[{self.base_offset}, {self.next_offset}))"
        )


class CachedRegion(FileRegion):
    """The batches of a log's latest append, kept in memory (see Log.read): read
    without a system call, holding no file reference (release is a no-op).

    It watches the segment file they were written to: once that file is truncated
    (replication cutting a divergent tail) the bytes may no longer be the log's,
    and :meth:`read_bytes` raises StorageError, as for a file region.  Never sent
    by ``os.sendfile``: the sender writes :meth:`read_bytes` instead."""

    __slots__ = ("_data", "_watched")

    def __init__(
        self,
        data: bytes,
        base_offset: int,
        next_offset: int,
        watched: FileHandle,
        truncations: int,
    ) -> None:
        assert data and next_offset > base_offset, (len(data), base_offset, next_offset)
        self.handle = None
        self.position = 0
        self.length = len(data)
        self.base_offset = base_offset
        self.next_offset = next_offset
        self._finalizer = None
        self._data = data
        self._watched = watched
        self._truncations = truncations

    def is_intact(self) -> bool:
        return self._watched.truncations == self._truncations

    def read_bytes(self) -> bytes:
        if not self.is_intact():
            raise StorageError(
                f"{self._watched.path.name}: batches at offset {self.base_offset} "
                "were truncated before they were sent"
            )
        return self._data

    def __repr__(self) -> str:
        return (
            f"CachedRegion({self._watched.path.name}, length={self.length}, "
            f"offsets=[{self.base_offset}, {self.next_offset}))"
        )
