"""A cluster of three brokers (metadata in etcd) beside one broker: ``python -m bench.cluster``.

Each repetition starts a fresh etcd (one member, default flags: fsync on) and three
``distributary serve --cluster etcd://.../bench`` brokers, node ids 1-3, on
127.0.0.1 (free ports, data dirs in a temp dir removed afterwards), then a fresh
single broker (embedded default, no etcd), and measures:

  produce     ``--n`` records of ``--size`` bytes, keyless (the sticky partitioner
              spreads them), to a topic of 6 partitions (replication factor 1:
              two partitions led by each broker), one Producer, acks=leader,
              ``await enqueue`` per record (and ``send_nowait`` per record on a
              second topic), then ``flush``; the log ends must add up to ``--n``.
  consume     one Consumer assigned the 6 partitions of the first topic reads
              them from offset 0 with ``getmany``.
  creation    ``--topics`` topics of 6 partitions created through Admin (after one
              untimed creation): the CreateTopics round trip, and the time from
              sending it until every broker's Metadata (asked of each broker
              directly, every 1 ms) lists all 6 partitions with a leader.
  re-routing  a producer sends one record at a time (``await send``, 1 ms apart)
              to one partition (partition 0, or the lowest one the controller
              does not lead, so that the controller survives).  Its leader is
              SIGKILLed; once a survivor's Metadata shows the partition offline
              (leader -1, once its lease expired) the broker is started again on
              the same data dir and node id.  Reported: kill -> offline seen,
              restart -> listening, restart -> first acknowledged write through
              the producer that kept running, and kill -> that acknowledgement
              (the partition's unavailability).  ``check`` says whether every
              acknowledged record is in the log, once, and none was
              acknowledged while the partition was down.
  failover    the controller is SIGKILLed; each survivor's Metadata is asked every
              10 ms until one names another controller.

``--kills N`` runs only a series of N leader kills on one cluster instead (the
unavailability's p50/p99/max; bench/cluster_kills.py says what is measured).

Medians over ``--reps`` repetitions (each repetition's value printed too), reported,
not asserted.  The client runs on asyncio in this process, beside the brokers and
etcd, so the load average is printed at the start and end.  ``--out FILE`` appends
one JSON line per repetition and setup and one per figure's median.

    .venv/bin/python -m bench.cluster --n 200000 --reps 1 --out /tmp/cluster.jsonl
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
from pathlib import Path
from typing import IO, Any, Final

import structlog

from bench.cluster_processes import (
    EVENT_TIMEOUT_S,
    BenchError,
    Broker,
    Probe,
    leaders,
    running_cluster,
    wait_for,
)
from broker.cluster.local_cluster import LocalClusterError, find_etcd
from broker.cluster.member import LEASE_TTL_S
from client import Admin, Consumer, Producer, TooManyRequestsError, TopicPartition
from client.errors import DistributaryError
from client.producer import AcksSetting

PARTITIONS: Final = 6
PHASE_TIMEOUT_S: Final = 300.0
SERVED_POLL_S: Final = 0.001
FAILOVER_POLL_S: Final = 0.010
SEND_INTERVAL_S: Final = 0.001
LOG_END_POLL_S: Final = 0.05
# Acknowledged sends before the leader is killed (the producer is in its steady state).
ACKS_BEFORE_KILL: Final = 200


# -- throughput ---------------------------------------------------------------------------


async def produce(
    bootstrap: list[str],
    topic: str,
    cfg: argparse.Namespace,
    api: str,
    acks: AcksSetting = "leader",
    partitions: int = PARTITIONS,
) -> tuple[float, list[int]]:
    """Records/s of ``--n`` keyless records through one Producer to ``topic`` (which
    exists, with ``partitions`` partitions; module docstring), and the partitions'
    log ends once they add up to ``--n``.  Raises BenchError when they do not
    within EVENT_TIMEOUT_S (the log end is the high watermark, which may reach the
    last records a moment after an acks=leader producer's flush)."""
    payload = os.urandom(cfg.size)
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    async with Producer(bootstrap, linger_ms=cfg.linger_ms, acks=acks) as producer:
        await producer.partitions_for(topic)
        started = time.perf_counter()
        if api == "enqueue":
            enqueue = producer.enqueue
            for index in range(cfg.n):
                if not index & 0xFFFF and time.monotonic() > deadline:
                    raise BenchError("produce: phase timeout")
                await enqueue(topic, payload)
        else:
            send_nowait = producer.send_nowait
            for index in range(cfg.n):
                if not index & 0xFFF:
                    if time.monotonic() > deadline:
                        raise BenchError("produce: phase timeout")
                    await asyncio.sleep(0)
                try:
                    send_nowait(topic, payload)
                except TooManyRequestsError:  # buffer full: let the sender catch up
                    await producer.wait_for_space()
                    send_nowait(topic, payload)
        await producer.flush()
        wall = time.perf_counter() - started
    ends: list[int] = []

    async def complete() -> bool:
        ends[:] = await log_ends(bootstrap, topic, partitions)
        return bool(sum(ends) == cfg.n)

    try:
        await wait_for(f"produce {api}: log ends", complete, LOG_END_POLL_S)
    except BenchError:
        raise BenchError(
            f"produce {api}: log ends {ends} add up to {sum(ends)}, not {cfg.n}"
        ) from None
    return float(cfg.n) / wall, ends


async def log_ends(bootstrap: list[str], topic: str, partitions: int = PARTITIONS) -> list[int]:
    async with Consumer(bootstrap) as consumer:
        targets = {TopicPartition(topic, p): -1 for p in range(partitions)}
        offsets = await consumer.list_offsets(targets)
    return [offsets[TopicPartition(topic, p)] for p in range(partitions)]


async def consume(bootstrap: list[str], topic: str, cfg: argparse.Namespace) -> float:
    """Records/s reading the topic's ``--n`` records from offset 0."""
    got = 0
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        await consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)
        started = time.perf_counter()
        for _ in range(cfg.n + 100):  # bounded: each pass returns >= 1 record or times out
            if got >= cfg.n or time.monotonic() > deadline:
                break
            batches = await consumer.getmany(timeout_ms=5_000)
            if not batches:
                break
            for records in batches.values():
                got += len(records)
        wall = time.perf_counter() - started
    if got != cfg.n:
        raise BenchError(f"consume: got {got} records, expected {cfg.n}")
    return float(cfg.n) / wall


async def throughput(bootstrap: list[str], cfg: argparse.Namespace) -> dict[str, Any]:
    async with Admin(bootstrap) as admin:
        await admin.create_topic("bench-enqueue", PARTITIONS)
        await admin.create_topic("bench-nowait", PARTITIONS)
    enqueue, enqueue_ends = await produce(bootstrap, "bench-enqueue", cfg, "enqueue")
    nowait, nowait_ends = await produce(bootstrap, "bench-nowait", cfg, "send_nowait")
    return {
        "produce_enqueue_rps": enqueue,
        "produce_send_nowait_rps": nowait,
        "consume_rps": await consume(bootstrap, "bench-enqueue", cfg),
        "records_per_partition": [enqueue_ends, nowait_ends],
    }


# -- the cluster's figures ----------------------------------------------------------------


async def creation(
    bootstrap: list[str], probe: Probe, brokers: list[Broker], count: int
) -> list[tuple[float, float]]:
    """(CreateTopics round trip, sent -> served by every broker) in ms, per topic."""
    results: list[tuple[float, float]] = []
    async with Admin(bootstrap) as admin:
        await admin.create_topic("bench-create-warmup", PARTITIONS)
        for index in range(count):
            topic = f"bench-create-{index}"
            pending = list(brokers)

            async def served_everywhere(
                topic: str = topic, pending: list[Broker] = pending
            ) -> bool:
                for broker in list(pending):
                    found = leaders(await probe.metadata(broker, [topic]), topic)
                    if len(found) == PARTITIONS and min(found.values()) >= 0:
                        pending.remove(broker)
                return not pending

            sent = time.monotonic()
            await admin.create_topic(topic, PARTITIONS)
            returned = time.monotonic()
            served = await wait_for(f"topic {topic} served", served_everywhere, SERVED_POLL_S)
            results.append(((returned - sent) * 1000, (served - sent) * 1000))
    return results


async def controller_of(probe: Probe, brokers: list[Broker]) -> int:
    body = await probe.metadata(brokers[0], [])
    if body is None or body.controller_id < 0:
        raise BenchError("no controller")
    return body.controller_id


async def controller_failover(probe: Probe, brokers: list[Broker]) -> float:
    """SIGKILL of the controller -> a survivor names another one, in ms."""
    old = await controller_of(probe, brokers)
    survivors = [b for b in brokers if b.node_id != old]

    async def moved() -> bool:
        for broker in survivors:
            body = await probe.metadata(broker, [])
            if body is not None and body.controller_id not in (-1, old):
                return True
        return False

    killed = time.monotonic()
    next(b for b in brokers if b.node_id == old).kill()
    return (await wait_for("controller failover", moved, FAILOVER_POLL_S) - killed) * 1000


async def rerouting(bootstrap: list[str], probe: Probe, brokers: list[Broker]) -> dict[str, Any]:
    """Kill and restart a partition's leader under a running producer (module docstring)."""
    topic = "bench-reroute"
    async with Admin(bootstrap) as admin:
        await admin.create_topic(topic, PARTITIONS)
    controller = await controller_of(probe, brokers)
    placed: dict[int, int] = {}

    async def placed_known() -> bool:
        placed.update(leaders(await probe.metadata(brokers[0], [topic]), topic))
        return len(placed) == PARTITIONS

    await wait_for("reroute topic served", placed_known, SERVED_POLL_S)
    partition = min(p for p, leader in placed.items() if leader != controller)
    victim = next(b for b in brokers if b.node_id == placed[partition])
    survivor = next(b for b in brokers if b is not victim)
    acks: list[float] = []
    errors: list[str] = []
    led_again: list[float] = []  # when a survivor's Metadata names the leader again
    stopping = asyncio.Event()

    async def keep_sending(producer: Producer) -> None:
        while not stopping.is_set():
            try:
                await producer.send(topic, b"r" * 100, partition=partition)
            except DistributaryError as error:
                errors.append(repr(error))
            else:
                acks.append(time.monotonic())
            await asyncio.sleep(SEND_INTERVAL_S)

    async def offline() -> bool:
        return leaders(await probe.metadata(survivor, [topic]), topic).get(partition) == -1

    async with Producer(bootstrap, linger_ms=0, acks="leader") as producer:
        sender = asyncio.create_task(keep_sending(producer))
        try:

            async def steady() -> bool:
                return len(acks) >= ACKS_BEFORE_KILL

            await wait_for("steady producer", steady, 0.01)
            killed = time.monotonic()
            victim.kill()
            offline_at = await wait_for("partition offline", offline, FAILOVER_POLL_S)
            restarted = time.monotonic()
            victim.start()
            await victim.wait_listening()
            listening = time.monotonic()

            async def led_and_acknowledged() -> bool:
                if not led_again:
                    body = await probe.metadata(survivor, [topic])
                    if leaders(body, topic).get(partition) == victim.node_id:
                        led_again.append(time.monotonic())
                return bool(led_again) and bool(acks) and acks[-1] > restarted

            await wait_for("led again and acknowledged", led_and_acknowledged, FAILOVER_POLL_S)
        finally:
            stopping.set()
            await asyncio.wait_for(sender, EVENT_TIMEOUT_S)
    first_ack = next(a for a in acks if a > restarted)
    end = (await log_ends(bootstrap, topic))[partition]
    check = "ok"
    if any(killed + 0.1 < a < restarted for a in acks):
        check = "a write was acknowledged while the partition's only replica was down"
    elif not errors and end != len(acks):
        check = f"{len(acks)} records acknowledged, but the log holds {end}"
    return {
        "partition": partition,
        "kill_to_offline_ms": (offline_at - killed) * 1000,
        "restart_to_listening_ms": (listening - restarted) * 1000,
        "restart_to_led_ms": (led_again[0] - restarted) * 1000,
        "restart_to_first_ack_ms": (first_ack - restarted) * 1000,
        "unavailable_ms": (first_ack - killed) * 1000,
        "acked": len(acks),
        "check": check,
        "send_errors": errors[:3],
    }


async def cluster_rep(directory: Path, cfg: argparse.Namespace) -> dict[str, Any]:
    async with running_cluster(directory) as cluster:
        bootstrap, probe, brokers = cluster.bootstrap, cluster.probe, cluster.brokers
        row: dict[str, Any] = await throughput(bootstrap, cfg)
        created = await creation(bootstrap, probe, brokers, cfg.topics)
        row["create_round_trip_ms"] = statistics.median(c for c, _ in created)
        row["create_to_served_ms"] = statistics.median(s for _, s in created)
        row["create_return_to_served_ms"] = statistics.median(s - c for c, s in created)
        row["create_to_served_each_ms"] = [round(s, 1) for _, s in created]
        row.update(await rerouting(bootstrap, probe, brokers))
        row["controller_failover_ms"] = await controller_failover(probe, brokers)
    return row


async def single_rep(directory: Path, cfg: argparse.Namespace) -> dict[str, Any]:
    broker = Broker(directory, 0, None)
    broker.start()
    try:
        await broker.wait_listening()
        return await throughput([broker.address], cfg)
    finally:
        broker.stop()


# -- the run --------------------------------------------------------------------------------

# (label, key, unit, format) of each figure in the table, in order.
FIGURES: Final = [
    ("produce, await enqueue per record", "produce_enqueue_rps", "records/s", "{:,.0f}"),
    ("produce, send_nowait per record", "produce_send_nowait_rps", "records/s", "{:,.0f}"),
    ("consume, getmany from offset 0", "consume_rps", "records/s", "{:,.0f}"),
    ("CreateTopics round trip", "create_round_trip_ms", "ms", "{:,.1f}"),
    ("create sent -> served by all 3", "create_to_served_ms", "ms", "{:,.1f}"),
    ("create answered -> served by all 3", "create_return_to_served_ms", "ms", "{:,.1f}"),
    ("leader SIGKILL -> partition offline", "kill_to_offline_ms", "ms", "{:,.0f}"),
    ("leader restart -> listening", "restart_to_listening_ms", "ms", "{:,.0f}"),
    ("leader restart -> led again", "restart_to_led_ms", "ms", "{:,.0f}"),
    ("leader restart -> first ack", "restart_to_first_ack_ms", "ms", "{:,.0f}"),
    ("leader SIGKILL -> first ack", "unavailable_ms", "ms", "{:,.0f}"),
    ("controller SIGKILL -> new controller", "controller_failover_ms", "ms", "{:,.0f}"),
]


def summarize(rows: dict[str, list[dict[str, Any]]], out: IO[str] | None) -> None:
    print(f"\n{'figure':38} {'3 brokers (median; each rep)':>46} {'1 broker (median)':>18}")
    for label, key, unit, fmt in FIGURES:
        columns = []
        for setup in ("cluster", "single"):
            values = [row[key] for row in rows[setup] if key in row]
            if not values:
                columns.append("")
                continue
            median = statistics.median(values)
            if setup == "cluster":
                each = ", ".join(fmt.format(v) for v in values)
                columns.append(f"{fmt.format(median)} ({each})")
            else:
                columns.append(fmt.format(median))
            if out is not None:
                record = {"figure": key, "setup": setup, "unit": unit, "median": median}
                out.write(json.dumps({**record, "values": values}) + "\n")
        print(f"{label:38} {columns[0]:>46} {columns[1]:>18}  {unit}")
    print(f"(failover target: the lease, {LEASE_TTL_S} s, + 1 s)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="records per produce run")
    parser.add_argument("--size", type=int, default=100, help="bytes per record")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--topics", type=int, default=5, help="timed creations per repetition")
    parser.add_argument("--linger-ms", type=int, default=5)
    parser.add_argument("--out", default=None, help="append JSON lines here")
    parser.add_argument(
        "--kills",
        type=int,
        default=0,
        help="only the repeated-kill series (bench/cluster_kills.py)",
    )
    cfg = parser.parse_args()
    if not (1_000 <= cfg.n <= 50_000_000 and 1 <= cfg.reps <= 50 and 1 <= cfg.topics <= 100):
        parser.error("--n 1,000-50,000,000, --reps 1-50, --topics 1-100")
    if not 0 <= cfg.kills <= 200:
        parser.error("--kills 0-200")
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(40),
    )
    try:
        etcd = subprocess.run([find_etcd(), "--version"], capture_output=True, text=True).stdout
    except (LocalClusterError, OSError) as error:
        parser.error(str(error))
    env = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "n": cfg.n, "size": cfg.size}
    env["etcd"] = etcd.split("\n")[0]
    print(f"load average at start: {os.getloadavg()}; {env}", flush=True)
    out = open(cfg.out, "a") if cfg.out else None  # noqa: SIM115
    rows: dict[str, list[dict[str, Any]]] = {"cluster": [], "single": []}
    try:
        if cfg.kills:
            from bench.cluster_kills import run as run_kills

            run_kills(cfg, out)
        for rep in range(0 if cfg.kills else cfg.reps):
            for setup, run in (("cluster", cluster_rep), ("single", single_rep)):
                with tempfile.TemporaryDirectory(prefix=f"distributary-bench-{setup}-") as tmp:
                    row = asyncio.run(run(Path(tmp), cfg))
                rows[setup].append(row)
                shown = {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}
                print(f"rep {rep} {setup}: {shown}", flush=True)
                if out is not None:
                    out.write(json.dumps({"setup": setup, "rep": rep, **env, **row}) + "\n")
        if not cfg.kills:
            summarize(rows, out)
    finally:
        if out is not None:
            out.close()
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
