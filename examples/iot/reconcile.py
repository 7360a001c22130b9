"""Check a finished run against its ground truth and write ``summary.json``.

Inputs, all in the run folder except the topics: the simulator's ledger (what
was sent, and which fault each publish carried; ledger.py derives the outcome a
correct pipeline must reach), the sink's SQLite database, the scraped metrics
(metrics.jsonl), the fault timeline (faults.jsonl), and the ``iot.raw`` and
``iot.dlq`` topics, read from the broker with the SDK.

What reached ``iot.raw`` is the reference for everything downstream: a payload
the ledger has and iot.raw lacks was lost at the MQTT hop (``lost_at_mqtt``;
allowed only when mosquitto was SIGKILLed), and the expected outcome is derived
from the ledger entries whose payload reached iot.raw.  Each check is
``{"ok": bool, "detail": ...}``; each scripted fault's expected outcome is the
conjunction of the checks it could break.  The run is ok when every check is.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import click
import trio

from client import Admin, Consumer, DistributaryError, TopicPartition
from examples.iot import faults as fault_names
from examples.iot.ledger import (
    GRACE_S_DEFAULT,
    ExpectedOutcome,
    LedgerEntry,
    ReferenceWindows,
    expected_outcome,
    first_send_order,
    payload_sha1,
    read_ledger,
    read_meta,
)
from examples.iot.names import (
    AGGREGATE_GROUP,
    DLQ_REASON_HEADER,
    DLQ_TOPIC,
    RAW_TOPIC,
)
from examples.iot.scrape import (
    bucket_delta,
    histogram_buckets,
    histogram_quantile,
    read_ticks,
    series_sum,
)
from examples.iot.sink import dump

WINDOWS_SAMPLED: Final = 5
VALUE_TOLERANCE: Final = 1e-9
TOPIC_READ_TIMEOUT_S: Final = 120.0
BROKER_START_TIMEOUT_S: Final = 30.0
MISMATCHES_SHOWN_MAX: Final = 5
# Seconds after a fault ends that still count as its aftermath (not "calm").
RECOVERY_S: Final = 15.0
# The first seconds of a run (connections, group joins) are not "calm" either.
WARMUP_S: Final = 5.0


class TopicRecord:
    """One record of a topic as the reconciler needs it."""

    __slots__ = ("headers", "key", "offset", "partition", "value")

    def __init__(
        self, partition: int, offset: int, key: bytes | None, value: bytes, headers: dict[str, str]
    ) -> None:
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers


async def read_topic(bootstrap: str, topic: str) -> list[TopicRecord]:
    """Every record of ``topic`` up to its current end, partition by partition
    in offset order.  Raises TimeoutError after TOPIC_READ_TIMEOUT_S."""
    async with Admin(bootstrap) as admin:
        (description,) = await admin.describe_topics([topic])
    ends = {TopicPartition(topic, p.partition): p.high_watermark for p in description.partitions}
    records: list[TopicRecord] = []
    if not any(ends.values()):
        return records
    async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        await consumer.assign(list(ends))
        remaining = {tp for tp, end in ends.items() if end > 0}
        with trio.fail_after(TOPIC_READ_TIMEOUT_S):
            while remaining:
                batch = await consumer.getmany(timeout_ms=1000, max_records=50_000)
                for tp, partition_records in batch.items():
                    for record in partition_records:
                        if record.offset >= ends[tp]:
                            break
                        records.append(
                            TopicRecord(
                                tp.partition,
                                record.offset,
                                record.key,
                                record.value or b"",
                                {k: v.decode(errors="replace") for k, v in record.headers},
                            )
                        )
                    if partition_records and partition_records[-1].offset >= ends[tp] - 1:
                        remaining.discard(tp)
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def _check(ok: bool, **detail: Any) -> dict[str, Any]:
    return {"ok": bool(ok), **detail}


def _last_values(ticks: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each target's last answered samples."""
    last: dict[str, dict[str, float]] = {}
    for tick in ticks:
        for target, samples in tick["targets"].items():
            if samples is not None:
                last[target] = samples
    return last


def stage_counter(
    last: dict[str, dict[str, float]], prefix: str, name: str, **labels: str
) -> float:
    """A counter summed over every process of a stage (targets named ``prefix``
    or ``prefix-N``), each at its last scrape."""
    return sum(
        series_sum(samples, name, **labels)
        for target, samples in last.items()
        if target == prefix or target.startswith(prefix + "-")
    )


def _read_rows(db_path: Path, table: str) -> list[sqlite3.Row]:
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        connection.row_factory = sqlite3.Row
        return list(connection.execute(f"SELECT * FROM {table}"))
    finally:
        connection.close()


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=VALUE_TOLERANCE, abs_tol=VALUE_TOLERANCE)


def check_readings(db_path: Path, expected: ExpectedOutcome) -> dict[str, Any]:
    """Rows in the sink equal the valid unique readings, values included."""
    rows = {(row["device"], row["seq"]): row for row in _read_rows(db_path, "readings")}
    wanted = expected.valid
    missing = sorted(set(wanted) - set(rows))
    extra = sorted(set(rows) - set(wanted))
    wrong = []
    for key in set(rows) & set(wanted):
        values = wanted[key].values
        row = rows[key]
        assert values is not None
        if not (
            _close(row["temperature_c"], values.temperature_c)
            and _close(row["humidity_pct"], values.humidity_pct)
            and _close(row["battery_v"], values.battery_v)
        ):
            wrong.append(key)
    return _check(
        not missing and not extra and not wrong,
        rows=len(rows),
        expected=len(wanted),
        missing=len(missing),
        extra=len(extra),
        wrong_values=len(wrong),
        examples=[list(k) for k in (missing + extra + sorted(wrong))[:MISMATCHES_SHOWN_MAX]],
    )


# The oracle's WindowResult field -> the sink's windows column.
WINDOW_FIELDS: Final = {
    "count": "count",
    "temperature_min_c": "temperature_c_min",
    "temperature_max_c": "temperature_c_max",
    "temperature_mean_c": "temperature_c_mean",
    "humidity_mean_pct": "humidity_pct_mean",
}


def check_windows(db_path: Path, expected: ExpectedOutcome, seed: int) -> dict[str, Any]:
    """Every window the oracle closed is in the sink with equal values, and the
    sink holds no window the oracle did not close; a few sampled for the summary."""
    rows = {(row["device"], row["window_start"]): row for row in _read_rows(db_path, "windows")}
    closed = expected.windows.closed
    missing = sorted(set(closed) - set(rows))
    extra = sorted(set(rows) - set(closed))
    wrong = []
    for key in sorted(set(rows) & set(closed)):
        result = closed[key]
        row = rows[key]
        if not all(
            _close(float(row[column]), float(getattr(result, field)))
            for field, column in WINDOW_FIELDS.items()
        ):
            wrong.append(key)
    sample_keys = random.Random(seed).sample(sorted(closed), min(WINDOWS_SAMPLED, len(closed)))
    sampled = []
    for key in sample_keys:
        result = closed[key]
        found = rows.get(key)
        sampled.append(
            {
                "device": key[0],
                "window_start": key[1],
                "expected": {f: getattr(result, f) for f in WINDOW_FIELDS},
                "sink": None
                if found is None
                else {field: found[column] for field, column in WINDOW_FIELDS.items()},
            }
        )
    return _check(
        not missing and not extra and not wrong,
        windows=len(rows),
        expected=len(closed),
        missing=len(missing),
        extra=len(extra),
        wrong_values=len(wrong),
        examples=[list(k) for k in (missing + extra + wrong)[:MISMATCHES_SHOWN_MAX]],
        sampled=sampled,
    )


def check_dead_letters(dlq: list[TopicRecord], expected: ExpectedOutcome) -> dict[str, Any]:
    """The dead letters (distinct payloads, per reason) equal the ledger's
    malformed and invalid publishes that reached iot.raw."""
    got: dict[str, set[str]] = {}
    for record in dlq:
        got.setdefault(record.headers.get(DLQ_REASON_HEADER, "?"), set()).add(
            payload_sha1(record.value)
        )
    reasons = sorted(set(got) | set(expected.dead_letters))
    by_reason = {
        reason: {
            "got": len(got.get(reason, set())),
            "expected": len(expected.dead_letters.get(reason, set())),
        }
        for reason in reasons
    }
    ok = all(got.get(r, set()) == expected.dead_letters.get(r, set()) for r in reasons)
    return _check(ok, records=len(dlq), by_reason=by_reason)


def check_order(
    raw: list[TopicRecord], entries: list[LedgerEntry], reached: set[str]
) -> dict[str, Any]:
    """Per device, the first occurrences in iot.raw follow the send order."""
    first_in_raw: dict[str, list[str]] = {}
    seen: set[str] = set()
    for record in raw:
        digest = payload_sha1(record.value)
        if digest in seen:
            continue
        seen.add(digest)
        device = (record.key or b"").decode(errors="replace")
        first_in_raw.setdefault(device, []).append(digest)
    wanted = {
        device: [digest for digest in digests if digest in reached]
        for device, digests in first_send_order(entries).items()
    }
    wanted = {device: digests for device, digests in wanted.items() if digests}
    out_of_order = sorted(
        d for d in set(wanted) | set(first_in_raw) if wanted.get(d) != first_in_raw.get(d)
    )
    return _check(
        not out_of_order,
        devices=len(first_in_raw),
        devices_out_of_order=len(out_of_order),
        examples=out_of_order[:MISMATCHES_SHOWN_MAX],
    )


def check_counters(
    ticks: list[dict[str, Any]],
    expected: ExpectedOutcome,
    ledger_by_fault: dict[str, int],
    *,
    validate_killed: bool,
    sim_lingers: bool,
) -> dict[str, Any]:
    """The scraped counters equal the ledger's counts.

    Some cannot be compared exactly, and say so: a SIGKILLed validate member's
    last counts die with it (and its records are re-read by another), so
    validate's counters are skipped after ``validate_killed``; dead letters are
    counted per arrival, so a payload MQTT re-sent counts twice (at least the
    ledger's); the simulator exits when done, so unless it ``sim_lingers``
    (keeps serving /metrics until stopped) its last scrape may miss its last
    second (at most the ledger's).
    """
    last = _last_values(ticks)
    rows: list[dict[str, Any]] = []

    def compare(name: str, got: float, want: float, mode: str = "equal") -> None:
        ok = {
            "equal": got == want,
            "at_least": got >= want,
            "at_most": got <= want,
            "skipped": True,
        }[mode]
        rows.append({"counter": name, "got": got, "expected": want, "mode": mode, "ok": ok})

    for fault, count in sorted(ledger_by_fault.items()):
        compare(
            f'iot_sim_published_total{{fault="{fault}"}}',
            stage_counter(last, "sim", "iot_sim_published_total", fault=fault),
            count,
            "equal" if sim_lingers else "at_most",
        )
    compare(
        'iot_sink_rows_written_total{table="readings"}',
        stage_counter(last, "sink", "iot_sink_rows_written_total", table="readings"),
        len(expected.valid),
    )
    compare(
        'iot_sink_rows_written_total{table="windows"}',
        stage_counter(last, "sink", "iot_sink_rows_written_total", table="windows"),
        expected.windows_closed,
    )
    compare(
        'iot_validate_records_total{result="valid"}',
        stage_counter(last, "validate", "iot_validate_records_total", result="valid"),
        len(expected.valid),
        "skipped" if validate_killed else "equal",
    )
    for reason, digests in sorted(expected.dead_letters.items()):
        compare(
            f'iot_dlq_records_total{{reason="{reason}"}}',
            stage_counter(last, "validate", "iot_dlq_records_total", reason=reason),
            len(digests),
            "skipped" if validate_killed else "at_least",
        )
    compare(
        "iot_aggregate_late_dropped_total",
        stage_counter(last, "aggregate", "iot_aggregate_late_dropped_total"),
        expected.late_dropped,
    )
    compare(
        "iot_aggregate_windows_closed_total",
        stage_counter(last, "aggregate", "iot_aggregate_windows_closed_total"),
        expected.windows_closed,
        "at_least",  # a window re-emitted after a re-read is counted again
    )
    return _check(all(row["ok"] for row in rows), counters=rows)


def _quantiles(buckets: list[tuple[float, float]]) -> dict[str, float | None]:
    p50 = histogram_quantile(0.50, buckets)
    p99 = histogram_quantile(0.99, buckets)
    return {
        "p50": None if p50 is None else round(p50, 4),
        "p99": None if p99 is None else round(p99, 4),
        "observations": buckets[-1][1] if buckets else 0,
    }


def latency_and_throughput(
    ticks: list[dict[str, Any]], duration_s: float, faults: Iterable[dict[str, Any]] = ()
) -> dict[str, Any]:
    """End-to-end latency p50/p99 from the sink's histogram, over the whole run
    and over the calm seconds only (past the first WARMUP_S, no fault in progress
    or ended in the last RECOVERY_S), and throughputs (the sink's while it was
    inserting, and when it had inserted its last row)."""
    last = _last_values(ticks)
    spans = [(f["start_t"], (f.get("end_t") or f["start_t"]) + RECOVERY_S) for f in faults]
    spans.append((-math.inf, WARMUP_S))
    calm: dict[float, float] = {}
    previous: list[tuple[float, float]] | None = None
    for tick in ticks:
        buckets = histogram_buckets(tick["targets"].get("sink"), "iot_e2e_latency_seconds")
        if not buckets:
            previous = None
            continue
        quiet = not any(start <= tick["t"] <= end for start, end in spans)
        if previous is not None and quiet:
            for bound, count in bucket_delta(buckets, previous):
                calm[bound] = calm.get(bound, 0.0) + count
        previous = buckets
    bridge_total = stage_counter(last, "bridge", "iot_bridge_produced_total")
    rows = [
        (
            tick["t"],
            series_sum(tick["targets"]["sink"], "iot_sink_rows_written_total", table="readings"),
        )
        for tick in ticks
        if tick["targets"].get("sink") is not None
    ]
    final = rows[-1][1] if rows else 0.0
    first_t = next((t for t, count in rows if count > 0), None)
    done_t = next((t for t, count in rows if count >= final), None)
    sink_span_s = done_t - first_t if first_t is not None and done_t is not None else 0.0
    return {
        "e2e_latency_s": {
            **_quantiles(histogram_buckets(last.get("sink"), "iot_e2e_latency_seconds")),
            "calm": _quantiles(sorted(calm.items())),
        },
        "throughput_per_s": {
            "bridge_produced": round(bridge_total / duration_s, 1) if duration_s else None,
            "sink_readings": round(final / sink_span_s, 1) if sink_span_s > 0 else None,
            "sink_last_row_t": done_t,
        },
    }


def _fault_outcomes(
    faults: Iterable[dict[str, Any]],
    checks: dict[str, dict[str, Any]],
    lost: int,
    mqtt_killed: bool,
) -> list[dict[str, Any]]:
    """Each scripted fault with its expected outcome and whether it held."""
    core = ["readings", "drained", "stages_exit_cleanly"]
    needs = {
        fault_names.MQTT_RESTART: [*core, "no_unexplained_loss"],
        fault_names.MQTT_KILL: ["drained", "stages_exit_cleanly"],
        fault_names.VALIDATE_KILL: [*core, "dead_letters"],
        fault_names.BROKER_RESTART: [*core, "no_unexplained_loss"],
        fault_names.SINK_STALL: [*core, "windows"],
    }
    outcomes = []
    for fault in faults:
        name = fault["name"]
        plan = fault_names.PLANS[name]
        wanted = needs.get(name, core)
        failed = [c for c in wanted if c in checks and not checks[c]["ok"]]
        outcome = {**fault, "expected": plan.expected, "ok": not failed, "failed_checks": failed}
        if name == fault_names.MQTT_KILL:
            outcome["lost_at_mqtt"] = lost
        outcomes.append(outcome)
    outcomes.append(
        {
            "name": fault_names.POISON,
            "expected": "dead-lettered, no stage crash-loops",
            "ok": checks["dead_letters"]["ok"] and checks["stages_exit_cleanly"]["ok"],
        }
    )
    return outcomes


async def reconcile_run(run_dir: Path, bootstrap: str, run: dict[str, Any]) -> dict[str, Any]:
    """Reconcile the run in ``run_dir`` (topics read from ``bootstrap``); write
    and return the summary.  ``run`` is what the demo recorded: config, drain,
    stage exit statuses, faults, replay.

    Raises OSError when a run file is missing, TimeoutError when a topic cannot
    be read.
    """

    ledger_path = run_dir / "ledger.jsonl"
    entries = list(read_ledger(ledger_path))
    meta = read_meta(ledger_path)
    raw = await read_topic(bootstrap, RAW_TOPIC)
    dlq = await read_topic(bootstrap, DLQ_TOPIC)
    ticks = read_ticks(run_dir / "metrics.jsonl")
    config = run.get("config", {})
    faults = [f["name"] for f in run.get("faults", [])]
    mqtt_killed = fault_names.MQTT_KILL in faults

    raw_digests = {payload_sha1(record.value) for record in raw}
    sent_digests = {entry.sha1 for entry in entries}
    lost = sorted(sent_digests - raw_digests)
    unknown_in_raw = len(raw_digests - sent_digests)
    reached_entries = [entry for entry in entries if entry.sha1 in raw_digests]
    grace_s = float(config.get("grace_s", GRACE_S_DEFAULT))
    expected = expected_outcome(reached_entries, meta, windows=ReferenceWindows(grace_s=grace_s))
    full = (
        expected_outcome(entries, meta, windows=ReferenceWindows(grace_s=grace_s))
        if lost
        else expected
    )

    checks: dict[str, dict[str, Any]] = {}
    checks["no_unexplained_loss"] = _check(
        (not lost or mqtt_killed) and unknown_in_raw == 0,
        lost_at_mqtt=len(lost),
        allowed=mqtt_killed,
        unknown_payloads_in_raw=unknown_in_raw,
    )
    checks["readings"] = check_readings(run_dir / "sink.db", expected)
    checks["dead_letters"] = check_dead_letters(dlq, expected)
    checks["per_device_order"] = check_order(raw, entries, raw_digests)
    checks["windows"] = check_windows(run_dir / "sink.db", expected, int(config.get("seed", 0)))
    checks["counters"] = check_counters(
        ticks,
        expected,
        full.published_by_fault,
        validate_killed=fault_names.VALIDATE_KILL in faults,
        sim_lingers=bool(run.get("sim_lingers")),
    )
    drain = run.get("drain", {})
    lags = drain.get("lags") or {}
    checks["drained"] = _check(
        bool(drain.get("drained"))
        and all(lag == 0 for group, lag in lags.items() if group != AGGREGATE_GROUP),
        **drain,
    )
    statuses = run.get("stage_exit_status", {})
    checks["stages_exit_cleanly"] = _check(
        all(status == 0 for status in statuses.values()), exit_status=statuses
    )
    if "replay" in run:
        original = dump(run_dir / "sink.db")
        replayed = dump(run_dir / "replay.db")
        checks["replay_identical"] = _check(
            original == replayed, dump_bytes=len(original), **run["replay"]
        )

    duration_s = float(config.get("duration_s", 0.0))
    summary: dict[str, Any] = {
        "ok": all(check["ok"] for check in checks.values()),
        "config": config,
        "counts": {
            "published": full.published,
            "published_by_fault": full.published_by_fault,
            "raw_records": len(raw),
            "raw_distinct_payloads": len(raw_digests),
            "valid_unique": len(expected.valid),
            "dead_letters_distinct": sum(len(d) for d in expected.dead_letters.values()),
            "dlq_records": len(dlq),
            "duplicates_sent": expected.duplicates,
            "late_dropped": expected.late_dropped,
            "windows_closed": expected.windows_closed,
            "silent_devices": len(expected.silent_devices),
        },
        "lost_at_mqtt": len(lost),
        **latency_and_throughput(ticks, duration_s, run.get("faults", [])),
        "checks": checks,
        "faults": _fault_outcomes(run.get("faults", []), checks, len(lost), mqtt_killed),
        "sim_exit_status": run.get("sim_status"),
        "sim_ended_t": run.get("sim_ended_t"),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


async def reconcile_folder(run_dir: Path) -> dict[str, Any]:
    """Reconcile a finished run again: start a broker on its data (a free port),
    read what the demo recorded (run.json), reconcile, stop the broker.

    Raises OSError when the run folder lacks a file, TimeoutError when the
    broker does not start.
    """
    from examples.iot.processes import ChildProcess, free_port

    run = json.loads((run_dir / "run.json").read_text())
    bootstrap = f"127.0.0.1:{free_port()}"
    broker = ChildProcess(
        "reconcile-broker",
        [
            sys.executable, "-m", "broker", "serve",
            "--data-dir", str(run_dir / "broker-data"),
            "--listen", bootstrap,
            "--metrics-listen", "off",
        ],
        run_dir / "logs" / "reconcile-broker.log",
    )  # fmt: skip
    await broker.start()
    try:
        with trio.fail_after(BROKER_START_TIMEOUT_S):
            while True:
                try:
                    async with Admin(bootstrap, reconnect_attempts_max=1) as admin:
                        await admin.list_topics()
                    break
                except (DistributaryError, OSError):
                    await trio.sleep(0.2)
        return await reconcile_run(run_dir, bootstrap, run)
    finally:
        with trio.CancelScope(shield=True):
            await broker.stop()


@click.command("reconcile")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, exists=True), required=True)
def command(run_dir: Path) -> None:
    """Check a finished run folder against its ledger again (starts a broker on
    the run's data); rewrites summary.json.  Exits 1 when a check fails."""
    summary = trio.run(reconcile_folder, run_dir)
    print(json.dumps({name: check["ok"] for name, check in summary["checks"].items()}, indent=2))
    if not summary["ok"]:
        sys.exit(1)
