"""The sink stage: ``iot.valid``, ``iot.agg.1m`` and ``iot.alerts`` -> SQLite, exactly.

A member of the consumer group ``iot-sink`` writes each consumed batch in one
database transaction of idempotent inserts (``INSERT ... ON CONFLICT DO
NOTHING`` on the natural keys: (device, seq) for readings, (device,
window_start) for windows, (device, rule, alert_key) for alerts), and commits
the group's offsets only after the transaction committed.  A crash between the
two re-delivers the batch; its rows are already there and are not inserted
again, so the database ends exactly as if each record had been written once.

Stalls: the connection does not wait for locks inside SQLite (``timeout=0``,
which would block the event loop and with it the group's heartbeats).  When
another process holds the database (``BEGIN EXCLUSIVE`` from outside, as the
demo's sink-stall fault does), the transaction is rolled back and retried with
a growing pause until it goes through; nothing is committed to the group
meanwhile, and nothing is lost or written twice.

The database is in WAL mode with ``synchronous=NORMAL``: a committed
transaction survives a crash of this process (the fault model here); a power
loss may lose the last transactions, which the group then re-delivers only if
their offsets were not committed yet.

:func:`dump` prints every table in key order: two databases built from the
same records have the same dump (the replay check).

``iot_e2e_latency_seconds`` observes, per reading, the time from the bridge's
``iot-received-ns`` stamp to the commit of the reading's transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import click
import msgspec
import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram

from client import Consumer, TopicPartition
from examples.iot import names, stage
from examples.iot.consume import (
    BATCH_RECORDS_MAX_DEFAULT,
    Batch,
    commit_offsets,
    consume_loop,
    header_value,
    next_offsets,
)
from examples.iot.schema import aggregate_decoder, alert_decoder, reading_decoder

log = structlog.get_logger("examples.iot.sink")

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS readings (
    device TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    temperature_c REAL NOT NULL, humidity_pct REAL NOT NULL, battery_v REAL NOT NULL,
    schema_version INTEGER NOT NULL,
    PRIMARY KEY (device, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS windows (
    device TEXT NOT NULL, window_start INTEGER NOT NULL, count INTEGER NOT NULL,
    temperature_c_min REAL NOT NULL, temperature_c_max REAL NOT NULL,
    temperature_c_mean REAL NOT NULL, humidity_pct_mean REAL NOT NULL,
    site TEXT, model TEXT,
    PRIMARY KEY (device, window_start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    device TEXT NOT NULL, rule TEXT NOT NULL, alert_key INTEGER NOT NULL,
    ts REAL NOT NULL, value REAL NOT NULL, threshold REAL NOT NULL,
    PRIMARY KEY (device, rule, alert_key)) WITHOUT ROWID;
"""
# Table -> (the insert of one struct's fields in order, the key order for dump()).
TABLES: Final[dict[str, tuple[str, str]]] = {
    "readings": (
        "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        "device, seq",
    ),
    "windows": (
        "INSERT INTO windows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        "device, window_start",
    ),
    "alerts": (
        "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        "device, rule, alert_key",
    ),
}
TOPIC_TABLES: Final[dict[str, tuple[str, msgspec.json.Decoder[Any]]]] = {
    names.VALID_TOPIC: ("readings", reading_decoder),
    names.AGG_TOPIC: ("windows", aggregate_decoder),
    names.ALERTS_TOPIC: ("alerts", alert_decoder),
}
# Pauses between attempts while the database is locked by someone else: doubling
# from 20 ms to 1 s, so a 5 s stall costs at most about a second more.
LOCKED_RETRY_FIRST_S: Final = 0.02
LOCKED_RETRY_MAX_S: Final = 1.0
LATENCY_BUCKETS_S: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class SinkMetrics:
    """The stage's metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        rows = Counter(
            "iot_sink_rows_written_total",
            "Rows inserted into the database (duplicates not counted), by table.",
            ["table"],
            registry=registry,
        )
        self.rows = {table: rows.labels(table=table) for table in TABLES}
        self.undecodable = Counter(
            "iot_sink_undecodable_total",
            "Records that did not decode into their table's struct (skipped).",
            registry=registry,
        )
        self.locked_retries = Counter(
            "iot_sink_locked_retries_total",
            "Transactions retried because another process held the database.",
            registry=registry,
        )
        self.write_duration = Histogram(
            "iot_sink_write_duration_seconds",
            "Time to write and commit one batch's transaction (lock waits excluded).",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.e2e_latency = Histogram(
            "iot_e2e_latency_seconds",
            "Bridge receive (iot-received-ns) to sink commit, per reading.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (creating if needed) the sink database; transactions are explicit."""
    connection = sqlite3.connect(str(path), timeout=0, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(SCHEMA)
    return connection


def is_locked(error: sqlite3.OperationalError) -> bool:
    """True for SQLITE_BUSY / SQLITE_LOCKED: someone else holds the database."""
    message = str(error)
    return "database is locked" in message or "database table is locked" in message


class Rows:
    """A batch turned into rows per table, and the readings' received stamps."""

    def __init__(self) -> None:
        self.by_table: dict[str, list[tuple[Any, ...]]] = {table: [] for table in TABLES}
        self.received_ns: list[int] = []
        self.undecodable = 0

    def add(self, tp: TopicPartition, records: Iterable[Any]) -> None:
        table_decoder = TOPIC_TABLES.get(tp.topic)
        if table_decoder is None:
            return
        table, decoder = table_decoder
        rows = self.by_table[table]
        astuple = msgspec.structs.astuple
        readings = table == "readings"
        for record in records:
            try:
                rows.append(astuple(decoder.decode(record.value or b"")))
            except msgspec.DecodeError:
                self.undecodable += 1
                continue
            if readings:
                received = header_value(record, names.RECEIVED_NS_HEADER)
                if received is not None and received.isdigit():
                    self.received_ns.append(int(received))


def write_rows(connection: sqlite3.Connection, rows: Rows) -> dict[str, int]:
    """One transaction inserting ``rows``; returns the rows inserted per table.
    Raises sqlite3.OperationalError (rolled back) when the database is locked."""
    try:
        connection.execute("BEGIN IMMEDIATE")
        inserted: dict[str, int] = {}
        for table, table_rows in rows.by_table.items():
            if table_rows:
                cursor = connection.executemany(TABLES[table][0], table_rows)
                inserted[table] = max(cursor.rowcount, 0)
        connection.execute("COMMIT")
    except sqlite3.OperationalError:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return inserted


async def write_until_done(
    connection: sqlite3.Connection, rows: Rows, metrics: SinkMetrics
) -> dict[str, int]:
    """:func:`write_rows`, retried while another process holds the database.
    Raises sqlite3 errors other than a lock."""
    pause_s = LOCKED_RETRY_FIRST_S
    while True:  # until the lock holder lets go; the group's heartbeats go on meanwhile
        started = time.perf_counter()
        try:
            inserted = write_rows(connection, rows)
        except sqlite3.OperationalError as error:
            if not is_locked(error):
                raise
            metrics.locked_retries.inc()
            log.info("database locked, retrying", pause_s=pause_s)
            await trio.sleep(pause_s)
            pause_s = min(pause_s * 2, LOCKED_RETRY_MAX_S)
            continue
        metrics.write_duration.observe(time.perf_counter() - started)
        return inserted


def dump(path: Path | str) -> str:
    """Every table of the sink database at ``path``, rows in key order, one row a
    line (floats as ``repr``: exact).  Equal databases give equal dumps."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        lines: list[str] = []
        for table, (_insert, key) in TABLES.items():
            lines.append(f"# {table}")
            for row in connection.execute(f"SELECT * FROM {table} ORDER BY {key}"):
                lines.append("\t".join(repr(value) for value in row))
        return "\n".join(lines) + "\n"
    finally:
        connection.close()


async def run(
    bootstrap: str,
    stop: trio.Event,
    *,
    db_path: Path | str,
    registry: CollectorRegistry | None = None,
    session_timeout_ms: int | None = None,
    batch_records_max: int = BATCH_RECORDS_MAX_DEFAULT,
) -> None:
    """Sink until ``stop`` is set.  Raises sqlite3 errors other than a lock."""
    metrics = SinkMetrics(registry if registry is not None else CollectorRegistry())
    connection = connect(db_path)
    try:
        async with Consumer(
            bootstrap,
            client_id="iot-sink",
            group=names.SINK_GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
        ) as consumer:
            if registry is not None:
                consumer.register_metrics(registry, {"client": "sink"})
            await consumer.subscribe(list(TOPIC_TABLES))

            async def process(batch: Batch) -> None:
                if not batch:
                    return
                rows = Rows()
                for tp, records in batch.items():
                    rows.add(tp, records)
                inserted = await write_until_done(connection, rows, metrics)
                await commit_offsets(consumer, next_offsets(batch))
                now_ns = time.time_ns()
                observe = metrics.e2e_latency.observe
                for received_ns in rows.received_ns:
                    observe((now_ns - received_ns) / 1e9)
                for table, count in inserted.items():
                    metrics.rows[table].inc(count)
                if rows.undecodable:
                    metrics.undecodable.inc(rows.undecodable)

            log.info("sinking", bootstrap=bootstrap, db=str(db_path))
            await consume_loop(consumer, process, stop, batch_records_max=batch_records_max)
    finally:
        connection.close()


@click.command("sink")
@stage.bootstrap_option
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The SQLite database file (created if absent).",
)
@stage.metrics_port_option
def command(bootstrap: str, db_path: Path, metrics_port: int) -> None:
    """iot.valid, iot.agg.1m, iot.alerts -> SQLite, idempotently."""
    registry = CollectorRegistry()
    stage.serve_metrics(registry, port=metrics_port)
    stage.run_stage(lambda stop: run(bootstrap, stop, db_path=db_path, registry=registry))
