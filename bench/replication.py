"""Replication figures, three brokers beside one: ``python -m bench.replication``.

Three brokers (``distributary serve --cluster``, default settings, node ids 1-3,
each on its own loopback address 127.0.66.2-4 with its own data dir) over one etcd
on 127.0.0.1, fresh for each repetition; topics with replication factor 3 and
``min.insync.replicas`` 2; ``--size``-byte records; the client in this process
(the latency clients in two processes of their own).  Figures (``--figures``):

  produce   ``--n`` keyless records through one Producer (``linger_ms`` 5, one
            call per record: ``await enqueue`` and ``send_nowait``, then
            ``flush``; bench/cluster.py's code) to a topic of ``--partitions``
            partitions, with acks=all and with acks=leader, each to a new topic
            created once every replica is in sync; beside one broker (no etcd)
            with acks=leader, as its own figure is measured.  Records/s, the log
            ends checked to add up to ``--n``.
  latency   ``--lat-rate`` records/s for ``--lat-seconds`` (after
            ``--lat-warmup``) to one partition, producer timestamp to consumer
            receipt: bench/peers_compare.py's latency clients (a producer process
            enqueuing what is due, ``linger_ms=0``; a consumer process
            long-polling), with acks=all and acks=leader beside one broker.
            p50 / p99 / p99.9 / max, and the brokers' CPU.  A run during which a
            broker logged a disturbance (a lease lost, a follower cut from its
            leader, replicas fenced, a new leader) is flagged DISTURBED with
            those log lines: its latency is not the pipeline's own.
  kills     ``--kills`` SIGKILLs of a partition's leader on one cluster:
            unavailability (last acknowledged write before to first after),
            p50/p99/max, and a read-back check that no acknowledged record is
            missing (bench/replication_faults.py).
  catchup   a partition filled with ``--catchup-bytes``; ``--runs`` times a
            follower's data dir is wiped and it is timed until back in the ISR
            (bench/replication_faults.py).

produce and latency are medians over ``--runs`` repetitions (each value shown).
The load average is printed at the start and end: the machine's other work
shows in every figure.  Progress goes to stderr; the table to stdout, or with
``--json`` one JSON document instead.  The figures of docs/benchmarks.md:

    .venv/bin/python -m bench.replication --catchup-bytes 1000000000
    .venv/bin/python -m bench.replication --figures produce --runs 1 --n 100000   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

import structlog

from bench.cluster import log_ends, produce
from bench.cluster_processes import REAL_TIME_POLICIES, BenchError, Broker, running_cluster
from bench.peers_compare import latency_clients, load_peers
from bench.replication_faults import (
    HOSTS,
    MIN_INSYNC_REPLICAS,
    REPLICATION_FACTOR,
    TOPIC_CONFIGS,
    catchup,
    kills,
)
from broker.cluster.local_cluster import LocalClusterError, find_etcd
from client import Admin
from client.errors import DistributaryError
from client.producer import AcksSetting

FIGURE_NAMES: Final = ("produce", "latency", "kills", "catchup")
APIS: Final = ("enqueue", "send_nowait")
# (setup, label) of the table's columns, in order.
SETUPS: Final = (
    ("rf3_acks_all", "3 brokers, acks=all"),
    ("rf3_acks_leader", "3 brokers, acks=leader"),
    ("single", "1 broker, acks=leader"),
)
LATENCY_TOPIC: Final = "bench-latency"
# Broker log lines kept (and printed) per disturbed latency run.
DISTURBANCES_SHOWN_MAX: Final = 10
# A latency client is killed this long after its run should have ended.
LATENCY_GRACE_S: Final = 120
# Kafka's published figures (Kreps, 2014: three 6-core brokers).
KAFKA_RF3_ACKS_ALL_RPS: Final = 421_823
KAFKA_LATENCY_ACKS_1_MS: Final = (2.0, 3.0)


# -- one repetition ---------------------------------------------------------------------


async def produce_figures(
    bootstrap: list[str], cfg: argparse.Namespace, acks: AcksSetting, prefix: str
) -> dict[str, float]:
    """Records/s per API (topics ``prefix``-``acks``-API exist)."""
    row: dict[str, float] = {}
    for api in cfg.apis:
        topic = f"{prefix}-{acks}-{api}"
        rps, _ = await produce(bootstrap, topic, cfg, api, acks, cfg.partitions)
        row[f"produce_{api}_rps"] = rps
    return row


async def latency_figures(
    bootstrap: list[str],
    topic: str,
    acks: AcksSetting,
    cfg: argparse.Namespace,
    brokers: list[Broker],
) -> dict[str, Any]:
    """The latency clients against ``topic`` (one partition, exists).  Raises
    BenchError when a client fails or the consumer misses records."""
    settings = {
        "rate": cfg.lat_rate,
        "seconds": cfg.lat_seconds,
        "warmup": cfg.lat_warmup,
        "size": cfg.size,
        "address": ",".join(bootstrap),
        "topic": topic,
        "acks": acks,
    }
    limit_s = cfg.lat_warmup + cfg.lat_seconds + LATENCY_GRACE_S
    cpu_before = sum(b.cpu_s() for b in brokers)
    log_offsets = [b.log_bytes() for b in brokers]
    started = time.perf_counter()
    produced, consumed = await asyncio.to_thread(
        latency_clients, cfg.peers_dir_resolved, settings, limit_s
    )
    wall = time.perf_counter() - started
    if "error" in produced or "error" in consumed:
        raise BenchError(f"latency: {produced.get('error', '')} {consumed.get('error', '')}")
    expected = cfg.lat_rate * (cfg.lat_warmup + cfg.lat_seconds)
    if consumed["received"] != expected:
        raise BenchError(f"latency: received {consumed['received']} of {expected}")
    end = (await log_ends(bootstrap, topic, 1))[0]
    disturbances = [
        line for b, offset in zip(brokers, log_offsets) for line in b.disturbances_since(offset)
    ]
    if disturbances:
        log(f"latency {topic}, acks={acks}: DISTURBED ({len(disturbances)} broker log events):")
        for line in disturbances[:DISTURBANCES_SHOWN_MAX]:
            log(f"  {line}")
    return {
        "latency_p50_ms": consumed["p50_ms"],
        "latency_p99_ms": consumed["p99_ms"],
        "latency_p999_ms": consumed["p999_ms"],
        "latency_max_ms": consumed["max_ms"],
        "latency_rate": produced["achieved_rate"],
        "latency_log_end": end,
        "brokers_cpu_cores": (sum(b.cpu_s() for b in brokers) - cpu_before) / wall,
        "latency_disturbances": disturbances[:DISTURBANCES_SHOWN_MAX],
        "latency_disturbance_count": len(disturbances),
    }


async def cluster_run(directory: Path, cfg: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """One repetition on three fresh brokers: {setup: figures}."""
    rows: dict[str, dict[str, Any]] = {}
    async with running_cluster(directory, HOSTS) as cluster:
        for acks in ("all", "leader"):
            row: dict[str, Any] = {}
            if "produce" in cfg.figures:
                for api in cfg.apis:
                    await cluster.create_topic(
                        f"bench-{acks}-{api}", cfg.partitions, REPLICATION_FACTOR, TOPIC_CONFIGS
                    )
                row.update(await produce_figures(cluster.bootstrap, cfg, acks, "bench"))
            if "latency" in cfg.figures:
                topic = f"{LATENCY_TOPIC}-{acks}"
                await cluster.create_topic(topic, 1, REPLICATION_FACTOR, TOPIC_CONFIGS)
                row.update(
                    await latency_figures(cluster.bootstrap, topic, acks, cfg, cluster.brokers)
                )
            rows[f"rf3_acks_{acks}"] = row
    return rows


async def single_run(directory: Path, cfg: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """One repetition on one fresh broker, acks=leader: {"single": figures}."""
    broker = Broker(directory, 0, None)
    broker.start()
    row: dict[str, Any] = {}
    try:
        await broker.wait_listening()
        bootstrap = [broker.address]
        async with Admin(bootstrap) as admin:
            for api in cfg.apis if "produce" in cfg.figures else ():
                await admin.create_topic(f"bench-leader-{api}", cfg.partitions)
            if "latency" in cfg.figures:
                await admin.create_topic(LATENCY_TOPIC, 1)
        if "produce" in cfg.figures:
            row.update(await produce_figures(bootstrap, cfg, "leader", "bench"))
        if "latency" in cfg.figures:
            row.update(await latency_figures(bootstrap, LATENCY_TOPIC, "leader", cfg, [broker]))
    finally:
        broker.stop()
    return {"single": row}


# -- the report -------------------------------------------------------------------------

# (label, key, unit, format) of each produce/latency figure, in order.
FIGURES: Final = [
    ("produce, await enqueue per record", "produce_enqueue_rps", "records/s", "{:,.0f}"),
    ("produce, send_nowait per record", "produce_send_nowait_rps", "records/s", "{:,.0f}"),
    ("latency p50", "latency_p50_ms", "ms", "{:.2f}"),
    ("latency p99", "latency_p99_ms", "ms", "{:.2f}"),
    ("latency p99.9", "latency_p999_ms", "ms", "{:.2f}"),
    ("latency max", "latency_max_ms", "ms", "{:.2f}"),
    ("brokers' CPU during the latency run", "brokers_cpu_cores", "cores", "{:.2f}"),
]
KILL_SERIES: Final = [
    ("victim partition: last ack before -> first after", "victim_gap_ms"),
    ("partition whose follower died: same", "follower_side_gap_ms"),
    ("kill -> a survivor names a new leader", "kill_to_new_leader_ms"),
    ("killed broker restarted -> all in sync", "restart_to_in_sync_ms"),
    ("victim partition while it rejoins: longest gap", "victim_rejoin_gap_ms"),
    ("partition whose follower rejoins: same", "follower_side_rejoin_gap_ms"),
]


def medians(runs: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (figure, setup) present: its median and every run's value."""
    found = []
    for _, key, unit, _ in FIGURES:
        for setup, _ in SETUPS:
            values = [run[setup][key] for run in runs if key in run.get(setup, {})]
            if values:
                row = {"figure": key, "setup": setup, "unit": unit}
                found.append({**row, "median": statistics.median(values), "values": values})
    return found


def print_table(document: dict[str, Any]) -> None:
    figures = {(row["figure"], row["setup"]): row for row in document["figures"]}
    if figures:
        width = 40
        header = "".join(f"{label:>44}" for _, label in SETUPS)
        print(f"\n{'median (each run)':{width}}{header}")
        for label, key, unit, fmt in FIGURES:
            cells = []
            for setup, _ in SETUPS:
                row = figures.get((key, setup))
                if row is None:
                    cells.append(f"{'':>44}")
                    continue
                each = (
                    "/".join(fmt.format(v) for v in row["values"]) if len(row["values"]) > 1 else ""
                )
                text = fmt.format(row["median"]) + (f" ({each})" if each else "")
                cells.append(f"{text:>44}")
            if any(cell.strip() for cell in cells):
                print(f"{label + ', ' + unit:{width}}{''.join(cells)}")
        print(
            f"Kafka (published, three 6-core brokers): {KAFKA_RF3_ACKS_ALL_RPS:,} records/s "
            f"with 3 replicas, synchronous; latency p50 {KAFKA_LATENCY_ACKS_1_MS[0]} / p99 "
            f"{KAFKA_LATENCY_ACKS_1_MS[1]} ms with acks=1"
        )
    result = document.get("kills")
    if result:
        print(
            f"\n{'ms, over ' + str(len(result['kills'])) + ' leader kills':52}"
            f"{'p50':>9}{'p99':>9}{'max':>9}"
        )
        for label, key in KILL_SERIES:
            found = result["series"][key]
            print(f"{label:52}{found['p50']:>9,.0f}{found['p99']:>9,.0f}{found['max']:>9,.0f}")
        for check in result["checks"]:
            verdict = "ok" if check["ok"] else "FAILED"
            print(
                f"partition {check['partition']}: {check['acknowledged']:,} acknowledged, "
                f"log end {check['log_end']:,}, read {check['read']:,}: "
                f"{check['missing']} missing, {check['other_value']} with another value, "
                f"{check['send_errors']} send errors: {verdict}"
            )
    result = document.get("catchup")
    if result:
        rates = ", ".join(f"{row['rate_mb_s']:.1f}" for row in result["runs"])
        sizes = {row["bytes"] for row in result["runs"]}
        equal = all(row["follower_bytes_equal"] for row in result["runs"])
        print(
            f"\ncatch-up of a wiped follower ({', '.join(f'{s:,}' for s in sizes)} bytes): "
            f"{result['rate_mb_s']:.1f} MB/s from its start (each: {rates}); "
            f"{result['rate_from_listening_mb_s']:.1f} MB/s from listening; "
            f"replica bytes equal to the leader's: {equal}"
        )
    for number, run in enumerate(document.get("runs", []), start=1):
        for setup, label in SETUPS:
            count = run.get(setup, {}).get("latency_disturbance_count", 0)
            if count:
                first = run[setup]["latency_disturbances"][0]
                print(
                    f"\nDISTURBED: run {number}, {label}: {count} broker log events during "
                    f"the latency run (first: {first}); its latency is not the pipeline's own"
                )
    load = document["load_average"]
    print(f"\nload average: {load['start']} at the start, {load['end']} at the end")


# -- the run ----------------------------------------------------------------------------


def in_work_dir(
    cfg: argparse.Namespace,
    prefix: str,
    run: Callable[[Path], Coroutine[Any, Any, dict[str, Any]]],
) -> dict[str, Any]:
    """``run`` in a new directory: a temp dir removed afterwards, or one kept under
    ``--work-dir`` (data dirs and the processes' logs, to look into)."""
    if cfg.work_dir is None:
        with tempfile.TemporaryDirectory(prefix=f"distributary-bench-{prefix}-") as tmp:
            return asyncio.run(run(Path(tmp)))
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    return asyncio.run(run(Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=cfg.work_dir))))


def measure(cfg: argparse.Namespace, document: dict[str, Any]) -> None:
    runs: list[dict[str, dict[str, Any]]] = []
    if {"produce", "latency"} & set(cfg.figures):
        for number in range(cfg.runs):
            row = in_work_dir(cfg, "replication", lambda d: cluster_run(d, cfg))
            row.update(in_work_dir(cfg, "single", lambda d: single_run(d, cfg)))
            runs.append(row)
            log(f"run {number + 1}/{cfg.runs}: {json.dumps(row)}")
    document["runs"] = runs
    document["figures"] = medians(runs)
    if "kills" in cfg.figures and cfg.kills:
        document["kills"] = in_work_dir(cfg, "kills", lambda d: kills(d, cfg.kills, cfg.size))
    if "catchup" in cfg.figures:
        document["catchup"] = in_work_dir(cfg, "catchup", lambda d: catchup(d, cfg))


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--figures", default=",".join(FIGURE_NAMES), help="comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (median)")
    parser.add_argument("--n", type=int, default=1_000_000, help="records per produce run")
    parser.add_argument("--size", type=int, default=100, help="bytes per record")
    parser.add_argument("--apis", default=",".join(APIS), help="enqueue,send_nowait")
    parser.add_argument("--partitions", type=int, default=6, help="of the produce topics")
    parser.add_argument("--linger-ms", type=int, default=5, help="of the produce runs")
    parser.add_argument("--lat-rate", type=int, default=5_000, help="records/s")
    parser.add_argument("--lat-seconds", type=int, default=10)
    parser.add_argument("--lat-warmup", type=int, default=1, help="seconds not counted")
    parser.add_argument("--kills", type=int, default=20, help="leader SIGKILLs")
    parser.add_argument(
        "--catchup-bytes", type=int, default=200_000_000, help="log a wiped follower copies"
    )
    parser.add_argument("--peers-dir", default=None, help="the latency clients' harness")
    parser.add_argument("--json", action="store_true", help="one JSON document, no table")
    parser.add_argument(
        "--work-dir", default=None, help="keep data dirs and logs here (default: a temp dir)"
    )
    cfg = parser.parse_args(argv)
    cfg.figures = [f for f in cfg.figures.split(",") if f]
    cfg.apis = [a for a in cfg.apis.split(",") if a]
    if not set(cfg.figures) <= set(FIGURE_NAMES) or not set(cfg.apis) <= set(APIS):
        parser.error(f"--figures from {FIGURE_NAMES}, --apis from {APIS}")
    if not (1 <= cfg.runs <= 50 and 1_000 <= cfg.n <= 50_000_000 and 1 <= cfg.partitions <= 64):
        parser.error("--runs 1-50, --n 1,000-50,000,000, --partitions 1-64")
    if not (32 <= cfg.size <= 1_000_000 and 0 <= cfg.kills <= 200):
        parser.error("--size 32-1,000,000 (the latency header is 17 bytes), --kills 0-200")
    if not 1_000_000 <= cfg.catchup_bytes <= 20_000_000_000:
        parser.error("--catchup-bytes 1,000,000-20,000,000,000")
    if not (100 <= cfg.lat_rate <= 100_000 and 1 <= cfg.lat_seconds <= 600):
        parser.error("--lat-rate 100-100,000, --lat-seconds 1-600")
    if "latency" in cfg.figures:
        peers = load_peers(cfg.peers_dir)
        cfg.peers_dir_resolved = str(Path(str(peers.__file__)).parent)
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(40),
    )
    try:
        etcd = subprocess.run([find_etcd(), "--version"], capture_output=True, text=True).stdout
    except (LocalClusterError, OSError) as error:
        log(f"etcd: {error}")
        return 2
    settings = {k: v for k, v in vars(cfg).items() if k not in ("json", "peers_dir_resolved")}
    document: dict[str, Any] = {
        "env": {
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "etcd": etcd.split("\n")[0],
            "replication_factor": REPLICATION_FACTOR,
            "min_insync_replicas": MIN_INSYNC_REPLICAS,
            "real_time_policy": os.sched_getscheduler(0) in REAL_TIME_POLICIES,
        },
        "settings": settings,
        "load_average": {"start": os.getloadavg()},
    }
    log(f"load average at start: {os.getloadavg()}; {document['env']}; {settings}")
    if os.sched_getscheduler(0) in REAL_TIME_POLICIES:
        log(
            "warning: running under a real-time policy, which every client and broker "
            "inherits (etcd is started under the normal one): equal-priority processes "
            "that do not block starve the others, so a latency run may stall"
        )
    try:
        measure(cfg, document)
    except (BenchError, DistributaryError) as error:
        log(f"failed: {error!r}")
        return 1
    finally:
        document["load_average"]["end"] = os.getloadavg()
        log(f"load average at end: {os.getloadavg()}")
    if cfg.json:
        print(json.dumps(document))
    else:
        print_table(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
