"""The blocking SDK (client.sync) against a real broker, from plain (non-async) tests.

Also runs examples/copy_topic.py, which is written on the blocking SDK.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from client.errors import (
    RequestTimedOutError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from client.sync import Admin, Consumer, Producer
from client.types import TopicPartition

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 30.0


def test_admin_creates_describes_lists_and_deletes(broker: Any) -> None:
    """Proves the blocking Admin covers the topic lifecycle and raises typed errors."""
    with Admin(broker.address) as admin:
        admin.create_topic("admin-sync", 3, timeout=TIMEOUT_S)
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topic("admin-sync", timeout=TIMEOUT_S)
        assert "admin-sync" in admin.list_topics(timeout=TIMEOUT_S)
        (description,) = admin.describe_topics(["admin-sync"], timeout=TIMEOUT_S)
        assert len(description.partitions) == 3
        metadata = admin.cluster_metadata(timeout=TIMEOUT_S)
        assert any(topic.name == "admin-sync" for topic in metadata.topics)
        admin.delete_topics(["admin-sync"], timeout=TIMEOUT_S)
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.delete_topics(["admin-sync"], timeout=TIMEOUT_S)


def test_producer_and_consumer_round_trip_in_order(broker: Any) -> None:
    """Proves send, send_many and enqueue_many records come back, per partition in order,
    with keys and headers, through `for record in consumer`."""
    with Admin(broker.address) as admin:
        admin.create_topic("sync-rt", 2, timeout=TIMEOUT_S)
    with Producer(broker.address) as producer:
        first = producer.send("sync-rt", b"first", key=b"k", headers=[("h", b"v")], partition=0)
        assert (first.partition, first.offset) == (0, 0)
        metadata = producer.send_many(
            "sync-rt", [b"%d" % n for n in range(1000)], partition=1, timeout=TIMEOUT_S
        )
        assert [m.offset for m in metadata] == list(range(1000))
        handles = producer.enqueue_many(
            "sync-rt", [(b"a", b"x", None), (None, b"y", [("z", b"1")])], partition=0
        )
        producer.flush(timeout=TIMEOUT_S)
        assert [h.result(timeout=TIMEOUT_S).offset for h in handles] == [1, 2]
        assert producer.partitions_for("sync-rt") == [0, 1]
    with Consumer(broker.address) as consumer:
        consumer.assign(["sync-rt"], timeout=TIMEOUT_S)
        consumer.seek_to_beginning(timeout=TIMEOUT_S)
        by_partition: dict[int, list[Any]] = {0: [], 1: []}
        records = list(consumer.records(idle_timeout=2.0))
        assert len(records) == 1003
        for record in records:
            by_partition[0 if record.value in (b"first", b"x", b"y") else 1].append(record)
        assert [r.value for r in by_partition[0]] == [b"first", b"x", b"y"]
        assert by_partition[0][0].key == b"k" and by_partition[0][0].headers == (("h", b"v"),)
        assert [r.value for r in by_partition[1]] == [b"%d" % n for n in range(1000)]
        assert consumer.position(TopicPartition("sync-rt", 1), timeout=TIMEOUT_S) == 1000


def test_iteration_and_seek_and_position(broker: Any) -> None:
    """Proves `for record in consumer` blocks for new records and seek rewinds it."""
    with Admin(broker.address) as admin:
        admin.create_topic("sync-iter", timeout=TIMEOUT_S)
    tp = TopicPartition("sync-iter", 0)
    with Producer(broker.address) as producer, Consumer(broker.address) as consumer:
        producer.send_many("sync-iter", [b"a", b"b", b"c"], timeout=TIMEOUT_S)
        consumer.assign([tp])
        consumer.seek(tp, 1)
        iterator = iter(consumer)
        assert next(iterator).value == b"b"
        assert consumer.position(tp) == 2
        assert next(iterator).value == b"c"

        def later() -> None:
            time.sleep(0.3)
            producer.send("sync-iter", b"d", timeout=TIMEOUT_S)

        thread = threading.Thread(target=later)
        thread.start()
        assert next(iterator).value == b"d"  # blocks until the record is produced
        thread.join(TIMEOUT_S)
        consumer.seek(tp, 0)
        assert [r.value for r in consumer.records(max_records=2)] == [b"a", b"b"]
        batches = consumer.getmany(timeout_ms=2_000)
        assert [r.value for r in batches[tp]][:2] == [b"c", b"d"]
        offsets = consumer.list_offsets({tp: -1}, timeout=TIMEOUT_S)
        assert offsets[tp] == 4


def test_idle_records_iterator_stops_and_timeouts_raise(broker: Any) -> None:
    """Proves records(idle_timeout=) returns when nothing arrives and timeout= raises a
    typed RequestTimedOutError when a call cannot finish in time."""
    with Admin(broker.address) as admin:
        admin.create_topic("sync-idle", timeout=TIMEOUT_S)
    with Consumer(broker.address) as consumer:
        consumer.assign(["sync-idle"])
        started = time.monotonic()
        assert list(consumer.records(idle_timeout=0.5)) == []
        assert time.monotonic() - started < 5.0
    # A broker that accepts connections but never answers (stopped, not gone): the
    # call cannot finish in time.  A broker that is gone fails fast instead.
    broker.process.send_signal(signal.SIGSTOP)
    try:
        with (
            Producer(broker.address, retries_max=0, reconnect_attempts_max=1) as producer,
            pytest.raises(RequestTimedOutError),
        ):
            producer.send("sync-idle", b"x", timeout=0.5)
    finally:
        broker.process.send_signal(signal.SIGCONT)


def test_unknown_topic_raises_typed_error(broker: Any) -> None:
    """Proves errors of the async client surface unchanged through the portal."""
    with Producer(broker.address) as producer, pytest.raises(UnknownTopicOrPartitionError):
        producer.send("no-such-topic", b"x", timeout=TIMEOUT_S)


def test_copy_topic_example(broker: Any) -> None:
    """Proves examples/copy_topic.py copies every record, key and header to the same partition."""
    with Admin(broker.address) as admin:
        admin.create_topic("copy-src", 2, timeout=TIMEOUT_S)
        admin.create_topic("copy-dst", 2, timeout=TIMEOUT_S)
    with Producer(broker.address) as producer:
        for partition in (0, 1):
            producer.enqueue_many(
                "copy-src",
                [(b"k%d" % n, b"v%d-%d" % (partition, n), [("n", b"%d" % n)]) for n in range(300)],
                partition=partition,
            )
        producer.flush(timeout=TIMEOUT_S)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTARY_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "examples" / "copy_topic.py"),
            "copy-src",
            "copy-dst",
            "--bootstrap",
            broker.address,
            "--idle-timeout",
            "1",
        ],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"copied 600 records" in result.stderr
    with Consumer(broker.address) as consumer:
        consumer.assign(["copy-dst"])
        consumer.seek_to_beginning()
        copied: dict[int, list[tuple[bytes | None, bytes | None, Any]]] = {0: [], 1: []}
        while sum(map(len, copied.values())) < 600:
            batches = consumer.getmany(timeout_ms=5_000)
            assert batches, "copied records did not arrive"
            for tp, records in batches.items():
                copied[tp.partition].extend((r.key, r.value, r.headers) for r in records)
    for partition in (0, 1):
        assert copied[partition] == [
            (b"k%d" % n, b"v%d-%d" % (partition, n), (("n", b"%d" % n),)) for n in range(300)
        ]


@pytest.mark.parametrize(
    ("source", "bootstrap_of", "needle"),
    [
        ("no-such-topic", lambda address: address, "unknown topic 'no-such-topic'"),
        ("copy-src", lambda address: "127.0.0.1:x", "port 'x' is not a number"),
    ],
)
def test_copy_topic_example_failures_are_one_line(
    broker: Any, source: str, bootstrap_of: Any, needle: str
) -> None:
    """Proves examples/copy_topic.py pointed at a missing topic or a malformed address
    says so in one line and exits 1 (no traceback)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTARY_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "examples" / "copy_topic.py"),
            source,
            "copy-dst",
            "--bootstrap",
            bootstrap_of(broker.address),
        ],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert stderr.strip().splitlines() == [f"copy_topic: {stderr.strip().split(': ', 1)[1]}"]
    assert needle in stderr and "Traceback" not in stderr


def test_a_malformed_bootstrap_is_a_plain_value_error() -> None:
    """Proves a bad bootstrap address raises AddressError (a ValueError) that a plain
    ``except ValueError`` catches, not an exception group out of a task group."""
    try:
        Admin("127.0.0.1:99999")
    except ValueError as error:
        assert "out of range" in str(error)
    else:
        raise AssertionError("no error for port 99999")
