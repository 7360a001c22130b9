"""Durable file creation: write a temp file, fsync it, rename it over the target, fsync
the directory.

A reader (or a crash) sees either the old file or the complete new one, never a
torn mix.  POSIX rename is atomic within one file system; the directory fsync makes
the rename itself survive a power loss.  Used for the recovery checkpoint, the
clean-shutdown marker and any other small metadata file of the storage layer.

Callers run these from a worker thread when they are on the event loop: every
function here blocks on fsync.  The fsyncs go through :mod:`disk` (a simulated
power cut in tests sees them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from broker.storage import disk, file_handle
from client.errors import StorageError

TEMP_SUFFIX: Final = ".tmp"


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, rename, fsync dir).

    With ``durable=False`` the fsyncs are skipped (the rename stays atomic against a
    process crash, not against a power loss).  Raises StorageError on any OSError;
    the temp file is removed on failure.
    """
    temp_path = path.with_name(path.name + TEMP_SUFFIX)
    try:
        descriptor = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            file_handle.write_all(descriptor, data)
            if durable:
                disk.current.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temp_path, path)
    except OSError as error:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        except OSError as cleanup_error:
            error.add_note(f"also failed to remove {temp_path}: {cleanup_error}")
        raise StorageError(f"cannot write {path}: {error}") from error
    if durable:
        disk.current.fsync_directory(path.parent)


def remove_durably(path: Path, *, durable: bool = True) -> bool:
    """Remove ``path`` if it exists and fsync its directory.  Returns whether it existed.

    Raises StorageError when the file exists but cannot be removed.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise StorageError(f"cannot remove {path}: {error}") from error
    if durable:
        disk.current.fsync_directory(path.parent)
    return True
