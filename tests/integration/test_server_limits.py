"""Hostile and excessive clients: each loses only its own connection (or gets an error
response), with a log line, while other clients keep working."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest

from client.errors import ErrorCode
from client.protocol.connection import ClientConnection
from client.protocol.frames import FRAME_HEADER, FRAME_HEADER_BYTES, LENGTH_PREFIX_BYTES
from client.protocol.messages import (
    ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
    ErrorResponse,
    FetchPartition,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    HelloRequest,
    HelloResponse,
    response_decoder,
)
from client.records.builder import build_batch

RawFactory = Callable[..., Any]


def produce_ok(client: Any, topic: str = "steady") -> int:
    """Produce one batch and return its base offset (asserting success)."""
    response = client.produce(topic, {0: [build_batch([b"still here"])]})
    [part] = response.topics[0].partitions
    assert part.error_code == 0, part
    return int(part.base_offset)


def raw_socket(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_by_peer(sock: socket.socket, timeout_s: float = 30.0) -> bool:
    sock.settimeout(timeout_s)
    try:
        for _ in range(1000):
            if not sock.recv(1 << 16):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def log_events(broker: Any, event: str) -> list[dict[str, Any]]:
    return [e for e in broker.log_events() if e.get("event") == event]


def test_garbage_closes_only_that_connection(broker: Any, raw_client: RawFactory) -> None:
    """Random bytes close the sender's connection with a log line; another producer is
    unaffected before and after."""
    good = raw_client(broker.address)
    first = produce_ok(good)
    bad = raw_socket(broker.address)
    bad.sendall(b"\x00\x00\x00\x20" + b"GARBAGE!" * 8)
    assert closed_by_peer(bad)
    assert produce_ok(good) == first + 1
    assert log_events(broker, "protocol violation, closing")


def test_oversized_frame_closes_connection_before_buffering(
    broker: Any, raw_client: RawFactory
) -> None:
    """A frame that declares more than frame_bytes_max is refused on its first 4 bytes."""
    good = raw_client(broker.address)
    produce_ok(good)
    bad = raw_socket(broker.address)
    bad.sendall(struct.pack(">I", 0xFFFF_FFF0))
    assert closed_by_peer(bad)
    [event] = log_events(broker, "protocol violation, closing")
    assert event["code"] == "FRAME_TOO_LARGE"
    produce_ok(good)


def test_unknown_api_key_gets_error_response_and_connection_survives(
    broker: Any, raw_client: RawFactory
) -> None:
    """A well-framed request with an unknown API key is answered UNSUPPORTED_API and the
    same connection keeps working."""
    client = raw_client(broker.address)
    body = b"\x90"  # msgpack empty array
    frame_length = FRAME_HEADER_BYTES - LENGTH_PREFIX_BYTES + len(body)
    client.sock.sendall(FRAME_HEADER.pack(frame_length, 99, 0, 4242, 0, len(body)) + body)
    head = client.sock.recv(FRAME_HEADER_BYTES, socket.MSG_WAITALL)
    fields = FRAME_HEADER.unpack(head)
    assert fields[3] == 4242  # correlation id
    rest = client.sock.recv(
        fields[0] - (FRAME_HEADER_BYTES - LENGTH_PREFIX_BYTES), socket.MSG_WAITALL
    )
    error = response_decoder.decode(rest)
    assert isinstance(error, ErrorResponse) and error.error_code == ErrorCode.UNSUPPORTED_API
    assert isinstance(client.hello().body, HelloResponse)


def test_truncated_frame_then_eof_closes_connection(broker: Any, raw_client: RawFactory) -> None:
    """Half a frame followed by end-of-stream is logged as a truncated frame and closed;
    other clients keep producing."""
    good = raw_client(broker.address)
    produce_ok(good)
    bad = raw_socket(broker.address)
    body = b"\x90"
    frame = FRAME_HEADER.pack(FRAME_HEADER_BYTES - LENGTH_PREFIX_BYTES + 100, 0, 0, 1, 0, 1) + body
    bad.sendall(frame)
    bad.shutdown(socket.SHUT_WR)
    assert closed_by_peer(bad)
    broker.wait_for_log("truncated frame at end of stream")
    produce_ok(good)


def test_connections_max_refuses_extra_connections(
    broker_factory: Any, raw_client: RawFactory
) -> None:
    """Beyond limits.connections_max a new connection is closed at once (and logged); the
    existing ones keep working and a slot frees when one leaves."""
    broker = broker_factory(config={"limits": {"connections_max": 3}})
    clients = [raw_client(broker.address) for _ in range(3)]
    for client in clients:
        assert isinstance(client.hello().body, HelloResponse)
    extra = raw_socket(broker.address)
    assert closed_by_peer(extra)
    assert log_events(broker, "connection refused")[0]["reason"] == "connections_max"
    produce_ok(clients[0])
    clients[2].close()
    deadline = time.monotonic() + 30
    while True:  # the broker notices the close asynchronously: retry until it has
        replacement = raw_client(broker.address)
        try:
            replacement.hello()
            break
        except (ConnectionError, OSError):
            assert time.monotonic() < deadline, "no slot freed after a client left"
            time.sleep(0.05)
    produce_ok(replacement)


def test_inflight_requests_max_refuses_the_excess(
    broker_factory: Any, raw_client: RawFactory
) -> None:
    """With inflight_requests_max=2, requests pipelined behind a long poll beyond the limit
    are answered TOO_MANY_REQUESTS at once; the admitted ones are answered normally."""
    broker = broker_factory(env={"DISTRIBUTARY_LIMITS__INFLIGHT_REQUESTS_MAX": "2"})
    client = raw_client(broker.address)
    client.create_topic("poll", 1)
    fetch_id = client.send_fetch("poll", {0: 0}, max_wait_ms=1_500)
    hello_ids = [client.send(HelloRequest()) for _ in range(3)]
    refused = [client.receive(cid) for cid in hello_ids[1:]]
    for response in refused:
        assert isinstance(response.body, ErrorResponse)
        assert response.body.error_code == ErrorCode.TOO_MANY_REQUESTS
    fetched = client.receive(fetch_id)
    assert isinstance(fetched.body, FetchResponse)
    assert isinstance(client.receive(hello_ids[0]).body, HelloResponse)
    assert log_events(broker, "request refused")
    assert isinstance(client.hello().body, HelloResponse)


def test_idle_connections_are_closed(broker_factory: Any, raw_client: RawFactory) -> None:
    """A connection silent for idle_connection_timeout_ms is closed, not earlier; a busy
    one, or one waiting on a long poll longer than the timeout, is not."""
    idle_s = 2.0
    broker = broker_factory(config={"limits": {"idle_connection_timeout_ms": int(idle_s * 1000)}})
    idle = raw_client(broker.address)
    busy = raw_client(broker.address)
    polling = raw_client(broker.address)
    polling.create_topic("slow", 1)
    # Twice the idle timeout, on a topic nobody writes to.
    poll_id = polling.send_fetch("slow", {0: 0}, max_wait_ms=int(2 * idle_s * 1000))
    started = time.monotonic()  # before idle's last request: a lower bound on its silence
    idle.hello()
    # busy sends a request every 0.1 s (a twentieth of the timeout) until idle is closed.
    while not idle.is_closed_by_peer(timeout_s=0.1):
        assert isinstance(busy.hello().body, HelloResponse)
        assert time.monotonic() - started < 10 * idle_s, "the idle connection stayed open"
    assert time.monotonic() - started >= idle_s, "closed before it was idle for the timeout"
    assert isinstance(busy.hello().body, HelloResponse)
    busy.close()  # from here it would be idle itself
    assert isinstance(polling.receive(poll_id).body, FetchResponse)
    assert isinstance(polling.hello().body, HelloResponse)
    assert len(log_events(broker, "idle connection closed")) == 1


def test_frame_bytes_max_is_configurable(broker_factory: Any, raw_client: RawFactory) -> None:
    """A produce frame over a configured frame_bytes_max closes that connection; smaller
    ones on a new connection are fine."""
    broker = broker_factory(
        config={"limits": {"frame_bytes_max": 64 * 1024, "fetch_bytes_max": 32 * 1024}}
    )
    client = raw_client(broker.address)
    produce_ok(client)
    big = build_batch([b"x" * 100_000])
    try:
        client.produce("steady", {0: [big]})
        raise AssertionError("an oversized frame was answered")
    except (ConnectionError, OSError):
        pass
    produce_ok(raw_client(broker.address))


def test_fetch_bytes_max_caps_the_response(broker_factory: Any, raw_client: RawFactory) -> None:
    """limits.fetch_bytes_max bounds a fetch's record bytes whatever max_bytes asks."""
    broker = broker_factory(config={"limits": {"fetch_bytes_max": 5_000}})
    client = raw_client(broker.address)
    batches = [build_batch([bytes(900)]) for _ in range(10)]
    client.produce("capped", {0: batches})
    _, data = client.fetch("capped", {0: 0}, max_bytes=10 << 20)
    assert 0 < len(data[0]) <= 5_000
    assert len(data[0]) % len(batches[0]) == 0


def test_client_that_does_not_read_is_cut_after_request_timeout(
    broker_factory: Any, raw_client: RawFactory
) -> None:
    """A client that stops reading a big fetch response is disconnected after
    request_timeout_ms (the broker logs it) while others keep producing."""
    broker = broker_factory(config={"limits": {"request_timeout_ms": 800}})
    producer = raw_client(broker.address)
    chunk = build_batch([bytes(1 << 20)])
    for _ in range(3):
        producer.produce("bulk", {0: [chunk] * 4})
    host, _, port = broker.address.rpartition(":")
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((host, int(port)))
    _, head = ClientConnection().send_request(
        FetchRequest(0, 1, 20 << 20, [FetchTopic("bulk", [FetchPartition(0, 0, 20 << 20)])])
    )
    slow.sendall(head)
    broker.wait_for_log("client is not reading, closing", timeout_s=10)
    received = 0
    slow.settimeout(5)
    try:
        for _ in range(100_000):
            data = slow.recv(1 << 20)
            if not data:
                break
            received += len(data)
    except ConnectionResetError:
        pass
    assert received < 12 * len(chunk)
    produce_ok(producer)


def test_default_broker_serves_more_connections_than_the_usual_descriptor_limit(
    broker_factory: Any, raw_client: RawFactory
) -> None:
    """Proves the broker raises its own open-file limit: started with the usual soft
    limit of 1,024, it still accepts 1,100 idle connections and serves one more."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1_300:
        pytest.skip(f"hard open-file limit {hard} is too low for this test")
    idle: list[socket.socket] = []
    try:
        # The broker inherits a soft limit of 1,024, as on a default Linux login...
        resource.setrlimit(resource.RLIMIT_NOFILE, (1_024, hard))
        # (Every connection comes from 127.0.0.1: lift the per-address limit.)
        broker = broker_factory(config={"limits": {"connections_per_address_max": 2_000}})
        # ...while this test gives itself room for its own sockets.
        resource.setrlimit(resource.RLIMIT_NOFILE, (1_300, hard))
        for _ in range(1_100):
            idle.append(raw_socket(broker.address))
        client = raw_client(broker.address)
        response = client.hello()
        assert isinstance(response.body, HelloResponse)
        still_open = 0
        for sock in idle:
            sock.setblocking(False)
            try:
                still_open += sock.recv(1) != b""
            except BlockingIOError:
                still_open += 1
        assert still_open == len(idle)
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_subscription_regex_cannot_freeze_the_broker(broker: Any, raw_client: RawFactory) -> None:
    """A group heartbeat subscribing with ``(a+)+`` while a topic name almost matches it
    (hours of backtracking for Python's re) is answered at once and other clients keep
    working; a pattern RE2 does not support (a backreference) is INVALID_REQUEST."""
    client = raw_client(broker.address)
    client.create_topic("a" * 48 + "-x", 1)
    client.create_topic("aaaa", 2)
    joined = client.call(
        ConsumerGroupHeartbeatRequest("hostile", subscribed_topic_regex="(a+)+")
    ).body
    assert isinstance(joined, ConsumerGroupHeartbeatResponse) and joined.error_code == 0, joined
    assert [(t.topic, t.partitions) for t in joined.assignment] == [("aaaa", [0, 1])]
    produce_ok(raw_client(broker.address))
    refused = client.call(
        ConsumerGroupHeartbeatRequest("other", subscribed_topic_regex=r"(a)\1")
    ).body
    assert isinstance(refused, ConsumerGroupHeartbeatResponse)
    assert refused.error_code == ErrorCode.INVALID_REQUEST and "RE2" in refused.error_message
