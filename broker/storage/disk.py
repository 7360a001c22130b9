"""The storage layer's door to durability: every fsync goes through :data:`current`.

A write reaches the page cache; only an fsync of the file makes its bytes survive a
power cut, and only an fsync of the directory makes a file's creation, rename or
removal survive one.  The storage layer makes every such call through the
:class:`Disk` object in the module attribute :data:`current` (looked up at each
call, never imported by name), so a test can swap in a simulated disk that
remembers what each fsync made durable and, on a simulated power cut, puts every
file back to that state (tests/unit/storage/simulated_disk.py).

Writes, reads, truncations, renames and unlinks call ``os`` directly: a power cut
keeps or loses them according to the next fsync, which is all the simulation needs
to see.  So the append path makes no call through this module; a flush makes one per
file it syncs, next to a system call that costs far more.

Concurrency: stateless; flushes call it from worker threads.

For tests of real broker processes only, :func:`install_test_disk` (called at
``distributary serve``'s start) swaps in a :class:`SwitchedFailingDisk` when the
environment variable ``DISTRIBUTARY_TEST_FAIL_FSYNC_SWITCH`` names a file: while
that file exists, every fsync of a file whose path contains the text it holds
fails with ENOSPC (say ``/topic-0/`` with the topic's flush policy every_append: a
full disk under that partition).  It is no user setting and is not documented
as one.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from client.errors import StorageError


class Disk:
    """The real disk: plain ``os.fsync`` calls."""

    def fsync(self, descriptor: int) -> None:
        """Make the file's written bytes and size durable.  Raises OSError."""
        os.fsync(descriptor)

    def fsync_path(self, path: Path) -> None:
        """fsync the file at ``path`` through a descriptor of its own (the writer's
        may be closed concurrently); a file already removed is skipped (it is being
        deleted).  Raises OSError."""
        try:
            descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return
        try:
            self.fsync(descriptor)
        finally:
            os.close(descriptor)

    def fsync_directory(self, directory: Path) -> None:
        """Make the directory's entries (creations, renames, unlinks) durable.

        Raises StorageError when the directory cannot be opened or synced.
        """
        try:
            descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise StorageError(f"cannot open directory {directory}: {error}") from error
        try:
            os.fsync(descriptor)
        except OSError as error:
            # Some file systems refuse fsync on a directory; that is not a lost write.
            if error.errno not in (errno.EINVAL, errno.EBADF):
                raise StorageError(f"cannot fsync directory {directory}: {error}") from error
        finally:
            os.close(descriptor)


# The disk every storage module syncs through.  Tests replace it (monkeypatch) with
# a simulation; production code only reads it.
current: Disk = Disk()


# For tests only (module docstring): a switch file that makes fsyncs fail.
TEST_FAIL_FSYNC_SWITCH_ENV: Final = "DISTRIBUTARY_TEST_FAIL_FSYNC_SWITCH"


class SwitchedFailingDisk(Disk):
    """For tests only: while ``switch`` exists, an fsync of a file whose path holds
    the switch's text raises ENOSPC (Linux: the path is read from /proc)."""

    def __init__(self, switch: Path) -> None:
        self.switch = switch

    def fsync(self, descriptor: int) -> None:
        """Raises OSError (ENOSPC while switched on for this file)."""
        try:
            fragment = self.switch.read_text().strip()
        except OSError:
            fragment = ""
        if fragment and fragment in os.readlink(f"/proc/self/fd/{descriptor}"):
            raise OSError(errno.ENOSPC, "No space left on device (test switch)")
        os.fsync(descriptor)


def install_test_disk(environ: Mapping[str, str]) -> None:
    """Swap in a SwitchedFailingDisk when ``environ`` names a switch file (tests of
    broker processes only)."""
    global current
    switch = environ.get(TEST_FAIL_FSYNC_SWITCH_ENV)
    if switch:
        current = SwitchedFailingDisk(Path(switch))
