"""The MQTT broker of the pipeline: mosquitto with the shipped config, run as a child
process that can be stopped, killed and restarted on the same port and data.

:func:`write_config` renders examples/iot/mosquitto.conf for one port and one
persistence directory (and the current user, since mosquitto started as root
otherwise drops to a ``mosquitto`` user that cannot write there).
:class:`MosquittoProcess` starts ``mosquitto -c CONFIG`` and waits until it
accepts TCP connections; ``stop`` sends SIGTERM (mosquitto then writes its
persistence file, so queued messages and sessions survive), ``kill`` SIGKILLs
it (what arrived since the last autosave is lost), ``restart`` starts it again
on the same port and directory.

The fallback where mosquitto cannot be had (:func:`run_builtin_broker`,
``mqtt-broker --builtin``) is amqtt's pure-Python MQTT 3.1.1 broker run in this
process (builtin_broker.py).  It is labelled as the fallback wherever it runs:
it keeps sessions and queued QoS 1 messages in memory only (a restart loses
what was queued) and it is about three times slower than mosquitto.  amqtt
comes with the project's ``iot`` extra; without it the command says so and
exits 1.

``python -m examples.iot mqtt-broker --port P --data-dir D`` runs mosquitto in
the foreground with that config until SIGTERM/SIGINT.
"""

from __future__ import annotations

import getpass
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Final

import click

TEMPLATE_PATH: Final = Path(__file__).with_name("mosquitto.conf")
MOSQUITTO_PATHS: Final = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_TIMEOUT_S: Final = 10.0
# The fallback broker's library (see the module docstring); demo.py looks for this.
BUILTIN_BROKER: Final = "amqtt"
STOP_TIMEOUT_S: Final = 10.0


def find_mosquitto() -> str | None:
    """The mosquitto executable, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((path for path in MOSQUITTO_PATHS if os.access(path, os.X_OK)), None)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (mosquitto cannot bind port 0 and
    report it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def write_config(
    path: Path,
    *,
    port: int,
    data_dir: Path,
    host: str = "127.0.0.1",
    max_inflight_messages: int | None = None,
) -> Path:
    """Write the shipped config with this listener, persistence directory and the
    current user to ``path``; create ``data_dir``.  Raises OSError."""
    text = TEMPLATE_PATH.read_text()
    text = re.sub(r"(?m)^listener .*$", f"listener {port} {host}", text)
    text = re.sub(r"(?m)^persistence_location .*$", f"persistence_location {data_dir}/", text)
    text = re.sub(r"(?m)^user .*$", f"user {getpass.getuser()}", text)
    if max_inflight_messages is not None:
        text = re.sub(
            r"(?m)^max_inflight_messages .*$",
            f"max_inflight_messages {max_inflight_messages}",
            text,
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class MosquittoProcess:
    """One mosquitto child process with its own config, data directory and log.

    ``.address`` ("127.0.0.1:PORT"), ``.start()``, ``.stop(signal)``, ``.kill()``,
    ``.restart()``, ``.logs()``, ``.running``.
    """

    def __init__(
        self,
        work_dir: Path,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        executable: str | None = None,
        max_inflight_messages: int | None = None,
    ) -> None:
        found = executable or find_mosquitto()
        if found is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.executable = found
        self.host = host
        self.port = port or free_port(host)
        self.work_dir = work_dir
        self.data_dir = work_dir / "mosquitto-data"
        self.config_path = work_dir / "mosquitto.conf"
        self.log_path = work_dir / "mosquitto.log"
        work_dir.mkdir(parents=True, exist_ok=True)
        write_config(
            self.config_path,
            port=self.port,
            data_dir=self.data_dir,
            host=host,
            max_inflight_messages=max_inflight_messages,
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start mosquitto and wait until it accepts connections.  Raises
        RuntimeError (with its log) when it exits or does not listen in time."""
        assert not self.running, "mosquitto is already running"
        log_file: IO[bytes]
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [self.executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                cwd=self.work_dir,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self.process.returncode}:\n{self.logs()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen within {timeout_s} s:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` and wait for the exit code (SIGKILL after ``timeout_s``)."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process is not None else 0
        process.send_signal(sig)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL: mosquitto writes nothing; what arrived since the last autosave
        is lost."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Stop gracefully if running, then start on the same port and directory."""
        self.stop()
        self.start()

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def run_builtin_broker(host: str, port: int) -> None:
    """Run the fallback broker (amqtt, builtin_broker.py) in this process until
    SIGTERM/SIGINT.  Raises click.ClickException when amqtt is not installed."""
    try:
        builtin_broker = importlib.import_module("examples.iot.builtin_broker")
    except ImportError:
        raise click.ClickException(
            "the builtin MQTT broker (the fallback) needs amqtt, which the iot extra "
            "installs (pip install -e '.[iot]'); or install mosquitto"
        ) from None
    builtin_broker.run(host, port)


@click.command("mqtt-broker")
@click.option("--port", type=int, default=1883, show_default=True, help="Listener port.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("mosquitto-run"),
    show_default=True,
    help="Config, persistence and log directory.",
)
@click.option(
    "--builtin",
    is_flag=True,
    help="Run the fallback pure-Python broker (amqtt, no persistence) instead of mosquitto.",
)
def command(port: int, data_dir: Path, builtin: bool) -> None:
    """Run mosquitto with the pipeline's config in the foreground until SIGTERM
    (or, with --builtin, the fallback broker)."""
    if builtin:
        run_builtin_broker("127.0.0.1", port)
        return
    try:
        broker = MosquittoProcess(data_dir, port)
    except FileNotFoundError as error:
        raise click.ClickException(str(error)) from None
    broker.start()
    print(f"mosquitto on {broker.address} (config {broker.config_path})", flush=True)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not received and broker.running:
        time.sleep(0.2)
    code = broker.stop()
    sys.exit(0 if received else code)
