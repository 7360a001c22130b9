"""The cluster under test: one etcd on 127.0.0.1 and three ``distributary serve``
processes on 127.0.0.2, .3 and .4 (node ids 1-3), each with its own data dir.

Each broker listens on its own address and binds its outgoing sockets (to etcd,
and to the other brokers when it follows one) to it, so nftables rules on the
source and destination address can cut one broker off from the others or from
etcd (tests/chaos/faults.py) while clients, which connect from 127.0.0.1, keep
reaching it.  Brokers run as :class:`broker.testing.BrokerProcess` (the helper
the integration tests use); etcd as :class:`EtcdServer` below.

Operations, all blocking (call them through ``trio.to_thread.run_sync`` from
async code): ``kill`` (SIGKILL), ``pause`` / ``resume`` (SIGSTOP / SIGCONT),
``shutdown`` (SIGTERM, graceful), ``start``, ``restart``, ``wipe`` (kill, delete
the data dir, start empty), ``heal`` (resume every paused broker, start every
dead one).  ``close`` stops everything; nothing is left running after it.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from broker.cluster.local_cluster import find_etcd
from broker.testing import BrokerProcess

ETCD_HOST: Final = "127.0.0.1"
BROKER_HOSTS: Final = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PREFIX: Final = "distributary-chaos"
ETCD_START_TIMEOUT_S: Final = 15.0
ETCD_STOP_TIMEOUT_S: Final = 5.0
READY_POLL_S: Final = 0.05


class ClusterError(Exception):
    """A process of the cluster did not start or stop as it should."""


def free_port(host: str = ETCD_HOST) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class EtcdServer:
    """A one-member etcd on 127.0.0.1 with free ports and its own data dir."""

    def __init__(self, directory: Path) -> None:
        self.binary = find_etcd()
        self.data_dir = directory / "etcd-data"
        self.log_path = directory / "etcd.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{ETCD_HOST}:{self.client_port}"

    def start(self) -> None:
        """Start and wait until it answers.  Raises ClusterError."""
        peer = f"http://{ETCD_HOST}:{self.peer_port}"
        command = [
            str(self.binary),
            "--name=chaos",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=chaos={peer}",
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--logger=zap",
            "--log-level=error",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + ETCD_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClusterError(
                    f"etcd exited with {self.process.returncode}; see {self.log_path}"
                )
            if self._answers():
                return
            time.sleep(READY_POLL_S)
        self.stop()
        raise ClusterError(f"etcd did not answer within {ETCD_START_TIMEOUT_S} s")

    def _answers(self) -> bool:
        request = urllib.request.Request(
            self.client_url + "/v3/kv/range", data=json.dumps({"key": "AA=="}).encode()
        )
        try:
            with urllib.request.urlopen(request, timeout=0.5):
                return True
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """SIGCONT (in case it was paused), SIGTERM, SIGKILL after a while."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=ETCD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=ETCD_STOP_TIMEOUT_S)


class ChaosCluster:
    """etcd and three brokers (module docstring).  ``broker_config`` is written as
    each broker's TOML config file."""

    def __init__(self, directory: Path, broker_config: Mapping[str, Any] | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.etcd = EtcdServer(directory)
        self.url = f"etcd://{ETCD_HOST}:{self.etcd.client_port}/{PREFIX}"
        self.brokers: dict[int, BrokerProcess] = {}
        self.paused: set[int] = set()
        for node_id, host in enumerate(BROKER_HOSTS, start=1):
            work_dir = directory / f"broker-{node_id}"
            work_dir.mkdir(exist_ok=True)
            (work_dir / "data").mkdir(exist_ok=True)
            self.brokers[node_id] = BrokerProcess(
                work_dir,
                broker_config,
                host=host,
                args=["--cluster", self.url, "--node-id", str(node_id)],
            )

    @property
    def node_ids(self) -> list[int]:
        return sorted(self.brokers)

    @property
    def bootstrap(self) -> str:
        """Every broker's address (the ones that have started at least once)."""
        return ",".join(b.address for b in self.brokers.values() if b.port)

    def host(self, node_id: int) -> str:
        return self.brokers[node_id].host

    def data_dir(self, node_id: int) -> Path:
        return self.brokers[node_id].data_dir

    def start(self) -> None:
        """Start etcd, then every broker.  Raises ClusterError, RuntimeError."""
        self.etcd.start()
        for node_id in self.node_ids:
            self.brokers[node_id].start()

    def running(self, node_id: int) -> bool:
        process = self.brokers[node_id].process
        return process is not None and process.poll() is None

    def pid(self, node_id: int) -> int:
        process = self.brokers[node_id].process
        assert process is not None
        return process.pid

    def kill(self, node_id: int) -> None:
        """SIGKILL (resumes it first if paused, so it dies now)."""
        self.resume(node_id)
        self.brokers[node_id].kill()

    def pause(self, node_id: int) -> None:
        """SIGSTOP: the process keeps its sockets and answers nothing."""
        if self.running(node_id):
            self.brokers[node_id].process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            self.paused.add(node_id)

    def resume(self, node_id: int) -> None:
        """SIGCONT."""
        if node_id in self.paused and self.running(node_id):
            self.brokers[node_id].process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        self.paused.discard(node_id)

    def shutdown(self, node_id: int) -> int:
        """SIGTERM and wait: the exit code.  Raises RuntimeError when it does not exit."""
        self.resume(node_id)
        return self.brokers[node_id].stop()

    def start_broker(self, node_id: int) -> None:
        """Start it (same address and data dir) unless running.  Raises RuntimeError."""
        if not self.running(node_id):
            self.brokers[node_id].start()

    def restart(self, node_id: int) -> None:
        """Graceful stop, then start."""
        self.shutdown(node_id)
        self.start_broker(node_id)

    def wipe(self, node_id: int) -> None:
        """SIGKILL, delete everything in the data dir (the directory itself stays,
        it may be a mount point), start empty."""
        self.kill(node_id)
        data = self.data_dir(node_id)
        for child in data.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        self.start_broker(node_id)

    def heal(self) -> None:
        """Resume every paused broker, start every dead one."""
        for node_id in self.node_ids:
            self.resume(node_id)
            self.start_broker(node_id)

    def close(self) -> None:
        """Stop every broker (SIGKILL when SIGTERM does not do), then etcd."""
        for node_id in self.node_ids:
            try:
                self.shutdown(node_id)
            except RuntimeError:
                self.brokers[node_id].kill()
        self.etcd.stop()

    def logs(self, node_id: int, lines: int = 40) -> str:
        """The last ``lines`` lines of a broker's log."""
        return "\n".join(self.brokers[node_id].logs().splitlines()[-lines:])
