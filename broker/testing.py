"""A real ``distributary serve`` process for tests: ours, and our users' (the pytest
plugin in broker/pytest_plugin.py builds its fixtures on it).

:class:`BrokerProcess` starts the broker as a subprocess of the running
interpreter (``python -m broker serve``) on 127.0.0.1 (or on ``host``, e.g.
127.0.0.2 for another broker of a cluster), in a work directory that holds its
data dir, its log file (JSON lines) and, if given, its TOML config file.
It listens on port 0 the first time (so parallel tests never collide) and on the
port it got after that, so clients keep their address across restarts; its
metrics endpoint likewise (``metrics_address``; unless the test sets
``metrics_listen`` itself).  ``start`` waits (at most START_TIMEOUT_S) for the
"listening" log line and for the port to accept a connection; on failure the
error shows the broker's output.  The
methods block: call them from sync tests, from async tests directly (they only
sleep briefly), or through a worker thread.
"""

from __future__ import annotations

import json
import os
import signal as signals
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

# Seconds to wait for a starting broker to listen, and for a stopping one to exit:
# far above the usual (0.2-0.5 s to start) so a loaded CI machine does not fail a test.
START_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 15.0


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: Mapping[str, Any]) -> str:
    """Top-level keys and one level of tables, enough for the broker config."""
    lines = [
        f"{key} = {_toml_value(value)}"
        for key, value in config.items()
        if not isinstance(value, Mapping)
    ]
    for table, values in config.items():
        if isinstance(value := values, Mapping):
            lines.append(f"\n[{table}]")
            lines.extend(f"{key} = {_toml_value(item)}" for key, item in value.items())
    return "\n".join(lines) + "\n"


class BrokerProcess:
    """One ``distributary serve`` subprocess (see the module docstring).

    .host, .port, .address ("127.0.0.1:PORT"), .metrics_address ("127.0.0.1:PORT"
    of GET /metrics, None when the broker serves none), .data_dir, .process (Popen),
    .log_path (the broker's stderr and stdout: JSON log lines)
    .start(), .stop(signal=SIGTERM, timeout_s) -> exit code, .kill(), .restart()
    .logs(), .log_events(), .wait_for_log(event)
    """

    def __init__(
        self,
        work_dir: Path,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = 0
        self.metrics_host = host
        self.metrics_port: int | None = 0  # None: the broker serves no metrics
        self.work_dir = work_dir
        self.data_dir = work_dir / "data"
        self.log_path = work_dir / "broker.log"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = work_dir / "broker.toml"
            self.config_path.write_text(to_toml(config))
        self.extra_env = dict(env or {})
        self.extra_args = list(args)
        # The test chose the metrics address (or "off"): leave it to the broker.
        self._metrics_chosen = (
            "--metrics-listen" in self.extra_args
            or "metrics_listen" in (config or {})
            or "DISTRIBUTARY_METRICS_LISTEN" in self.extra_env
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_address(self) -> str | None:
        """``HOST:PORT`` of the metrics endpoint (GET /metrics), once started."""
        if self.metrics_port is None:
            return None
        return f"{self.metrics_host}:{self.metrics_port}"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "broker", "serve"]
        command += ["--listen", f"{self.host}:{self.port}", "--data-dir", str(self.data_dir)]
        command += ["--log-format", "json"]
        if not self._metrics_chosen and self.metrics_port is not None:
            command += ["--metrics-listen", f"{self.metrics_host}:{self.metrics_port}"]
        if self.config_path is not None:
            command += ["--config", str(self.config_path)]
        return command + self.extra_args

    def start(self) -> None:
        """Start the process and wait until it accepts connections."""
        assert self.process is None or self.process.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTARY_")}
        env.update(self.extra_env)
        with self.log_path.open("ab") as log_file:
            self._log_offset = log_file.tell()
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                cwd=self.work_dir,
                env=env,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"broker exited with {self.process.returncode} before listening:\n"
                    + self.logs(since_start=True)
                )
            events = self.log_events(since_start=True)
            for event in events:
                if event.get("event") == "listening":
                    self.port = int(event["port"])
                    # Logged before "listening" when the broker serves metrics.
                    metrics = [e for e in events if e.get("event") == "serving metrics"]
                    self.metrics_port = int(metrics[-1]["port"]) if metrics else None
                    if metrics:
                        self.metrics_host = str(metrics[-1]["host"])
                    if self._accepts_connections():
                        return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"broker did not listen within {START_TIMEOUT_S} s:\n" + self.logs(since_start=True)
        )

    def _accepts_connections(self) -> bool:
        # Connect, say goodbye and wait for the broker to close its side, so the probe
        # no longer counts against connections_max when the test starts.
        try:
            with socket.create_connection((self.host, self.port), timeout=2.0) as probe:
                probe.shutdown(socket.SHUT_WR)
                return probe.recv(1) == b""
        except OSError:
            return False

    def stop(self, signal: int = signals.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send ``signal`` and wait for the exit code (SIGKILL after ``timeout_s``)."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process is not None else 0
        process.send_signal(signal)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
            raise RuntimeError(
                f"broker did not exit within {timeout_s} s of signal {signal}:\n" + self.logs()
            ) from None

    def kill(self) -> None:
        """SIGKILL: no flush, no clean-shutdown marker."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Stop gracefully if running, then start on the same port and data dir."""
        self.stop()
        self.start()

    def logs(self, *, since_start: bool = False) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[self._log_offset if since_start else 0 :].decode(errors="replace")

    def log_events(self, *, since_start: bool = False) -> list[dict[str, Any]]:
        """Every JSON log line (other lines are skipped)."""
        events = []
        for line in self.logs(since_start=since_start).splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line being written right now
        return events

    def wait_for_log(self, event: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The first log line whose event is ``event``, waiting for it to appear."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for logged in self.log_events():
                if logged.get("event") == event:
                    return logged
            time.sleep(0.02)
        raise AssertionError(f"no {event!r} log line within {timeout_s} s:\n{self.logs()}")
