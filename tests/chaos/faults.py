"""Faults for the chaos cluster: network partitions with nftables, a full disk on
a small tmpfs, and helpers that tell why a fault cannot run here.

**Partitions.**  :class:`Partitioner` owns one nftables table,
``inet distributary_chaos_<pid>``, with one ``output`` chain (loopback packets
cross the output hook once, so one chain sees both directions).  ``isolate``
adds rules dropping every packet between a broker's address and the other
brokers' addresses, and/or between it and etcd's client port, in both
directions; clients connect from 127.0.0.1 to the broker's port and are not
matched, so they keep their connections as in Jepsen.  ``heal`` flushes the
chain; ``close`` deletes the table.  At start, tables left by a run that died
(``distributary_chaos_<pid>`` of a pid no longer alive) are deleted.  Use it as a
context manager: the table is deleted in a ``finally``, whatever happened.

**Full disk.**  :class:`SmallDisk` mounts a tmpfs of a given size over a
(still empty) data dir before the broker starts; ``fill`` writes a filler file
until ENOSPC, ``unfill`` deletes it; leaving the context unmounts (lazily, if a
process still holds a file there).

``partition_unavailable()`` / ``mount_unavailable()`` return the reason these
cannot run here (not root, nft absent, mount refused), or None.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Final

TABLE_PREFIX: Final = "distributary_chaos_"
CHAIN: Final = "output"
NFT_TIMEOUT_S: Final = 10.0
MOUNT_TIMEOUT_S: Final = 10.0
FILLER_NAME: Final = "chaos-filler"
FILL_CHUNK_BYTES: Final = 1 << 20
# A tmpfs larger than this is no small disk: fill() then refuses to run.
FILL_BYTES_MAX: Final = 4 << 30


class FaultError(Exception):
    """A fault could not be applied or removed (the command's output says why)."""


def _run(command: list[str], timeout_s: float) -> str:
    """Run a command; its stdout.  Raises FaultError with its stderr on failure."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise FaultError(f"{' '.join(command)}: {error}") from error
    if done.returncode != 0:
        raise FaultError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def partition_unavailable() -> str | None:
    """Why nftables partitions cannot run here, or None when they can."""
    if shutil.which("nft") is None:
        return "nft (nftables) is not installed: run scripts/install-system-packages.sh"
    if os.geteuid() != 0:
        return "nftables partitions need root"
    return None


def mount_unavailable() -> str | None:
    """Why a tmpfs cannot be mounted here, or None when it can (checked by trying)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not installed"
    return None


def nft_tables() -> list[str]:
    """Names of the ``inet`` tables that exist now."""
    listing = _run(["nft", "list", "tables", "inet"], NFT_TIMEOUT_S)
    return re.findall(r"^table inet (\S+)", listing, flags=re.MULTILINE)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftover_tables() -> list[str]:
    """Delete the tables of chaos runs whose process is gone; their names."""
    removed = []
    for name in nft_tables():
        suffix = name.removeprefix(TABLE_PREFIX)
        if name != suffix and suffix.isdigit() and not _pid_alive(int(suffix)):
            _run(["nft", "delete", "table", "inet", name], NFT_TIMEOUT_S)
            removed.append(name)
    return removed


class Partitioner:
    """Drops traffic between addresses with an nftables table of our own (module
    docstring).  ``etcd_port`` is etcd's client port on ``etcd_host``."""

    def __init__(self, etcd_host: str, etcd_port: int) -> None:
        self.etcd_host = etcd_host
        self.etcd_port = etcd_port
        self.table = f"{TABLE_PREFIX}{os.getpid()}"
        self.rules: list[str] = []
        self._open = False

    def __enter__(self) -> Partitioner:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Remove leftovers of dead runs, create our table and chain.  Raises FaultError."""
        remove_leftover_tables()
        if self.table in nft_tables():
            _run(["nft", "delete", "table", "inet", self.table], NFT_TIMEOUT_S)
        _run(["nft", "add", "table", "inet", self.table], NFT_TIMEOUT_S)
        self._open = True
        _run(
            [
                "nft",
                "add chain inet "
                f"{self.table} {CHAIN} {{ type filter hook output priority 0 ; policy accept ; }}",
            ],
            NFT_TIMEOUT_S,
        )

    def _drop(self, match: str) -> None:
        _run(["nft", f"add rule inet {self.table} {CHAIN} {match} drop"], NFT_TIMEOUT_S)
        self.rules.append(match)

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between addresses ``a`` and ``b``, both ways."""
        self._drop(f"ip saddr {a} ip daddr {b}")
        self._drop(f"ip saddr {b} ip daddr {a}")

    def cut_from_etcd(self, host: str) -> None:
        """Drop every packet between ``host`` and etcd's client port, both ways."""
        port = self.etcd_port
        self._drop(f"ip saddr {host} ip daddr {self.etcd_host} tcp dport {port}")
        self._drop(f"ip saddr {self.etcd_host} tcp sport {port} ip daddr {host}")

    def isolate(self, host: str, others: list[str], *, from_etcd: bool) -> None:
        """Cut ``host`` from each of ``others`` and, when ``from_etcd``, from etcd."""
        for other in others:
            self.cut(host, other)
        if from_etcd:
            self.cut_from_etcd(host)

    def heal(self) -> None:
        """Remove every rule (the table stays until close).  Raises FaultError."""
        if self._open:
            _run(["nft", "flush", "chain", "inet", self.table, CHAIN], NFT_TIMEOUT_S)
        self.rules.clear()

    def listing(self) -> str:
        """``nft list table`` of our table ("" when it does not exist)."""
        if self.table not in nft_tables():
            return ""
        return _run(["nft", "list", "table", "inet", self.table], NFT_TIMEOUT_S)

    def close(self) -> None:
        """Delete the table (every rule with it).  Raises FaultError."""
        self.rules.clear()
        if self._open or self.table in nft_tables():
            self._open = False
            _run(["nft", "delete", "table", "inet", self.table], NFT_TIMEOUT_S)


def is_mount_point(path: Path) -> bool:
    return os.path.ismount(path)


class SmallDisk:
    """A tmpfs of ``size_bytes`` mounted over ``path`` (an empty directory)."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.mounted = False

    def __enter__(self) -> SmallDisk:
        self.mount()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.unmount()

    def mount(self) -> None:
        """Raises FaultError (mount refused, or ``path`` is not an empty directory)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if any(self.path.iterdir()):
            raise FaultError(
                f"{self.path} is not empty: mount a small disk before the broker starts"
            )
        options = f"size={self.size_bytes},mode=0755"
        _run(["mount", "-t", "tmpfs", "-o", options, "chaos-disk", str(self.path)], MOUNT_TIMEOUT_S)
        self.mounted = True

    @property
    def filler(self) -> Path:
        return self.path / FILLER_NAME

    def fill(self) -> int:
        """Write the filler file until the disk is full; the bytes written.
        Raises FaultError (the disk is larger than FILL_BYTES_MAX)."""
        assert self.mounted, "mount() first"
        if self.size_bytes > FILL_BYTES_MAX:
            raise FaultError(f"a {self.size_bytes} B disk is too large to fill")
        chunk = b"\0" * FILL_CHUNK_BYTES
        written = 0
        with self.filler.open("ab", buffering=0) as out:
            for _ in range(self.size_bytes // FILL_CHUNK_BYTES + 2):
                try:
                    written += out.write(chunk)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
        # The last bytes: what is left is smaller than a chunk.
        with self.filler.open("ab", buffering=0) as out:
            for _ in range(FILL_CHUNK_BYTES):
                try:
                    written += out.write(b"\0" * 4096)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
        return written

    def unfill(self) -> None:
        """Delete the filler file: the disk has room again."""
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        """Unmount (lazily when busy).  Raises FaultError when it stays mounted."""
        if not self.mounted and not is_mount_point(self.path):
            return
        try:
            _run(["umount", str(self.path)], MOUNT_TIMEOUT_S)
        except FaultError:
            _run(["umount", "--lazy", str(self.path)], MOUNT_TIMEOUT_S)
        self.mounted = False
