"""Fixtures that run real ``distributary serve`` processes on 127.0.0.1.

``broker``            a broker with default settings, started for the test.
``broker_factory``    ``broker_factory(config=None, env=None, args=())`` starts one
                      more broker; ``config`` is a dict written as the TOML config
                      file (e.g. ``{"limits": {"connections_max": 3}}``), ``env``
                      adds environment variables (``DISTRIBUTARY_*``), ``args``
                      adds ``serve`` flags.

Each yields a :class:`broker.testing.BrokerProcess` (the class the shipped pytest
plugin uses too: broker/pytest_plugin.py): ``.address``, ``.data_dir``,
``.start()``, ``.stop()``, ``.kill()``, ``.restart()``, ``.logs()``,
``.log_events()``, ``.wait_for_log(event)``.  Every broker is killed at teardown.

``raw_client(address)`` (a fixture returning a factory) opens a tiny blocking
client over client.protocol.connection.ClientConnection, for tests that speak
the wire protocol without the SDK; every client is closed at teardown.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from broker.testing import BrokerProcess
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
