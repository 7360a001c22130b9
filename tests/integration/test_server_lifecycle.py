"""Stopping and restarting a real broker: graceful SIGTERM, SIGKILL, persistence."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from broker.storage.checkpoint import CLEAN_SHUTDOWN_FILE
from broker.testing import BrokerProcess
from client.errors import ErrorCode
from client.protocol.connection import ClientConnection
from client.protocol.frames import FRAME_HEADER_BYTES
from client.protocol.messages import (
    LATEST_TIMESTAMP,
    FetchPartition,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    HelloRequest,
    HelloResponse,
)
from client.records.builder import build_batch
from client.records.header import CRC_AT, iter_batches

RawFactory = Callable[..., Any]

# The long poll that a graceful shutdown must answer early.
POLL_WAIT_MS: Final = 90_000


def produce_batches(
    client: Any, topic: str, partitions: int, rounds: int, first_offset: int = 0
) -> dict[int, list[bytes]]:
    """Produce ``rounds`` acknowledged 3-record batches to each partition, checking
    their offsets continue from ``first_offset``; returns them."""
    sent: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    for round_number in range(rounds):
        batches = {
            p: build_batch([f"{p}-{round_number}-{i}".encode() for i in range(3)])
            for p in range(partitions)
        }
        response = client.produce(topic, {p: [b] for p, b in batches.items()})
        for part in response.topics[0].partitions:
            assert part.error_code == 0, part
            assert part.base_offset == first_offset + 3 * round_number
        for p, b in batches.items():
            sent[p].append(bytes(b))
    return sent


def assert_log_holds(client: Any, topic: str, sent: dict[int, list[bytes]]) -> None:
    """Every acknowledged batch is there, in order, with offsets 0, 3, 6, ..."""
    for partition, batches in sent.items():
        _, data = client.fetch(topic, {partition: 0}, max_bytes=50 << 20)
        headers = iter_batches(data[partition])
        assert [h.base_offset for h in headers] == [3 * i for i in range(len(batches))]
        for header, original in zip(headers, batches, strict=True):
            assert data[partition][header.position + CRC_AT : header.end] == original[CRC_AT:]


def test_sigterm_then_restart_keeps_every_acknowledged_record(
    broker: Any, raw_client: RawFactory
) -> None:
    """SIGTERM exits 0 after a clean shutdown; after a restart every acknowledged batch is
    there and new appends continue the offsets."""
    client = raw_client(broker.address)
    client.create_topic("durable", 2, {"retention_ms": "86400000"})
    sent = produce_batches(client, "durable", 2, 20)
    client.close()
    assert broker.stop(signal.SIGTERM) == 0
    assert broker.wait_for_log("stopped")
    for partition in range(2):
        assert (broker.data_dir / f"durable-{partition}" / CLEAN_SHUTDOWN_FILE).exists()
    broker.start()
    client = raw_client(broker.address)
    assert_log_holds(client, "durable", sent)
    described = client.describe("durable").topics[0]
    assert described.configs["retention_ms"] == "86400000"
    produce_batches(client, "durable", 2, 1, first_offset=60)
    assert client.list_offsets("durable", {0: LATEST_TIMESTAMP}) == {0: 63}


def test_sigkill_then_restart_keeps_every_acknowledged_record(
    broker: Any, raw_client: RawFactory
) -> None:
    """After SIGKILL (no flush, no clean-shutdown marker) a restart recovers every
    acknowledged batch from the page cache and offsets continue."""
    client = raw_client(broker.address)
    client.create_topic("crashy", 3)
    sent = produce_batches(client, "crashy", 3, 15)
    broker.kill()
    assert not (broker.data_dir / "crashy-0" / CLEAN_SHUTDOWN_FILE).exists()
    broker.start()
    client = raw_client(broker.address)
    assert_log_holds(client, "crashy", sent)
    response = client.produce("crashy", {2: [build_batch([b"after crash"])]})
    assert response.topics[0].partitions[0].base_offset == 45


def test_sigterm_answers_a_waiting_long_poll_and_exits_promptly(
    broker_factory: Any, raw_client: RawFactory
) -> None:
    """A fetch long-polling for 90 s is answered at shutdown and the broker exits 0
    well before the poll would have ended."""
    # request_timeout_ms also caps a long poll: raise it above the poll.
    broker = broker_factory(config={"limits": {"request_timeout_ms": 2 * POLL_WAIT_MS}})
    client = raw_client(broker.address)
    client.create_topic("quiet", 1)
    # A hello and the long poll behind it in one write: the broker reads both in one
    # go, so once the hello is answered the fetch has been read and is waiting.
    hello_id, hello_head = client.connection.send_request(HelloRequest(), 0)
    fetch = FetchRequest(POLL_WAIT_MS, 1, 1 << 20, [FetchTopic("quiet", [FetchPartition(0, 0)])])
    fetch_id, fetch_head = client.connection.send_request(fetch, 0)
    client.sock.sendall(hello_head + fetch_head)
    assert isinstance(client.receive(hello_id).body, HelloResponse)
    # Deadlines of a third of the poll: a broker that let the poll run out misses them.
    client.sock.settimeout(POLL_WAIT_MS / 3000)
    broker.process.send_signal(signal.SIGTERM)
    response = client.receive(fetch_id)
    assert isinstance(response.body, FetchResponse)
    assert broker.process.wait(timeout=POLL_WAIT_MS / 3000) == 0


def test_restart_on_the_same_address(broker: Any, raw_client: RawFactory) -> None:
    """restart() brings the broker back on the same port with the same topics."""
    client = raw_client(broker.address)
    client.create_topic("kept", 4)
    address = broker.address
    broker.restart()
    assert broker.address == address
    described = raw_client(broker.address).describe("kept").topics[0]
    assert described.error_code == 0 and len(described.partitions) == 4


def test_second_signal_exits_immediately(broker_factory: Any, raw_client: RawFactory) -> None:
    """While a graceful shutdown waits on a client that does not read, a second SIGTERM
    ends the process at once with status 128 + SIGTERM."""
    broker = broker_factory(config={"limits": {"shutdown_timeout_ms": 60_000}})
    producer = raw_client(broker.address)
    chunk = build_batch([bytes(1 << 20)])
    for _ in range(3):
        producer.produce("bulk", {0: [chunk] * 4})
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((broker.host, broker.port))
    fetch = FetchRequest(0, 1, 20 << 20, [FetchTopic("bulk", [FetchPartition(0, 0, 20 << 20)])])
    stuck.sendall(ClientConnection().send_request(fetch)[1])
    # The broker is answering once the first bytes arrive; the rest of the 12 MiB
    # cannot fit in the socket buffers, so the response stays stuck.
    stuck.settimeout(30)
    assert len(stuck.recv(FRAME_HEADER_BYTES, socket.MSG_WAITALL)) == FRAME_HEADER_BYTES
    broker.process.send_signal(signal.SIGTERM)
    broker.wait_for_log("shutting down")
    assert broker.process.poll() is None, "the graceful shutdown should still be waiting"
    broker.process.send_signal(signal.SIGTERM)
    # Far below the 60 s graceful deadline: only the second signal ends it this soon.
    assert broker.process.wait(timeout=30) == 128 + signal.SIGTERM
    stuck.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A work directory whose ``data`` is a 4 MiB tmpfs (root and mount(8) needed),
    unmounted at teardown; the broker's log file stays on the ordinary disk."""
    mount_point = tmp_path / "work" / "data"
    mount_point.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to mount a small tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount_point.parent
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_sigterm_on_a_full_disk_exits_1_with_one_line(
    small_disk: Path, raw_client: RawFactory
) -> None:
    """With the data disk full, SIGTERM ends the broker with status 1 and one error
    line naming how many partitions could not be closed cleanly, not a line per
    partition."""
    work_dir = small_disk
    broker = BrokerProcess(work_dir)
    broker.start()
    try:
        client = raw_client(broker.address)
        client.create_topic("filling", 11, {})
        chunk = build_batch([bytes(64 * 1024)])
        full = False
        for _ in range(200):  # 4 MiB of disk: full well before 200 x 11 x 64 KiB
            response = client.produce("filling", {p: [chunk] for p in range(11)})
            codes = {part.error_code for part in response.topics[0].partitions}
            if ErrorCode.STORAGE_ERROR in codes:
                full = True
                break
        assert full, "the disk never filled"
        # Take the last pages too, so that even a small checkpoint cannot be written.
        filler = os.open(broker.data_dir / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for _ in range(1 << 12):  # 4 MiB in 1 KiB writes: ENOSPC comes first
                os.write(filler, bytes(1024))
        except OSError:
            pass
        finally:
            os.close(filler)
        client.close()
        status = broker.stop()
    finally:
        broker.kill()
    logs = broker.logs()
    assert status == 1, logs
    errors = [line for line in logs.splitlines() if line.startswith("distributary: error:")]
    assert len(errors) == 1, logs[-3000:]
    assert "partitions not closed cleanly" in errors[0]
    assert not [e for e in broker.log_events() if e.get("event") == "close failed"], logs
    assert "Traceback" not in logs
