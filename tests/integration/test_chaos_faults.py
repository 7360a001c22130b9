"""The fault tools of tests/chaos/faults.py on their own: nftables rules really
cut traffic and are always removed (also after an exception, and when a run
died and left its table), and a small disk fills, empties and is unmounted."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.faults import (
    TABLE_PREFIX,
    Partitioner,
    SmallDisk,
    is_mount_point,
    mount_unavailable,
    nft_tables,
    partition_unavailable,
    remove_leftover_tables,
)

A, B = "127.0.0.2", "127.0.0.3"
CONNECT_TIMEOUT_S = 1.0


class Boom(Exception):
    pass


@pytest.fixture
def nft() -> None:
    reason = partition_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def mounts() -> None:
    reason = mount_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on B; its port."""
    with socket.socket() as server:
        server.bind((B, 0))
        server.listen(16)
        yield int(server.getsockname()[1])


def connects(source: str, port: int) -> bool:
    """Whether a connection from ``source`` to B:port is accepted in time."""
    with socket.socket() as client:
        client.bind((source, 0))
        client.settimeout(CONNECT_TIMEOUT_S)
        try:
            client.connect((B, port))
        except OSError:
            return False
        return True


def test_cut_drops_traffic_both_ways_and_heal_restores_it(nft: None, listener: int) -> None:
    """Proves a cut between A and B stops a connection from A to B (and not from
    another address), and heal lets it through again; the table is gone after."""
    with Partitioner("127.0.0.1", 1) as partitioner:
        assert connects(A, listener)
        partitioner.cut(A, B)
        assert not connects(A, listener)
        assert connects("127.0.0.4", listener)
        partitioner.heal()
        assert connects(A, listener)
        table = partitioner.table
    assert table not in nft_tables()


def test_cut_from_etcd_drops_only_that_port(nft: None, listener: int) -> None:
    """Proves cut_from_etcd drops traffic between a host and etcd's port only."""
    with Partitioner(B, listener) as partitioner:
        partitioner.cut_from_etcd(A)
        assert not connects(A, listener)
        assert "tcp dport" in partitioner.listing()
    with socket.socket() as other:
        other.bind((B, 0))
        other.listen(1)
        with Partitioner(B, listener) as partitioner:
            partitioner.cut_from_etcd(A)
            assert connects(A, int(other.getsockname()[1]))


def test_table_is_removed_after_an_exception(nft: None) -> None:
    """Proves the rules go away when the body raises."""
    table = ""
    with pytest.raises(Boom), Partitioner("127.0.0.1", 1) as partitioner:
        table = partitioner.table
        partitioner.cut(A, B)
        assert table in nft_tables()
        raise Boom
    assert table and table not in nft_tables()


def test_leftover_table_of_a_dead_run_is_removed(nft: None) -> None:
    """Proves a table named after a pid that no longer runs is deleted at start,
    and one of a live process is kept."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    leftover = f"{TABLE_PREFIX}{int(dead.stdout)}"
    subprocess.run(["nft", "add", "table", "inet", leftover], check=True)
    try:
        with Partitioner("127.0.0.1", 1) as partitioner:
            assert leftover not in nft_tables()
            assert partitioner.table in nft_tables()
            assert remove_leftover_tables() == []
    finally:
        subprocess.run(["nft", "delete", "table", "inet", leftover], capture_output=True)
    assert f"{TABLE_PREFIX}{os.getpid()}" not in nft_tables()


def test_small_disk_fills_empties_and_unmounts(mounts: None, tmp_path: Path) -> None:
    """Proves a filled small disk refuses writes (ENOSPC), accepts them again
    after unfill, and is unmounted on exit, also after an exception."""
    path = tmp_path / "data"
    with pytest.raises(Boom), SmallDisk(path, 4 << 20) as disk:
        assert is_mount_point(path)
        assert disk.fill() > 0
        with pytest.raises(OSError) as refused, (path / "x").open("wb", buffering=0) as out:
            out.write(b"y" * 8192)
        assert refused.value.errno == errno.ENOSPC
        disk.unfill()
        (path / "x").write_bytes(b"y" * 8192)
        raise Boom
    assert not is_mount_point(path)
    assert list(path.iterdir()) == []
