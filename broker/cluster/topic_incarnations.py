"""Which incarnation of each topic a member's local logs belong to.

A topic deleted and created again under the same name while a broker was down is
a new topic: the broker must not serve the old one's records as the new one's.
The cluster tells incarnations apart by the ``create_revision`` of ``topics/T``;
each member remembers, in ``<data_dir>/cluster-topics.json`` (written atomically),
the revision its local logs of T were opened for.  When the two differ, the member
removes its logs of T and opens fresh ones.  Logs with no remembered revision (the
file was lost) are adopted as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import msgspec

from broker.storage.atomic_file import write_atomic
from client.errors import StorageError

INCARNATIONS_FILE: Final = "cluster-topics.json"


class TopicIncarnations:
    """The remembered ``create_revision`` per local topic (module docstring).  The
    methods block on the file: call them from a worker thread."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / INCARNATIONS_FILE
        self.revisions: dict[str, int] = {}

    def load(self) -> None:
        """Raises StorageError when the file exists but is unreadable."""
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as error:
            raise StorageError(f"cannot read {self._path}: {error.strerror}") from error
        try:
            self.revisions = msgspec.json.decode(data, type=dict[str, int])
        except msgspec.DecodeError as error:
            raise StorageError(f"{self._path} is not a valid topics file: {error}") from error

    def save(self, revisions: dict[str, int]) -> None:
        """Replace the remembered revisions.  Raises StorageError."""
        if revisions == self.revisions:
            return
        write_atomic(self._path, msgspec.json.encode(dict(sorted(revisions.items()))))
        self.revisions = dict(revisions)

    def is_stale(self, topic: str, created_revision: int) -> bool:
        """Whether the local logs of ``topic`` belong to another incarnation."""
        known = self.revisions.get(topic)
        return known is not None and known != created_revision
