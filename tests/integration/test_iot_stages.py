"""The IoT pipeline's log-side stages (validate, aggregate, alerts, sink) against a real
``distributary serve``: hand-made raw records in, dead letters, deduplication,
aggregates, sink rows, commits after the database commit, a killed validate member,
a killed sink, and a replay into a fresh database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry

from broker.testing import BrokerProcess
from client import Admin, Consumer, Producer, Record, TopicPartition, partition_for_key
from examples.iot import aggregate, alerts, names, sink, validate
from examples.iot.ledger import ReferenceWindows, Values
from examples.iot.schema import reading_decoder
from examples.iot.topology import create_topics

REPO = Path(__file__).resolve().parents[2]
T0 = 1_765_000_020  # a minute boundary
RECEIVED_NS = b"1765000000000000000"
TEMP_MAX_C = 30.0


def v2(device: str, seq: int, ts: float, temperature_c: float = 21.5, **changes: Any) -> bytes:
    document = {
        "v": 2,
        "device": device,
        "seq": seq,
        "ts": ts,
        "temperature_c": temperature_c,
        "humidity_pct": 40.0 + seq % 7,
        "battery_v": 3.7,
        **changes,
    }
    return json.dumps(document).encode()


def v1(device: str, seq: int, ts: float, temp_f: float = 70.7) -> bytes:
    document = {
        "v": 1,
        "id": device,
        "n": seq,
        "t": round(ts * 1000),
        "temp_f": temp_f,
        "hum": 41.0,
        "bat_mv": 3700,
    }
    return json.dumps(document).encode()


async def produce(bootstrap: str, topic: str, items: list[tuple[str, bytes]]) -> None:
    """Produce (key, value) pairs with the bridge's received header, acknowledged."""
    async with Producer(bootstrap) as producer:
        for key, value in items:
            await producer.enqueue(topic, value, key, [(names.RECEIVED_NS_HEADER, RECEIVED_NS)])
        await producer.flush()
        assert producer.failed_batches == 0


async def read_topic(bootstrap: str, topic: str) -> list[tuple[int, Record[Any]]]:
    """Every record of ``topic`` now, as (partition, record), per partition in order."""
    async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        await consumer.assign([topic])
        tps = sorted(consumer.assignment())
        ends = await consumer.list_offsets(dict.fromkeys(tps, -1))
        found: list[tuple[int, Record[Any]]] = []
        with trio.fail_after(10):
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    found.extend((tp.partition, record) for record in records)
    return sorted(found, key=lambda item: (item[0], item[1].offset))


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    """Until ``condition()`` holds (checked every 50 ms), or fail after ``timeout_s``."""
    with trio.fail_after(timeout_s):
        while not await condition():
            await trio.sleep(0.05)


def headers_of(record: Record[Any]) -> dict[str, bytes]:
    return dict(record.headers)


def counter(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_validate_dead_letters_upgrades_and_deduplicates(broker: BrokerProcess) -> None:
    """Proves validate forwards valid v2 and upgraded v1 readings once, drops the
    duplicate, and dead-letters each invalid kind with its original bytes, reason,
    detail and source coordinates (and the received stamp), committing its offsets."""
    bootstrap = broker.address
    await create_topics(bootstrap)
    invalid = {
        names.DLQ_MALFORMED: ("dev-a", b'{"v":2,"device":"dev-a",'),
        names.DLQ_UNKNOWN_SCHEMA_VERSION: ("dev-b", v2("dev-b", 1, T0, v=3)),
        names.DLQ_OUT_OF_RANGE: ("dev-b", v2("dev-b", 2, T0, temperature_c=120.0)),
        names.DLQ_DEVICE_MISMATCH: ("dev-a", v2("dev-b", 3, T0)),
    }
    raw = [
        ("dev-a", v2("dev-a", 1, T0 + 1)),
        ("dev-a", v2("dev-a", 2, T0 + 2)),
        ("dev-a", v2("dev-a", 2, T0 + 2)),  # a re-sent duplicate
        ("dev-c", v1("dev-c", 1, T0 + 1)),
        *invalid.values(),
        ("dev-c", v1("dev-c", 2, T0 + 2)),
        ("dev-a", b"not json at all"),
    ]
    await produce(bootstrap, names.RAW_TOPIC, raw)
    registry = CollectorRegistry()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: validate.run(bootstrap, stop, registry=registry))

        async def all_validated() -> bool:
            return counter(registry, "iot_validate_records_total", result="invalid") >= 5

        await wait_until(all_validated)
        stop.set()

    valid = [
        reading_decoder.decode(r.value) for _p, r in await read_topic(bootstrap, names.VALID_TOPIC)
    ]
    assert sorted((r.device, r.seq, r.source_version) for r in valid) == [
        ("dev-a", 1, 2),
        ("dev-a", 2, 2),
        ("dev-c", 1, 1),
        ("dev-c", 2, 1),
    ]
    assert next(r for r in valid if r.device == "dev-c").temperature_c == (70.7 - 32) * 5 / 9

    raw_records = {(p, r.offset): r for p, r in await read_topic(bootstrap, names.RAW_TOPIC)}
    dead = await read_topic(bootstrap, names.DLQ_TOPIC)
    reasons = sorted(headers_of(r)[names.DLQ_REASON_HEADER].decode() for _p, r in dead)
    assert reasons == sorted([*invalid, names.DLQ_MALFORMED])
    for _partition, record in dead:
        headers = headers_of(record)
        assert headers[names.SOURCE_TOPIC_HEADER] == names.RAW_TOPIC.encode()
        source = raw_records[
            (int(headers[names.SOURCE_PARTITION_HEADER]), int(headers[names.SOURCE_OFFSET_HEADER]))
        ]
        assert record.value == source.value and record.key == source.key
        assert headers[names.DLQ_DETAIL_HEADER] and b"\n" not in headers[names.DLQ_DETAIL_HEADER]
        assert headers[names.RECEIVED_NS_HEADER] == RECEIVED_NS

    assert counter(registry, "iot_validate_records_total", result="valid") == 4
    assert counter(registry, "iot_validate_records_total", result="duplicate") == 1
    assert counter(registry, "iot_dlq_records_total", reason=names.DLQ_MALFORMED) == 2
    assert counter(registry, "iot_dlq_records_total", reason=names.DLQ_DEVICE_MISMATCH) == 1
    async with Admin(bootstrap) as admin:
        committed = await admin.committed_offsets(names.VALIDATE_GROUP)
    ends = {}
    for p, r in raw_records:
        ends[p] = max(ends.get(p, 0), r + 1)
    assert {tp.partition: offset for tp, offset in committed.items()} == ends


def raw_readings() -> tuple[
    list[tuple[str, bytes]], list[tuple[str, bytes]], ReferenceWindows, int
]:
    """Readings of three devices over five minutes of event time (one on v1
    firmware), with out-of-order pairs, a reading that arrives in its window's grace
    period after the next window opened, re-sent duplicates, one late reading and
    some too hot: split in two halves (the first ends after every device's first
    window closed); and the oracle's windows and the number of temperature_high
    alerts."""
    oracle = ReferenceWindows(partition_of=lambda d: partition_for_key(d.encode(), 4))
    per_device: dict[str, list[tuple[str, int, float, bytes, float, float]]] = {}
    for device in ("dev-0", "dev-1", "dev-2"):
        readings = []
        for seq in range(1, 32):
            ts = T0 + (seq - 1) * 10 + 0.25
            temperature_c = 20.0 + (seq % 5) * 3.0  # 20..32: seq % 5 == 4 is too hot
            readings.append((seq, ts, temperature_c))
        readings[4], readings[5] = readings[5], readings[4]  # out of order
        readings.insert(9, (50, T0 + 58.0, 22.0))  # after ts T0+80: in its window's grace
        readings.append((99, T0 + 3, 25.0))  # late: its window is long closed
        entries = per_device[device] = []
        for seq, ts, temperature_c in readings:
            if device == "dev-2":
                temp_f = temperature_c * 9 / 5 + 32
                payload = v1(device, seq, ts, temp_f)
                temperature_c, humidity = (temp_f - 32) * 5 / 9, 41.0
            else:
                payload = v2(device, seq, ts, temperature_c)
                humidity = 40.0 + seq % 7
            entries.append((device, seq, ts, payload, temperature_c, humidity))
    first: list[tuple[str, bytes]] = []
    second: list[tuple[str, bytes]] = []
    hot = 0
    for step in zip(*per_device.values()):  # devices interleaved, as they send
        for device, seq, ts, payload, temperature_c, humidity in step:
            raw = first if ts < T0 + 120 else second
            raw.append((device, payload))
            if seq % 10 == 3:
                raw.append((device, payload))  # re-sent
            oracle.add(device, seq, ts, Values(temperature_c, humidity, 3.7))
            hot += temperature_c > TEMP_MAX_C
    return first, second, oracle, hot


async def sink_counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return dict.fromkeys(sink.TABLES, 0)
    connection = sink.sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in sink.TABLES
        }
    except sink.sqlite3.OperationalError:
        return dict.fromkeys(sink.TABLES, 0)
    finally:
        connection.close()


async def test_stages_end_to_end_with_a_killed_sink_and_a_replay(
    broker: BrokerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proves validate -> aggregate/alerts -> sink end to end: the sink holds each
    valid reading once, the windows the oracle closes (enriched from the registry,
    the late reading dropped), the too-hot alerts; an aggregate stopped half-way
    and restarted emits no window twice; a sink killed after its database commit
    but before its offset commit resumes with exact rows; and replaying the sink
    group from the beginning into a fresh database gives an identical dump."""
    bootstrap = broker.address
    await create_topics(bootstrap)
    first, second, oracle, hot = raw_readings()
    registry_entries = [
        (d, json.dumps({"device": d, "site": "plant-1", "model": "TX-9", "firmware": 2,
                        "temp_max_c": TEMP_MAX_C}).encode())
        for d in ("dev-0", "dev-1", "dev-2")
    ]  # fmt: skip
    await produce(bootstrap, names.DEVICES_TOPIC, registry_entries)
    await produce(bootstrap, names.RAW_TOPIC, first)
    expected = {"readings": 3 * 33, "windows": len(oracle.closed), "alerts": hot}
    assert len(oracle.late) == 3 and expected["windows"] == 12 and hot > 0

    db = tmp_path / "sink.db"
    stops = {name: trio.Event() for name in ("validate", "aggregate", "alerts", "sink")}
    aggregate_registry = CollectorRegistry()
    sink_commits = 0
    killed = trio.Event()
    real_commit = sink.commit_offsets

    async def commit_then_die_on_third(*args: Any, **kwargs: Any) -> bool:
        nonlocal sink_commits
        sink_commits += 1
        if sink_commits == 3:  # the database has committed this batch; the group has not
            killed.set()
            await trio.sleep_forever()
        return await real_commit(*args, **kwargs)

    monkeypatch.setattr(sink, "commit_offsets", commit_then_die_on_third)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: validate.run(bootstrap, stops["validate"], batch_records_max=10))
        nursery.start_soon(lambda: alerts.run(bootstrap, stops["alerts"]))
        aggregate_done = trio.Event()
        nursery.start_soon(
            _run_in_scope,
            trio.CancelScope(),
            aggregate.run(
                bootstrap, stops["aggregate"], registry=aggregate_registry, batch_records_max=5
            ),
            aggregate_done,
        )

        async def some_windows() -> bool:
            return counter(aggregate_registry, "iot_aggregate_windows_closed_total") >= 3

        await wait_until(some_windows)
        stops["aggregate"].set()  # graceful: finishes its batch and commits
        sink_scope = trio.CancelScope()
        sink_done = trio.Event()
        nursery.start_soon(
            _run_in_scope,
            sink_scope,
            sink.run(bootstrap, stops["sink"], db_path=db, batch_records_max=7),
            sink_done,
        )
        with trio.fail_after(20):
            await killed.wait()
        async with Admin(bootstrap) as admin:
            committed = await admin.committed_offsets(names.SINK_GROUP)
        written = await sink_counts(db)
        sink_scope.cancel()  # killed between its database commit and its offset commit
        with trio.fail_after(10):
            await sink_done.wait()
            await aggregate_done.wait()
        assert sum(written.values()) > sum(committed.values())

        monkeypatch.setattr(sink, "commit_offsets", real_commit)
        await produce(bootstrap, names.RAW_TOPIC, second)
        stops["aggregate"] = trio.Event()
        nursery.start_soon(
            lambda: aggregate.run(bootstrap, stops["aggregate"], batch_records_max=5)
        )
        nursery.start_soon(lambda: sink.run(bootstrap, stops["sink"], db_path=db))

        async def all_written() -> bool:
            return await sink_counts(db) == expected

        await wait_until(all_written)
        for stop in stops.values():
            stop.set()

    windows = await read_topic(bootstrap, names.AGG_TOPIC)
    keys = [
        (json.loads(r.value)["device"], json.loads(r.value)["window_start"]) for _p, r in windows
    ]
    assert sorted(keys) == sorted(oracle.closed), "each closed window emitted exactly once"
    connection = sink.sqlite3.connect(db)
    rows = {(row[0], row[1]): row[2:] for row in connection.execute("SELECT * FROM windows")}
    for key, result in oracle.closed.items():
        assert rows[key] == (
            result.count,
            result.temperature_min_c,
            result.temperature_max_c,
            result.temperature_mean_c,
            result.humidity_mean_pct,
            "plant-1",
            "TX-9",
        )
    late = connection.execute("SELECT count(*) FROM readings WHERE seq = 99").fetchone()[0]
    assert late == 3  # the late readings are valid readings, only the windows drop them
    connection.close()

    replay_db = tmp_path / "replay.db"
    async with Admin(bootstrap) as admin:
        offsets = {
            TopicPartition(topic, partition): 0
            for topic in sink.TOPIC_TABLES
            for partition in range(next(s.partitions for s in names.TOPICS if s.name == topic))
        }
        await admin.set_offsets(names.SINK_GROUP, offsets)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: sink.run(bootstrap, stop, db_path=replay_db))

        async def replayed() -> bool:
            return await sink_counts(replay_db) == expected

        await wait_until(replayed)
        stop.set()
    assert sink.dump(replay_db) == sink.dump(db)


async def _run_in_scope(scope: trio.CancelScope, work: Awaitable[None], done: trio.Event) -> None:
    try:
        with scope:
            await work
    finally:
        done.set()


async def test_killed_validate_member_partitions_move_to_the_survivor(
    broker: BrokerProcess,
) -> None:
    """Proves a validate member killed with SIGKILL loses its partitions to the
    surviving member after the session timeout, and every reading still gets through."""
    bootstrap = broker.address
    await create_topics(bootstrap)
    candidates = [f"dev-{n:05d}" for n in range(200)]
    devices = [  # four devices on each of the four partitions
        device
        for partition in range(4)
        for device in [d for d in candidates if partition_for_key(d.encode(), 4) == partition][:4]
    ]
    first = [(d, v2(d, 1, T0 + 1)) for d in devices]
    second = [(d, v2(d, 2, T0 + 2)) for d in devices]
    sibling = subprocess.Popen(
        [sys.executable, "-m", "examples.iot", "validate", "--bootstrap", bootstrap,
         "--member-name", "doomed", "--session-timeout-ms", "2000"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with Admin(bootstrap) as admin:

            async def sibling_joined() -> bool:
                try:
                    group = await admin.describe_group(names.VALIDATE_GROUP)
                except Exception:
                    return False
                return any(m.assignment for m in group.members)

            await wait_until(sibling_joined, timeout_s=30)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: validate.run(bootstrap, stop, member_name="survivor",
                                         session_timeout_ms=2000)
                )  # fmt: skip

                async def shared() -> bool:
                    group = await admin.describe_group(names.VALIDATE_GROUP)
                    return group.state == "stable" and all(
                        len(m.assignment) == 2 for m in group.members
                    ) and len(group.members) == 2  # fmt: skip

                await wait_until(shared)
                await produce(bootstrap, names.RAW_TOPIC, first)

                async def count_valid(n: int) -> bool:
                    return len(await read_topic(bootstrap, names.VALID_TOPIC)) >= n

                await wait_until(lambda: count_valid(len(first)))
                sibling.send_signal(signal.SIGKILL)
                sibling.wait(timeout=10)
                await produce(bootstrap, names.RAW_TOPIC, second)

                async def all_through() -> bool:
                    found = await read_topic(bootstrap, names.VALID_TOPIC)
                    seqs = {
                        (
                            reading_decoder.decode(r.value).device,
                            reading_decoder.decode(r.value).seq,
                        )
                        for _p, r in found
                    }
                    return len(seqs) == 2 * len(devices)

                await wait_until(all_through)
                group = await admin.describe_group(names.VALIDATE_GROUP)
                assert [len(m.assignment) for m in group.members] == [4]
                stop.set()
    finally:
        if sibling.poll() is None:
            sibling.kill()
            sibling.wait()
