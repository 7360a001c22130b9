"""Fixtures that run real ``distributary serve`` processes on 127.0.0.1.

``broker``            a broker with default settings, started for the test.
``broker_factory``    ``broker_factory(config=None, env=None, args=())`` starts one
                      more broker; ``config`` is a dict written as the TOML config
                      file (e.g. ``{"limits": {"connections_max": 3}}``), ``env``
                      adds environment variables (``DISTRIBUTARY_*``), ``args``
                      adds ``serve`` flags.

Each yields a :class:`BrokerProcess`:

    .host, .port, .address ("127.0.0.1:PORT"), .data_dir (Path), .process (Popen),
    .log_path (the broker's stderr: JSON log lines)
    .stop(signal=SIGTERM, timeout_s=15) -> exit code  (waits; kills on timeout)
    .kill()                 SIGKILL and wait
    .restart()              stop (SIGTERM) if running, start again: same port, same data
    .start()                start again after stop()/kill()
    .logs() -> str, .log_events() -> list[dict]

The broker listens on port 0 the first time (so parallel tests never collide)
and on the port it got after that, so clients keep their address across
restarts.  ``start`` waits (at most 20 s) for the "listening" log line and for
the port to accept a connection; on failure the error shows the broker's
output.  Every broker is killed at teardown.  The methods block: call them from
sync tests, or from trio tests directly (they only sleep briefly) or through
``trio.to_thread.run_sync``.

``raw_client(address)`` (a fixture returning a factory) opens a tiny blocking
client over client.protocol.connection.ClientConnection, for tests that speak
the wire protocol without the SDK; every client is closed at teardown.
"""

from __future__ import annotations

import json
import os
import signal as signals
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from client.protocol.connection import ClientConnection, IncomingResponse
from client.protocol.messages import (
    Acks,
    CreatableTopic,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DescribeTopicsRequest,
    DescribeTopicsResponse,
    FetchPartition,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    HelloRequest,
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsetsTopic,
    ProducePartition,
    ProduceRequest,
    ProduceResponse,
    ProduceTopic,
    Request,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


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
    """One ``distributary serve`` subprocess (see the module docstring)."""

    def __init__(
        self,
        work_dir: Path,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.work_dir = work_dir
        self.data_dir = work_dir / "data"
        self.log_path = work_dir / "broker.log"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = work_dir / "broker.toml"
            self.config_path.write_text(to_toml(config))
        self.extra_env = dict(env or {})
        self.extra_args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "broker", "serve"]
        command += ["--listen", f"{self.host}:{self.port}", "--data-dir", str(self.data_dir)]
        command += ["--log-format", "json"]
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
            for event in self.log_events(since_start=True):
                if event.get("event") == "listening":
                    self.port = int(event["port"])
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


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Start brokers on demand (see the module docstring); all killed at teardown."""
    started: list[BrokerProcess] = []

    def factory(
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> BrokerProcess:
        work_dir = tmp_path / f"broker-{len(started)}"
        work_dir.mkdir()
        broker = BrokerProcess(work_dir, config, env, args)
        started.append(broker)
        broker.start()
        return broker

    yield factory
    for broker in started:
        broker.kill()


@pytest.fixture
def broker(broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    """A running broker with default settings."""
    return broker_factory()


# -- a raw wire-protocol client ---------------------------------------------------------


class RawClient:
    """A blocking client speaking the wire protocol directly (no SDK)."""

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.sock.settimeout(timeout_s)
        self.connection = ClientConnection(inflight_requests_max=1 << 16)
        self.pending: dict[int, IncomingResponse] = {}

    def close(self) -> None:
        self.sock.close()

    def send(self, body: Request, payload: bytes = b"", *, wants_response: bool = True) -> int:
        correlation_id, head = self.connection.send_request(
            body, len(payload), wants_response=wants_response
        )
        self.sock.sendall(head + payload)
        return correlation_id

    def receive(self, correlation_id: int | None = None) -> IncomingResponse:
        """The next response (or the one for ``correlation_id``)."""
        for _ in range(1 << 20):
            if correlation_id is not None and correlation_id in self.pending:
                return self.pending.pop(correlation_id)
            response = self.connection.next_response()
            if response is not None:
                if correlation_id is None or response.correlation_id == correlation_id:
                    return response
                self.pending[response.correlation_id] = response
                continue
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("broker closed the connection")
            self.connection.receive_data(data)
        raise AssertionError("no response")

    def call(self, body: Request, payload: bytes = b"") -> IncomingResponse:
        return self.receive(self.send(body, payload))

    def is_closed_by_peer(self, timeout_s: float = 5.0) -> bool:
        """True if the broker closes the connection within ``timeout_s`` (any bytes
        it sends first are discarded)."""
        self.sock.settimeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(1 << 16):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        return False

    # -- typed helpers ----------------------------------------------------------------

    def hello(self) -> IncomingResponse:
        return self.call(HelloRequest(client_id="raw-test-client"))

    def create_topic(
        self, name: str, partitions: int = 1, configs: Mapping[str, str] | None = None
    ) -> CreateTopicsResponse:
        body = self.call(
            CreateTopicsRequest([CreatableTopic(name, partitions, 1, dict(configs or {}))])
        ).body
        assert isinstance(body, CreateTopicsResponse), body
        return body

    def produce(
        self,
        topic: str,
        batches: Mapping[int, Sequence[bytes | bytearray]],
        acks: int = Acks.LEADER,
    ) -> ProduceResponse | None:
        """Produce ``{partition: [batch, ...]}`` in one request."""
        parts = [(partition, b"".join(items)) for partition, items in batches.items()]
        body = ProduceRequest(
            acks=acks,
            topics=[ProduceTopic(topic, [ProducePartition(p, len(data)) for p, data in parts])],
        )
        payload = b"".join(data for _, data in parts)
        if acks == Acks.NONE:
            self.send(body, payload, wants_response=False)
            return None
        response = self.call(body, payload).body
        assert isinstance(response, ProduceResponse), response
        return response

    def fetch(
        self,
        topic: str,
        offsets: Mapping[int, int],
        *,
        max_wait_ms: int = 0,
        min_bytes: int = 1,
        max_bytes: int = 50 << 20,
        partition_max_bytes: int = 1 << 20,
    ) -> tuple[FetchResponse, dict[int, bytes]]:
        """Fetch ``{partition: offset}``; returns the body and each partition's bytes."""
        return self.receive_fetch(
            self.send_fetch(
                topic,
                offsets,
                max_wait_ms=max_wait_ms,
                min_bytes=min_bytes,
                max_bytes=max_bytes,
                partition_max_bytes=partition_max_bytes,
            )
        )

    def send_fetch(
        self,
        topic: str,
        offsets: Mapping[int, int],
        *,
        max_wait_ms: int = 0,
        min_bytes: int = 1,
        max_bytes: int = 50 << 20,
        partition_max_bytes: int = 1 << 20,
    ) -> int:
        partitions = [FetchPartition(p, o, partition_max_bytes) for p, o in offsets.items()]
        return self.send(
            FetchRequest(max_wait_ms, min_bytes, max_bytes, [FetchTopic(topic, partitions)])
        )

    def receive_fetch(self, correlation_id: int) -> tuple[FetchResponse, dict[int, bytes]]:
        response = self.receive(correlation_id)
        body = response.body
        assert isinstance(body, FetchResponse), body
        data: dict[int, bytes] = {}
        position = 0
        for topic in body.topics:
            for part in topic.partitions:
                data[part.partition] = bytes(
                    response.payload[position : position + part.records_bytes]
                )
                position += part.records_bytes
        assert position == len(response.payload)
        return body, data

    def list_offsets(self, topic: str, timestamps: Mapping[int, int]) -> dict[int, int]:
        partitions = [ListOffsetsPartition(p, t) for p, t in timestamps.items()]
        body = self.call(ListOffsetsRequest([ListOffsetsTopic(topic, partitions)])).body
        assert isinstance(body, ListOffsetsResponse), body
        result = {}
        for part in body.topics[0].partitions:
            assert part.error_code == 0, part
            result[part.partition] = part.offset
        return result

    def describe(self, name: str) -> DescribeTopicsResponse:
        body = self.call(DescribeTopicsRequest([name])).body
        assert isinstance(body, DescribeTopicsResponse), body
        return body


@pytest.fixture
def raw_client() -> Iterator[Callable[..., RawClient]]:
    """``raw_client(address, timeout_s=10)`` opens a RawClient; all closed at teardown."""
    opened: list[RawClient] = []

    def connect(address: str, timeout_s: float = 10.0) -> RawClient:
        client = RawClient(address, timeout_s)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


@pytest.fixture
def streamed_answers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The payload sizes of the fetch-stream answers flagged MORE that consumers
    in this test process handled (FetchLoop._fetch_more), as they arrive."""
    from client.fetch_loop import FetchLoop

    sizes: list[int] = []
    real_fetch_more = FetchLoop._fetch_more

    def counting_fetch_more(self: FetchLoop, chain: Any, seek_counts: Any, response: Any) -> None:
        sizes.append(len(response.payload))
        real_fetch_more(self, chain, seek_counts, response)

    monkeypatch.setattr(FetchLoop, "_fetch_more", counting_fetch_more)
    return sizes
