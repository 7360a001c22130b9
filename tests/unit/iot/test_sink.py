"""examples/iot/sink.py without a broker: idempotent transactions, retry while another
process holds the database, and the ordered dump."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from prometheus_client import CollectorRegistry

from client import Record, TopicPartition
from client.records.decoder import BatchInfo
from examples.iot import names, sink
from examples.iot.schema import Alert, Reading, WindowAggregate, reading_encoder

BATCH = BatchInfo(base_offset=0, first_timestamp_ms=0, max_timestamp_ms=0)


def record(value: msgspec.Struct | bytes, received_ns: int = 0) -> Record[Any]:
    data = value if isinstance(value, bytes) else reading_encoder.encode(value)
    headers = ((names.RECEIVED_NS_HEADER, str(received_ns).encode()),) if received_ns else ()
    return Record(0, 0, b"k", data, headers, batch=BATCH)


def rows_of(*readings: Reading, windows: tuple[WindowAggregate, ...] = ()) -> sink.Rows:
    rows = sink.Rows()
    rows.add(TopicPartition(names.VALID_TOPIC, 0), [record(r, 5) for r in readings])
    rows.add(TopicPartition(names.AGG_TOPIC, 0), [record(w) for w in windows])
    return rows


def reading(seq: int, device: str = "dev-1") -> Reading:
    return Reading(device, seq, 1000.0 + seq, 20.5, 40.25, 3.7, source_version=1 + seq % 2)


def test_rows_are_inserted_once_whatever_the_redelivery() -> None:
    """Proves writing the same batch twice (a re-delivery after a crash) inserts the
    rows once, and that the counts returned are rows actually inserted."""
    connection = sink.connect(":memory:")
    window = WindowAggregate("dev-1", 960, 2, 20.0, 21.0, 20.5, 40.0, "plant", None)
    rows = rows_of(reading(1), reading(2), windows=(window,))
    assert sink.write_rows(connection, rows) == {"readings": 2, "windows": 1}
    assert sink.write_rows(connection, rows) == {"readings": 0, "windows": 0}
    assert sink.write_rows(connection, rows_of(reading(2), reading(3))) == {"readings": 1}
    assert connection.execute("SELECT count(*) FROM readings").fetchone() == (3,)
    assert rows.received_ns == [5, 5]


def test_undecodable_records_are_skipped_and_counted() -> None:
    """Proves a value that is not its table's struct is counted, not written."""
    rows = sink.Rows()
    rows.add(TopicPartition(names.ALERTS_TOPIC, 0), [record(b"{}"), record(b"nonsense")])
    assert rows.undecodable == 2 and rows.by_table["alerts"] == []


def test_dump_is_ordered_and_exact(tmp_path: Path) -> None:
    """Proves two databases with the same rows inserted in different orders dump the
    same, floats exactly."""
    alert = Alert("dev-1", "temperature_high", 7, 1.5, 0.1 + 0.2, 30.0)
    dumps = []
    for name, order in (("a.db", [3, 1, 2]), ("b.db", [2, 3, 1])):
        connection = sink.connect(tmp_path / name)
        rows = rows_of(*[reading(seq) for seq in order])
        rows.add(TopicPartition(names.ALERTS_TOPIC, 0), [record(alert)])
        sink.write_rows(connection, rows)
        connection.close()
        dumps.append(sink.dump(tmp_path / name))
    assert dumps[0] == dumps[1]
    assert "0.30000000000000004" in dumps[0]
    lines = dumps[0].splitlines()
    assert lines[0] == "# readings" and lines[1].startswith("'dev-1'\t1\t")


async def test_locked_database_is_retried_until_released(tmp_path: Path) -> None:
    """Proves a sink whose database is held with BEGIN EXCLUSIVE by another connection
    keeps retrying (without blocking the event loop) and writes exactly once after
    the lock is released."""
    db = tmp_path / "sink.db"
    connection = sink.connect(db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    registry = CollectorRegistry()
    metrics = sink.SinkMetrics(registry)
    result: dict[str, int] = {}

    async def write() -> None:
        result.update(await sink.write_until_done(connection, rows_of(reading(1)), metrics))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        with trio.fail_after(10):
            while registry.get_sample_value("iot_sink_locked_retries_total") == 0:
                await trio.sleep(0.01)
        assert result == {}
        holder.execute("COMMIT")
    assert result == {"readings": 1}
    assert connection.execute("SELECT count(*) FROM readings").fetchone() == (1,)
    holder.close()


def test_other_database_errors_are_raised(tmp_path: Path) -> None:
    """Proves an error that is not a lock is not retried (and leaves no transaction open)."""
    connection = sink.connect(tmp_path / "sink.db")
    connection.execute("DROP TABLE readings")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        sink.write_rows(connection, rows_of(reading(1)))
    assert not connection.in_transaction
