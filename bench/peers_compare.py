"""Distributary beside NATS JetStream and Redis Streams, in one run, one harness.

This loads the shared peer harness (``../shared/bench/peers.py``; override with
``--peers-dir`` or ``DISTRIBUTARY_PEERS_DIR``) and adds our broker to it with
the same workloads, sizes and latency protocol, so the figures share the
machine's state:

  produce   N records of SIZE bytes to one topic with one partition, acks=leader,
            no compression, through ``Producer.enqueue`` (one call per record)
            then ``flush``; the log end offset is checked afterwards.
  consume   read the N records back from offset 0 with ``Consumer.getmany``.
  latency   two processes; the producer paces RATE records/s and flushes what is
            due each tick (``linger_ms=0``); the consumer long-polls.  The payload
            carries the CLOCK_MONOTONIC send time (peers.LAT_HDR).

Usage (needs the peer servers and clients: ``bash ../shared/bench/setup.sh`` once,
and ``pip install -e '.[bench]'`` for nats-py and redis in our venv):

    .venv/bin/python -m bench.peers_compare --reps 3 --out /tmp/peers.jsonl
    .venv/bin/python -m bench.peers_compare --systems distributary --n 20000 --reps 1
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from client import Admin, Consumer, NewTopic, Producer, TooManyRequestsError, TopicPartition

TOPIC = "bench"
LAT_TOPIC = "benchlat"


def load_peers(peers_dir: str | None) -> ModuleType:
    here = Path(__file__).resolve().parent.parent
    directory = Path(
        peers_dir or os.environ.get("DISTRIBUTARY_PEERS_DIR", here.parent / "shared" / "bench")
    )
    if not (directory / "peers.py").exists():
        raise SystemExit(f"peer harness not found at {directory}/peers.py (see --peers-dir)")
    sys.path.insert(0, str(directory))
    return importlib.import_module("peers")


def distributary_server_class(peers: ModuleType) -> type:
    class DistributaryServer(peers.Server):  # type: ignore[misc,name-defined]
        def prepare(self) -> None:
            from importlib.metadata import version

            self.version = f"distributary {version('distributary')}"

        def argv(self) -> list[str]:
            return [
                sys.executable,
                "-m",
                "broker",
                "serve",
                "--listen",
                f"{peers.HOST}:{self.port}",
                "--data-dir",
                os.path.join(self.dir, "data"),
                "--log-format",
                "json",
            ]

    return DistributaryServer


async def _create_topic(address: str, name: str) -> None:
    async with Admin(address) as admin:
        await admin.create_topics([NewTopic(name, partitions=1)])


async def _log_end(address: str, name: str) -> int:
    async with Consumer(address) as consumer:
        tp = TopicPartition(name, 0)
        offsets = await consumer.list_offsets({tp: -1})
        return offsets[tp]


async def dist_produce(
    peers: ModuleType, cfg: Any, server: Any, api: str = "enqueue"
) -> dict[str, Any]:
    """``api="enqueue"``: ``await producer.enqueue(...)`` per record (the async
    call); ``"send_nowait"``: the synchronous per-record call, awaiting only when
    the buffer is full (``wait_for_space``) and every 4,096 records."""
    address = f"{peers.HOST}:{server.port}"
    topic = f"{TOPIC}-{api}"
    await _create_topic(address, topic)
    payload = os.urandom(cfg.size)
    n = cfg.n
    deadline = time.monotonic() + cfg.phase_timeout
    async with Producer(address, linger_ms=cfg.dist_linger_ms, acks="leader") as producer:
        await producer.partitions_for(topic)
        with peers.Phase(server) as phase:
            if api == "enqueue":
                enqueue = producer.enqueue
                for index in range(n):
                    if not index & 0xFFFF and time.monotonic() > deadline:
                        raise peers.BenchError("distributary produce: phase timeout")
                    await enqueue(topic, payload, partition=0)
            else:
                send_nowait = producer.send_nowait
                for index in range(n):
                    if not index & 0xFFF:
                        if time.monotonic() > deadline:
                            raise peers.BenchError("distributary produce: phase timeout")
                        await asyncio.sleep(0)
                    try:
                        send_nowait(topic, payload, partition=0)
                    except TooManyRequestsError:  # buffer full: let the sender catch up
                        await producer.wait_for_space()
                        send_nowait(topic, payload, partition=0)
            await producer.flush()
    end = await _log_end(address, topic)
    if end != n:
        raise peers.BenchError(f"distributary produce: log end {end}, expected {n}")
    return {
        **peers.tput(n, cfg.size, phase.wall),
        **phase.fields(),
        "params": f"{api} per record + flush, linger_ms={cfg.dist_linger_ms}, acks=leader, "
        "1 partition, no compression",
    }


async def dist_consume(peers: ModuleType, cfg: Any, server: Any) -> dict[str, Any]:
    address = f"{peers.HOST}:{server.port}"
    n, got, payload_bytes = cfg.n, 0, 0
    deadline = time.monotonic() + cfg.phase_timeout
    tp = TopicPartition(f"{TOPIC}-enqueue", 0)
    async with Consumer(address, auto_offset_reset="earliest") as consumer:
        await consumer.assign([tp])
        consumer.seek(tp, 0)
        with peers.Phase(server) as phase:
            for _ in range(n + 100):  # bounded: each pass returns >= 1 record or times out
                if got >= n or time.monotonic() > deadline:
                    break
                batches = await consumer.getmany(timeout_ms=5_000)
                if not batches:
                    break
                for records in batches.values():
                    got += len(records)
    if got != n:
        raise peers.BenchError(f"distributary consume: got {got}, expected {n}")
    del payload_bytes
    return {
        **peers.tput(n, cfg.size, phase.wall),
        **phase.fields(),
        "params": "assign + getmany from offset 0, fetch long-poll",
    }


# -- latency: two processes, the peers' payload protocol -----------------------------------


async def _lat_consumer(
    peers: ModuleType, cfg: dict[str, Any], ready: Any, done: Any
) -> dict[str, Any]:
    total = cfg["rate"] * (cfg["warmup"] + cfg["seconds"])
    latencies: list[int] = []
    from_intended: list[int] = []
    count = 0
    tp = TopicPartition(cfg["topic"], 0)
    hard_deadline = time.monotonic() + cfg["warmup"] + cfg["seconds"] + 60
    drain_deadline: float | None = None
    async with Consumer(
        cfg["address"], fetch_max_wait_ms=200, auto_offset_reset="earliest"
    ) as consumer:
        await consumer.assign([tp])
        consumer.seek(tp, 0)
        ready.set()
        cpu_start = time.process_time()
        while count < total and time.monotonic() < hard_deadline:
            if done.is_set() and drain_deadline is None:
                drain_deadline = time.monotonic() + 5
            if drain_deadline is not None and time.monotonic() > drain_deadline:
                break
            batches = await consumer.getmany(timeout_ms=200)
            now = time.monotonic_ns()
            for records in batches.values():
                for record in records:
                    actual, intended, warm = peers.LAT_HDR.unpack_from(record.value)
                    count += 1
                    if not warm:
                        latencies.append(now - actual)
                        from_intended.append(now - intended)
    latencies.sort()
    from_intended.sort()
    pct = peers.pct
    return {
        "consumer_cpu_s": round(time.process_time() - cpu_start, 2),
        "received": count,
        "measured": len(latencies),
        "p50_ms": round(pct(latencies, 0.50) / 1e6, 3),
        "p99_ms": round(pct(latencies, 0.99) / 1e6, 3),
        "p999_ms": round(pct(latencies, 0.999) / 1e6, 3),
        "max_ms": round((latencies[-1] if latencies else 0) / 1e6, 3),
        "p50_from_intended_ms": round(pct(from_intended, 0.50) / 1e6, 3),
        "p99_from_intended_ms": round(pct(from_intended, 0.99) / 1e6, 3),
    }


async def _lat_producer(
    peers: ModuleType, cfg: dict[str, Any], ready: Any, done: Any
) -> dict[str, Any]:
    rate, size = cfg["rate"], cfg["size"]
    total = rate * (cfg["warmup"] + cfg["seconds"])
    warm_n = rate * cfg["warmup"]
    pad = os.urandom(max(0, size - peers.LAT_HDR.size))
    interval = 1e9 / rate
    topic = cfg["topic"]
    if not ready.wait(30):
        raise peers.BenchError("latency: consumer not ready in 30 s")
    index, sends, max_lag_ns = 0, 0, 0
    async with Producer(cfg["address"], linger_ms=0, acks=cfg["acks"]) as producer:
        t_start = time.monotonic_ns() + 20_000_000
        cpu_start = time.process_time()
        hard_deadline = time.monotonic() + cfg["warmup"] + cfg["seconds"] + 30
        while index < total and time.monotonic() < hard_deadline:
            now = time.monotonic_ns()
            due = min(total, int((now - t_start) // interval) + 1)
            if due <= index:
                await asyncio.sleep(max(0.0, (t_start + index * interval - now) / 1e9))
                continue
            for j in range(index, due):
                intended = int(t_start + j * interval)
                value = peers.LAT_HDR.pack(time.monotonic_ns(), intended, 1 if j < warm_n else 0)
                await producer.enqueue(topic, value + pad, partition=0)
            max_lag_ns = max(max_lag_ns, now - int(t_start + index * interval))
            sends += 1
            index = due
        elapsed = (time.monotonic_ns() - t_start) / 1e9
        await producer.flush()
    done.set()
    return {
        "producer_cpu_s": round(time.process_time() - cpu_start, 2),
        "sent": index,
        "achieved_rate": round(index / elapsed),
        "send_calls": sends,
        "max_sched_lag_ms": round(max_lag_ns / 1e6, 2),
    }


def _lat_entry(
    role: str, peers_dir: str, cfg: dict[str, Any], ready: Any, done: Any, queue: Any
) -> None:
    peers = load_peers(peers_dir)
    function = _lat_consumer if role == "consumer" else _lat_producer
    try:
        queue.put(asyncio.run(function(peers, cfg, ready, done)))
    except BaseException as error:
        done.set()
        queue.put({"error": f"{role}: {error!r}"})


def latency_clients(
    peers_dir: str, settings: dict[str, Any], limit_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the latency producer and consumer (two spawned processes) against
    ``settings["address"]`` (one or more "host:port", comma-separated), partition 0
    of ``settings["topic"]``, which exists; ``settings`` also names ``rate``,
    ``seconds``, ``warmup``, ``size`` and ``acks``.  Returns what the producer and
    the consumer reported (an "error" key when one failed); each is killed after
    ``limit_s``.  Raises queue.Empty when one reports nothing within ``limit_s``."""
    context = mp.get_context("spawn")
    ready, done = context.Event(), context.Event()
    consumer_queue, producer_queue = context.Queue(), context.Queue()
    args = (peers_dir, settings, ready, done)
    consumer = context.Process(
        target=_lat_entry, args=("consumer", *args, consumer_queue), daemon=True
    )
    producer = context.Process(
        target=_lat_entry, args=("producer", *args, producer_queue), daemon=True
    )
    consumer.start()
    producer.start()
    try:
        produced: dict[str, Any] = producer_queue.get(timeout=limit_s)
        consumed: dict[str, Any] = consumer_queue.get(timeout=limit_s)
    finally:
        for process in (producer, consumer):
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
    return produced, consumed


def dist_latency(peers: ModuleType, cfg: Any, server: Any) -> dict[str, Any]:
    address = f"{peers.HOST}:{server.port}"
    asyncio.run(_create_topic(address, LAT_TOPIC))
    settings = {
        "rate": cfg.lat_rate,
        "seconds": cfg.lat_seconds,
        "warmup": cfg.lat_warmup,
        "size": cfg.size,
        "address": address,
        "topic": LAT_TOPIC,
        "acks": "leader",
    }
    cpu_before = server.cpu_s()
    started = time.perf_counter()
    limit = cfg.lat_warmup + cfg.lat_seconds + 120
    produced, consumed = latency_clients(cfg.peers_dir_resolved, settings, limit)
    wall = time.perf_counter() - started
    if "error" in produced or "error" in consumed:
        raise peers.BenchError(
            f"latency distributary: {produced.get('error', '')} {consumed.get('error', '')}"
        )
    expected = cfg.lat_rate * (cfg.lat_warmup + cfg.lat_seconds)
    if consumed["received"] != expected:
        consumed["warning"] = f"received {consumed['received']} of {expected}"
    return {
        **consumed,
        **produced,
        "server_cpu_cores": round((server.cpu_s() - cpu_before) / wall, 2),
        "params": f"rate={cfg.lat_rate}/s for {cfg.lat_seconds}s (+{cfg.lat_warmup}s warm-up), "
        "consumer: getmany long-poll 200 ms; producer enqueues what is due, linger_ms=0",
    }


# -- the run -------------------------------------------------------------------------------


def run_system(
    peers: ModuleType,
    cfg: Any,
    system: str,
    workloads: list[str],
    rep: int,
    results: Any,
    env: dict[str, Any],
) -> None:
    server_class = distributary_server_class(peers)
    if system == "nats":
        server = peers.NatsServer("nats", cfg.nats_port, cfg.base_dir)
    elif system == "redis":
        server = peers.RedisServer("redis", cfg.redis_port, cfg.base_dir)
        server.aof = cfg.redis_aof
    elif system == "distributary":
        server = server_class("distributary", cfg.dist_port, cfg.base_dir)
    else:
        raise peers.BenchError(f"unknown system {system}")
    server.start()
    try:
        base = {
            "system": system,
            "rep": rep,
            "n": cfg.n,
            "size": cfg.size,
            "server": server.version,
            **env,
        }
        for workload in workloads:
            variants = (
                ["async", "sync"]
                if system == "redis" and workload in ("produce", "consume")
                else [""]
            )
            for variant in variants:
                name = f"{workload}_sync" if variant == "sync" else workload
                try:
                    row = run_workload(peers, cfg, system, workload, server, variant)
                except (TimeoutError, peers.BenchError, OSError) as error:
                    results.emit({**base, "workload": name, "error": repr(error)})
                    continue
                if row is not None:
                    results.emit({**base, "workload": name, **row})
    finally:
        server.stop()


def run_workload(
    peers: ModuleType, cfg: Any, system: str, workload: str, server: Any, variant: str = ""
) -> dict[str, Any] | None:
    if system == "distributary":
        if workload == "produce":
            return asyncio.run(dist_produce(peers, cfg, server))
        if workload == "produce_nowait":
            return asyncio.run(dist_produce(peers, cfg, server, "send_nowait"))
        if workload == "consume":
            return asyncio.run(dist_consume(peers, cfg, server))
        if workload == "latency":
            return dist_latency(peers, cfg, server)
        return None
    if workload == "latency":
        return dict(peers.run_latency(cfg, system, server))
    if system == "nats":
        table = {
            "produce": peers.nats_produce,
            "consume": peers.nats_consume,
            "consume_push": peers.nats_consume_push,
        }
        return dict(asyncio.run(table[workload](cfg, server))) if workload in table else None
    if workload in ("produce", "consume"):
        function = peers.redis_produce if workload == "produce" else peers.redis_consume
        return dict(asyncio.run(function(cfg, server, variant or "async")))
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers-dir", default=None)
    parser.add_argument("--systems", default="distributary,redis,nats")
    parser.add_argument(
        "--workloads",
        default="produce,produce_nowait,consume,latency",
        help="produce_nowait is Distributary only (the synchronous per-record call)",
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--lat-rate", type=int, default=5000)
    parser.add_argument("--lat-seconds", type=int, default=10)
    parser.add_argument("--lat-warmup", type=int, default=1)
    parser.add_argument("--phase-timeout", type=float, default=600)
    parser.add_argument("--nats-port", type=int, default=14222)
    parser.add_argument("--redis-port", type=int, default=16379)
    parser.add_argument("--dist-port", type=int, default=19392)
    parser.add_argument("--dist-linger-ms", type=int, default=5)
    parser.add_argument("--nats-window", type=int, default=1000)
    parser.add_argument("--nats-pub-mode", default="windowed")
    parser.add_argument("--nats-fetch", type=int, default=1000)
    parser.add_argument("--nats-ack", default="all")
    parser.add_argument("--redis-pipeline", type=int, default=1000)
    parser.add_argument("--redis-read", type=int, default=1000)
    parser.add_argument("--redis-aof", default="everysec")
    parser.add_argument("--base-dir", default="/tmp/peerbench-distributary")
    parser.add_argument("--out", default=None)
    cfg = parser.parse_args()
    if cfg.lat_rate * (cfg.lat_seconds + cfg.lat_warmup) > 10_000_000 or cfg.n > 50_000_000:
        parser.error("refusing unbounded-looking sizes")
    peers = load_peers(cfg.peers_dir)
    cfg.peers_dir_resolved = str(Path(peers.__file__).parent)
    signal.signal(signal.SIGTERM, peers._on_signal)
    signal.signal(signal.SIGINT, peers._on_signal)
    results = peers.Results(out=open(cfg.out, "a") if cfg.out else None)  # noqa: SIM115
    env = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    systems = [s for s in cfg.systems.split(",") if s]
    workloads = [w for w in cfg.workloads.split(",") if w]
    try:
        for rep in range(cfg.reps):
            for system in systems:
                run_system(peers, cfg, system, workloads, rep, results, env)
        peers.summarize(results)
    finally:
        peers._cleanup_all()
        if cfg.base_dir.startswith("/tmp/"):
            shutil.rmtree(cfg.base_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
