"""A simulated disk for power-cut tests: it remembers what each fsync made durable and,
on :meth:`SimulatedDisk.power_cut`, puts every file under its root back to that state.

It replaces ``broker.storage.disk.current`` (the door every storage fsync goes
through), so the storage code under test runs unchanged.  The model is a strict but
legal outcome of a power cut on a POSIX file system:

* A file's durable contents are what it held at its last fsync (nothing if never
  fsynced).  Writes, truncations and growth since then are lost.
* A directory's durable entries are the files it listed at its last fsync (none if
  never fsynced).  Creations, renames and unlinks since then are undone: a file
  renamed or unlinked since comes back under its durable name with its durable
  contents; a file created since is gone.
* With ``torn=`` a random generator, each file whose contents grew by appending
  since its last fsync keeps a random prefix of what was appended (pages written
  back in order before the power went).

Files are tracked by inode.  Every inode the simulation remembers is held open
("pinned") until the next power cut, so the kernel cannot reuse its number for a
new file meanwhile.  Only regular files are tracked; directories themselves are
kept.  No real fsync is made: the simulation decides what survives.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

from broker.storage.disk import Disk
from client.errors import StorageError

FileKey = tuple[int, int]  # (st_dev, st_ino)


class SimulatedDisk(Disk):
    """Tracks durable file contents and directory entries under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self.fsyncs = 0
        self._lock = threading.Lock()
        self._contents: dict[FileKey, bytes] = {}
        self._entries: dict[str, dict[str, FileKey]] = {}
        self._pins: dict[FileKey, int] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._remember_everything()

    # -- the Disk interface ---------------------------------------------------------------

    def fsync(self, descriptor: int) -> None:
        """Remember the file's current contents as durable."""
        with self._lock:
            self.fsyncs += 1
            key, pin = self._pin_descriptor(descriptor)
            self._contents[key] = _read_whole(pin)

    def fsync_directory(self, directory: Path) -> None:
        """Remember the directory's current files (by inode) as its durable entries."""
        with self._lock:
            self.fsyncs += 1
            path = os.path.realpath(directory)
            try:
                self._entries[path] = self._list_files(path)
            except OSError as error:
                raise StorageError(f"cannot fsync directory {directory}: {error}") from error

    # -- the power cut --------------------------------------------------------------------

    def power_cut(self, *, torn: random.Random | None = None) -> None:
        """Put every directory under the root back to its durable entries, each file
        to its durable contents (plus, with ``torn``, a random prefix of what was
        appended since).  Whatever is on disk afterwards counts as durable."""
        with self._lock:
            for directory, _subdirectories, names in os.walk(self.root):
                durable = self._entries.get(directory, {})
                targets = {
                    name: self._surviving_contents(key, torn) for name, key in durable.items()
                }
                for name in names:
                    path = os.path.join(directory, name)
                    if os.path.isfile(path) and not os.path.islink(path):
                        os.unlink(path)
                for name, data in sorted(targets.items()):
                    with open(os.path.join(directory, name), "wb") as restored:
                        restored.write(data)
            self._unpin_all()
            self._contents.clear()
            self._entries.clear()
            self._remember_everything()

    def close(self) -> None:
        """Release the pinned inodes."""
        with self._lock:
            self._unpin_all()

    # -- bookkeeping ----------------------------------------------------------------------

    def _surviving_contents(self, key: FileKey, torn: random.Random | None) -> bytes:
        durable = self._contents.get(key, b"")
        if torn is None:
            return durable
        current = _read_whole(self._pins[key])
        if len(current) <= len(durable) or not current.startswith(durable):
            return durable
        return current[: len(durable) + torn.randint(0, len(current) - len(durable))]

    def _pin_descriptor(self, descriptor: int) -> tuple[FileKey, int]:
        status = os.fstat(descriptor)
        key = (status.st_dev, status.st_ino)
        if key not in self._pins:
            # A descriptor of our own, readable whatever mode the caller opened with.
            self._pins[key] = os.open(f"/proc/self/fd/{descriptor}", os.O_RDONLY)
        return key, self._pins[key]

    def _list_files(self, directory: str) -> dict[str, FileKey]:
        files: dict[str, FileKey] = {}
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            status = os.stat(path, follow_symlinks=False)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            key = (status.st_dev, status.st_ino)
            if key not in self._pins:
                self._pins[key] = os.open(path, os.O_RDONLY)
            files[name] = key
        return files

    def _remember_everything(self) -> None:
        """Count everything under the root as durable (at start and after a cut)."""
        for directory, _subdirectories, _names in os.walk(self.root):
            self._entries[directory] = self._list_files(directory)
            for key in self._entries[directory].values():
                self._contents[key] = _read_whole(self._pins[key])

    def _unpin_all(self) -> None:
        pins, self._pins = self._pins, {}
        for descriptor in pins.values():
            os.close(descriptor)


def _read_whole(descriptor: int) -> bytes:
    size = os.fstat(descriptor).st_size
    return os.pread(descriptor, size, 0) if size else b""
