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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, Final

import structlog

from broker.cluster.local_cluster import LocalClusterError, find_etcd
from broker.cluster.member import LEASE_TTL_S
from client import Admin, Consumer, Producer, TooManyRequestsError, TopicPartition
from client._io.cluster import Cluster
from client.errors import DistributaryError
from client.protocol.messages import MetadataRequest, MetadataResponse

HOST: Final = "127.0.0.1"
PREFIX: Final = "bench"
PARTITIONS: Final = 6
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0
PHASE_TIMEOUT_S: Final = 300.0
# Wait at most this long for a failover, an offline partition or the first ack.
EVENT_TIMEOUT_S: Final = 60.0
SERVED_POLL_S: Final = 0.001
FAILOVER_POLL_S: Final = 0.010
SEND_INTERVAL_S: Final = 0.001
PROBE_TIMEOUT_MS: Final = 1_000
# Acknowledged sends before the leader is killed (the producer is in its steady state).
ACKS_BEFORE_KILL: Final = 200


class BenchError(Exception):
    """A benchmark step failed (the message says which)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class Child:
    """A child process whose output goes to a log file."""

    def __init__(self, name: str, command: list[str], log: Path) -> None:
        self.name = name
        self.command = command
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def kill(self) -> None:
        if not self.exited():
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def terminate(self) -> None:
        if not self.exited():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S."""
        self.terminate()
        if self.process is not None:
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""


class Etcd(Child):
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        client, peer = f"http://{HOST}:{self.port}", f"http://{HOST}:{free_port()}"
        command = [
            *(str(find_etcd()), "--name=bench", f"--data-dir={directory / 'etcd'}"),
            *(f"--listen-client-urls={client}", f"--advertise-client-urls={client}"),
            *(f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}"),
            *(f"--initial-cluster=bench={peer}", "--logger=zap", "--log-level=error"),
        ]
        super().__init__("etcd", command, directory / "etcd.log")

    def cluster_url(self) -> str:
        return f"etcd://{HOST}:{self.port}/{PREFIX}"

    def wait_ready(self) -> None:
        """Raises BenchError when etcd does not answer within START_TIMEOUT_S."""
        deadline = time.monotonic() + START_TIMEOUT_S
        request = urllib.request.Request(
            f"http://{HOST}:{self.port}/v3/kv/range", data=b'{"key": "AA=="}', method="POST"
        )
        while time.monotonic() < deadline:
            if self.exited():
                raise BenchError(f"etcd exited: {self.tail()}")
            try:
                with urllib.request.urlopen(request, timeout=0.5):
                    return
            except (OSError, urllib.error.URLError):
                time.sleep(0.02)
        raise BenchError(f"etcd did not answer within {START_TIMEOUT_S} s")


class Broker(Child):
    def __init__(self, directory: Path, node_id: int, cluster_url: str | None) -> None:
        self.node_id = node_id
        self.port = free_port()
        command = [sys.executable, "-m", "broker", "serve", "--listen", self.address]
        command += ["--data-dir", str(directory / f"broker-{node_id}"), "--log-format", "json"]
        if cluster_url is not None:
            command += ["--cluster", cluster_url, "--node-id", str(node_id)]
        super().__init__(f"broker {node_id}", command, directory / f"broker-{node_id}.log")

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    async def wait_listening(self) -> None:
        """Raises BenchError when the broker exits or does not listen in time."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.exited():
                raise BenchError(f"{self.name} exited: {self.tail()}")
            try:
                _, writer = await asyncio.open_connection(HOST, self.port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            return
        raise BenchError(f"{self.name} did not listen within {START_TIMEOUT_S} s")


class Probe:
    """Metadata asked of one chosen broker (not routed by the SDK)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def metadata(self, broker: Broker, topics: list[str]) -> MetadataResponse | None:
        """The broker's answer, or None when it does not answer."""
        try:
            connection = await self.cluster.connection_to((HOST, broker.port), attempts_max=1)
            response = await connection.request(
                MetadataRequest(topics), timeout_ms=PROBE_TIMEOUT_MS
            )
        except DistributaryError:
            return None
        body = response.body
        assert isinstance(body, MetadataResponse)
        return body


def leaders(body: MetadataResponse | None, topic: str) -> dict[int, int]:
    """Partition -> leader in ``body`` for ``topic`` (empty when it is unknown)."""
    if body is None:
        return {}
    for entry in body.topics:
        if entry.name == topic and not entry.error_code:
            return {p.partition: p.leader for p in entry.partitions}
    return {}


async def wait_for(what: str, condition: Callable[[], Awaitable[bool]], poll_s: float) -> float:
    """Poll until ``condition()``; return time.monotonic() then.  Raises BenchError
    after EVENT_TIMEOUT_S."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while time.monotonic() < deadline:
        if await condition():
            return time.monotonic()
        await asyncio.sleep(poll_s)
    raise BenchError(f"{what}: not within {EVENT_TIMEOUT_S} s")


# -- throughput ---------------------------------------------------------------------------


async def produce(
    bootstrap: list[str], topic: str, cfg: argparse.Namespace, api: str
) -> tuple[float, list[int]]:
    """Records/s of ``--n`` keyless records through one Producer (module docstring),
    and the partitions' log ends."""
    async with Admin(bootstrap) as admin:
        await admin.create_topic(topic, PARTITIONS)
    payload = os.urandom(cfg.size)
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    async with Producer(bootstrap, linger_ms=cfg.linger_ms, acks="leader") as producer:
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
    ends = await log_ends(bootstrap, topic)
    if sum(ends) != cfg.n:
        raise BenchError(f"produce {api}: log ends {ends} add up to {sum(ends)}, not {cfg.n}")
    return float(cfg.n) / wall, ends


async def log_ends(bootstrap: list[str], topic: str) -> list[int]:
    async with Consumer(bootstrap) as consumer:
        targets = {TopicPartition(topic, p): -1 for p in range(PARTITIONS)}
        offsets = await consumer.list_offsets(targets)
    return [offsets[TopicPartition(topic, p)] for p in range(PARTITIONS)]


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
    etcd = Etcd(directory)
    brokers = [Broker(directory, node_id, etcd.cluster_url()) for node_id in (1, 2, 3)]
    bootstrap = [b.address for b in brokers]
    etcd.start()
    try:
        etcd.wait_ready()
        for broker in brokers:
            broker.start()
        for broker in brokers:
            await broker.wait_listening()
        probe = Probe(await Cluster.open(bootstrap, connect_timeout_ms=PROBE_TIMEOUT_MS))
        try:

            async def formed() -> bool:
                for broker in brokers:
                    body = await probe.metadata(broker, [])
                    if body is None or len(body.brokers) != len(brokers) or body.controller_id < 0:
                        return False
                return True

            await wait_for("cluster formed", formed, 0.05)
            row: dict[str, Any] = await throughput(bootstrap, cfg)
            created = await creation(bootstrap, probe, brokers, cfg.topics)
            row["create_round_trip_ms"] = statistics.median(c for c, _ in created)
            row["create_to_served_ms"] = statistics.median(s for _, s in created)
            row["create_return_to_served_ms"] = statistics.median(s - c for c, s in created)
            row["create_to_served_each_ms"] = [round(s, 1) for _, s in created]
            row.update(await rerouting(bootstrap, probe, brokers))
            row["controller_failover_ms"] = await controller_failover(probe, brokers)
        finally:
            await probe.cluster.shutdown()
    finally:
        for broker in brokers:
            broker.terminate()
        for broker in brokers:
            broker.stop()
        etcd.stop()
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
