"""Unavailability after a broker's SIGKILL, repeated: ``python -m bench.cluster --kills 20``.

One fresh etcd and three brokers (as bench/cluster.py starts them), one topic of
6 partitions with replication factor 1, and one Producer (``linger_ms=0``,
acks=leader, idempotent by default) in which two tasks each send one record at
a time (``await send``, 1 ms apart):

  survivor  to a partition the controller leads (the controller is never killed);
  victim    to the lowest partition another broker leads.

Each kill: after both tasks have had ACKS_BEFORE_KILL acknowledgements since the
cluster settled, the victim partition's leader is SIGKILLed; once a survivor's
Metadata shows that partition offline (leader -1: the broker's registration is
gone, its lease revoked by the controller's liveness probe or expired) the broker is
started again on the same data dir and node id; the kill is over when the victim
partition has an acknowledgement after the restart.  Then the cluster settles:
every broker's Metadata lists three brokers and every partition led, and both
tasks have ACKS_BEFORE_KILL new acknowledgements.  Per kill:

  victim gap     the victim partition's unavailability: the longest interval
                 between two consecutive acknowledgements on it, from its last
                 acknowledgement before the kill to its first after the restart
                 (failure detection, restart, re-registration, the producer's retry
                 backoff).  The longest interval, not simply last-before to
                 first-after-the-kill: a reply the broker sent just before dying
                 can arrive a few ms after the kill.
  survivor gap   the same longest interval for the survivor partition, over the
                 same window (its last acknowledgement before the kill to the
                 victim partition's first after the restart): what the kill costs
                 a partition led elsewhere, through the same producer.
  restart->served  from starting the killed broker again to the victim
                 partition's first acknowledgement after it.

Reported: each series' p50, p99 and max (nearest rank: with 20 kills p99 is the
largest value, the same as max), each kill's values, and a check that every
acknowledged record is in the log once (log end == acknowledgements) and none was
acknowledged on the victim partition while its broker was down.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Final

from bench.cluster import (
    ACKS_BEFORE_KILL,
    FAILOVER_POLL_S,
    PARTITIONS,
    SEND_INTERVAL_S,
    controller_of,
    log_ends,
)
from bench.cluster_processes import (
    EVENT_TIMEOUT_S,
    BenchError,
    Broker,
    Probe,
    leaders,
    running_cluster,
    wait_for,
)
from client import Admin, Producer
from client.errors import DistributaryError

TOPIC: Final = "bench-kills"
SETTLE_POLL_S: Final = 0.05


class Sender:
    """One task sending to one partition of ``topic``, a record at a time: the
    times its sends were acknowledged and the (offset, value) of each.  Values are
    ``size`` bytes, each one different (its number, padded)."""

    def __init__(
        self, producer: Producer, partition: int, topic: str = TOPIC, size: int = 100
    ) -> None:
        self.producer = producer
        self.partition = partition
        self.topic = topic
        self.size = size
        self.acks: list[float] = []
        self.acknowledged: list[tuple[int, bytes]] = []
        self.errors: list[str] = []

    async def run(self, stopping: asyncio.Event) -> None:
        number = 0
        while not stopping.is_set():
            value = b"%d" % number
            value += b"k" * (self.size - len(value))
            number += 1
            try:
                sent = await self.producer.send(self.topic, value, partition=self.partition)
            except DistributaryError as error:
                self.errors.append(repr(error))
            else:
                self.acks.append(time.monotonic())
                self.acknowledged.append((sent.offset, value))
            await asyncio.sleep(SEND_INTERVAL_S)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest interval between consecutive acknowledgements from the last
        one at or before ``start`` to the first one at or after ``end``, in ms."""
        first = max(a for a in self.acks if a <= start)
        last = min(a for a in self.acks if a >= end)
        window = [a for a in self.acks if first <= a <= last]
        return max(later - earlier for earlier, later in itertools.pairwise(window)) * 1000

    def acked_since(self, moment: float) -> int:
        return sum(1 for a in self.acks if a > moment)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def one_kill(
    probe: Probe, brokers: list[Broker], victim: Broker, senders: tuple[Sender, Sender]
) -> dict[str, float]:
    """Kill ``victim``, restart it once its partition is offline, wait for an
    acknowledgement on it; the per-kill figures (module docstring)."""
    survivor_sender, victim_sender = senders
    observer = next(b for b in brokers if b is not victim)

    async def offline() -> bool:
        found = leaders(await probe.metadata(observer, [TOPIC]), TOPIC)
        return found.get(victim_sender.partition) == -1

    killed = time.monotonic()
    victim.kill()
    offline_at = await wait_for("victim partition offline", offline, FAILOVER_POLL_S)
    restarted = time.monotonic()
    victim.start()
    await victim.wait_listening()

    async def served() -> bool:
        return victim_sender.acked_since(restarted) > 0

    await wait_for("victim partition acknowledged again", served, FAILOVER_POLL_S)
    if any(killed + 0.1 < a < restarted for a in victim_sender.acks):
        raise BenchError("a write was acknowledged while the victim partition was down")
    served_at = min(a for a in victim_sender.acks if a > restarted)

    async def survivor_after() -> bool:
        return survivor_sender.acked_since(served_at) > 0

    await wait_for("survivor partition acknowledged after that", survivor_after, FAILOVER_POLL_S)
    return {
        "survivor_gap_ms": survivor_sender.longest_gap(killed, served_at),
        "victim_gap_ms": victim_sender.longest_gap(killed, served_at),
        "restart_to_served_ms": (served_at - restarted) * 1000,
        "kill_to_offline_ms": (offline_at - killed) * 1000,
    }


async def settle(probe: Probe, brokers: list[Broker], senders: tuple[Sender, Sender]) -> None:
    """Every broker lists three brokers and every partition led; both senders have
    ACKS_BEFORE_KILL acknowledgements from then on."""

    async def formed() -> bool:
        for broker in brokers:
            body = await probe.metadata(broker, [TOPIC])
            if body is None or len(body.brokers) != len(brokers):
                return False
            found = leaders(body, TOPIC)
            if len(found) != PARTITIONS or min(found.values()) < 0:
                return False
        return True

    settled = await wait_for("cluster settled", formed, SETTLE_POLL_S)

    async def flowing() -> bool:
        return all(s.acked_since(settled) >= ACKS_BEFORE_KILL for s in senders)

    await wait_for("both partitions acknowledging", flowing, SETTLE_POLL_S)


async def kills_run(directory: Path, kills: int) -> dict[str, Any]:
    """The whole series on one fresh cluster (module docstring)."""
    async with running_cluster(directory) as cluster:
        return await _series(cluster.probe, cluster.brokers, cluster.bootstrap, kills)


async def _series(
    probe: Probe, brokers: list[Broker], bootstrap: list[str], kills: int
) -> dict[str, Any]:
    async with Admin(bootstrap) as admin:
        await admin.create_topic(TOPIC, PARTITIONS)
    placed: dict[int, int] = {}

    async def placed_known() -> bool:
        placed.update(leaders(await probe.metadata(brokers[0], [TOPIC]), TOPIC))
        return len(placed) == PARTITIONS and min(placed.values()) >= 0

    await wait_for("topic served", placed_known, SETTLE_POLL_S)
    controller = await controller_of(probe, brokers)
    survivor_partition = min(p for p, leader in placed.items() if leader == controller)
    victim_partition = min(p for p, leader in placed.items() if leader != controller)
    victim = next(b for b in brokers if b.node_id == placed[victim_partition])
    per_kill: list[dict[str, float]] = []
    stopping = asyncio.Event()
    async with Producer(bootstrap, linger_ms=0, acks="leader") as producer:
        senders = (Sender(producer, survivor_partition), Sender(producer, victim_partition))
        tasks = [asyncio.create_task(s.run(stopping)) for s in senders]
        try:
            for number in range(kills):
                await settle(probe, brokers, senders)
                figures = await one_kill(probe, brokers, victim, senders)
                per_kill.append(figures)
                shown = {k: round(v) for k, v in figures.items()}
                print(f"kill {number + 1}/{kills}: {shown}", flush=True)
            await settle(probe, brokers, senders)
        finally:
            stopping.set()
            await asyncio.wait_for(asyncio.gather(*tasks), EVENT_TIMEOUT_S)
    ends = await log_ends(bootstrap, TOPIC)
    check = "ok"
    for sender in senders:
        if not sender.errors and ends[sender.partition] != len(sender.acks):
            check = (
                f"partition {sender.partition}: {len(sender.acks)} acknowledged, "
                f"log holds {ends[sender.partition]}"
            )
    if any(sender.errors for sender in senders):
        check = f"send errors: {[s.errors[:3] for s in senders]}"
    return {
        "survivor_partition": survivor_partition,
        "victim_partition": victim_partition,
        "victim_node": victim.node_id,
        "kills": per_kill,
        "acked": [len(s.acks) for s in senders],
        "check": check,
    }


SERIES: Final = [
    ("survivor partition: longest gap between acks", "survivor_gap_ms"),
    ("victim partition: longest gap between acks", "victim_gap_ms"),
    ("victim broker restarted -> victim partition's first ack", "restart_to_served_ms"),
    ("kill -> survivor's Metadata shows the partition offline", "kill_to_offline_ms"),
]


def report(result: dict[str, Any], out: IO[str] | None) -> list[dict[str, Any]]:
    """Print p50/p99/max of each series; return them as JSON-ready rows."""
    rows = []
    count = len(result["kills"])
    print(f"\n{'series (ms)':58} {'p50':>8} {'p99':>8} {'max':>8}   ({count} kills)")
    for label, key in SERIES:
        values = [kill[key] for kill in result["kills"]]
        row = {
            "figure": key,
            "p50": percentile(values, 0.50),
            "p99": percentile(values, 0.99),
            "max": max(values),
            "values": [round(v, 1) for v in values],
        }
        rows.append(row)
        print(f"{label:58} {row['p50']:>8,.0f} {row['p99']:>8,.0f} {row['max']:>8,.0f}")
    print(f"check: {result['check']}; acknowledged {result['acked']}")
    if out is not None:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    return rows


def run(cfg: argparse.Namespace, out: IO[str] | None) -> None:
    """The ``--kills N`` mode of bench/cluster.py."""
    with tempfile.TemporaryDirectory(prefix="distributary-bench-kills-") as tmp:
        result = asyncio.run(kills_run(Path(tmp), cfg.kills))
    report(result, out)
