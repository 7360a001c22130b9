"""Start a throwaway ``distributary serve`` for a benchmark: 127.0.0.1, a free port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Final

HOST: Final = "127.0.0.1"
START_TIMEOUT_S: Final = 20.0


def start_broker(data_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start a broker on a free loopback port with ``data_dir``; return the process
    and its "HOST:PORT" once it accepts connections.  Raises RuntimeError."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "broker", "serve", "--listen", f"{HOST}:{port}"),
            *("--data-dir", data_dir, "--log-format", "json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return process, f"{HOST}:{port}"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"broker did not accept connections within {START_TIMEOUT_S} s")
