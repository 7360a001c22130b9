"""The demo's MQTT broker as a child process: mosquitto (the default) or the
builtin pure-Python fallback, on a free loopback port, with its persistence
inside the run folder.

mosquitto runs directly (not under a wrapper), so the faults' SIGTERM and
SIGKILL reach mosquitto itself; its config file is written by
``examples.iot.mqtt.write_config`` from the shipped template.  A restart
reuses the same port and persistence directory, so the bridge's persistent
session and the queued messages survive a clean restart.

The builtin broker (``--mqtt-broker builtin``, the labelled fallback where
mosquitto cannot be had) runs as ``python -m examples.iot mqtt-broker
--builtin``: amqtt's broker (builtin_broker.py, installed with the ``iot``
extra), which keeps everything in memory; without amqtt the demo says so and
stops.
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from typing import Final

import trio

from examples.iot.mqtt import BUILTIN_BROKER, find_mosquitto, write_config
from examples.iot.processes import ChildProcess, free_port, stage_argv

READY_TIMEOUT_S: Final = 15.0


def mqtt_broker_problem(kind: str) -> str | None:
    """Why an MQTT broker of ``kind`` cannot be started here, or None."""
    if kind == "builtin":
        if importlib.util.find_spec(BUILTIN_BROKER) is None:
            return (
                f"the builtin MQTT broker needs {BUILTIN_BROKER}, which the iot extra installs "
                "(pip install -e '.[iot]'); or install mosquitto"
            )
        return None
    if find_mosquitto() is None:
        return "mosquitto is not installed (apt-get install mosquitto)"
    return None


class MqttBrokerProcess:
    """One MQTT broker (``kind`` "mosquitto" or "builtin") on ``port``."""

    def __init__(self, kind: str, data_dir: Path, log_path: Path, port: int | None = None) -> None:
        assert kind in ("mosquitto", "builtin"), kind
        self.kind = kind
        self.data_dir = data_dir
        self.port = free_port() if port is None else port
        self.child = ChildProcess(f"mqtt-{kind}", self._argv(), log_path)

    def _argv(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        problem = mqtt_broker_problem(self.kind)
        if problem:
            raise RuntimeError(problem)
        if self.kind == "builtin":
            return stage_argv(
                "mqtt-broker",
                "--builtin",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            )
        binary = find_mosquitto()
        assert binary is not None
        config_path = self.data_dir.parent / "mosquitto.conf"
        write_config(config_path, port=self.port, data_dir=self.data_dir)
        return [binary, "-c", str(config_path)]

    @property
    def running(self) -> bool:
        return self.child.running

    async def start(self) -> None:
        """Start it and wait until its port accepts connections.

        Raises TimeoutError when it does not within READY_TIMEOUT_S, RuntimeError
        when it exits.
        """
        log_offset = self.child.log_path.stat().st_size if self.child.log_path.exists() else 0
        await self.child.start()
        with trio.move_on_after(READY_TIMEOUT_S):
            while True:
                if not self.child.running:
                    raise RuntimeError(
                        f"the MQTT broker exited ({self.child.returncode}): see {self.child.log_path}"
                    )
                if self._ready(log_offset):
                    return
                await trio.sleep(0.05)
        raise TimeoutError(
            f"the MQTT broker did not listen on {self.port} in {READY_TIMEOUT_S:g} s"
        )

    def _ready(self, log_offset: int) -> bool:
        """Whether it listens: the builtin broker says so in its log (a bare TCP
        probe makes amqtt log an error), mosquitto accepts a connection."""
        if self.kind == "builtin":
            with self.child.log_path.open("rb") as log:
                log.seek(log_offset)
                return f"builtin MQTT broker on 127.0.0.1:{self.port}".encode() in log.read()
        return _accepts(self.port)

    async def stop(self) -> int | None:
        return await self.child.stop()

    async def kill(self) -> int | None:
        return await self.child.kill()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
