"""Whether the broker's previous run stopped cleanly: a marker file in the data dir.

``<data_dir>/.clean-shutdown`` (empty) exists only between a graceful stop and the
next start: :func:`write_marker` writes it (atomically and durably) as the last
step of a close that closed every partition cleanly, and :func:`take_marker`,
run right after the data dir is locked, removes it (durably, so a crash after
the start is never mistaken for a clean stop) and says whether it was there.

A data dir holding nothing yet (a new broker) counts as a clean start: it has
nothing it could have lost.  The cluster uses the answer for KIP-966: a broker
that comes back after an unclean shutdown (a crash, a kill, a power loss) may
have lost records it had acknowledged as a follower, so it must not stay
eligible to lead (BrokerRegistration.clean_shutdown).

Blocking (fsyncs): callers on the event loop run these in a worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from broker.storage.atomic_file import TEMP_SUFFIX, remove_durably, write_atomic
from client.errors import StorageError

MARKER_FILE: Final = ".clean-shutdown"


def take_marker(data_dir: Path, ignored: tuple[str, ...] = ()) -> bool:
    """Remove the marker and return whether the previous run stopped cleanly: the
    marker was there, or the data dir holds nothing but ``ignored`` names (the
    lock file).  Raises StorageError."""
    if remove_durably(data_dir / MARKER_FILE):
        return True
    try:
        names = {path.name for path in data_dir.iterdir()}
    except OSError as error:
        raise StorageError(f"cannot list {data_dir}: {error}") from error
    return not names - {*ignored, MARKER_FILE + TEMP_SUFFIX}


def write_marker(data_dir: Path) -> None:
    """Record a clean stop (the last step of a graceful close).  Raises StorageError."""
    write_atomic(data_dir / MARKER_FILE, b"")
