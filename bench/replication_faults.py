"""Replication under faults: leader kills and a wiped follower (bench/replication.py).

Both run on a fresh etcd and three brokers on 127.0.66.2-4 with default settings,
topics with replication factor 3 and ``min.insync.replicas`` 2.

Leader kills (:func:`kills`): a topic of 3 partitions (one preferred leader on
each broker) and one Producer (``linger_ms=0``, acks=all, idempotent) in which two
tasks each send one record at a time (``await send``, 1 ms apart; each value
different): one to the lowest partition a broker other than the controller leads
(the *victim* partition: the controller is never killed), one to a partition the
controller leads (the *follower-side* partition: the killed broker is one of its
followers, so its acks=all writes wait until the dead broker leaves its ISR).
Settled means: every broker lists every partition led by its preferred replica
with all three in sync, and both tasks have ACKS_STEADY acknowledgements since.
Each kill, from settled: the victim partition's leader is SIGKILLed; a
survivor's Metadata names a new leader (from the ISR) once the killed broker's
registration went (its lease revoked by the controller's liveness probe, or
expired); the failover is over when both tasks have ACKS_STEADY
acknowledgements after that.  Then the killed broker is started again on its
data dir; it rejoins the ISR and the controller gives it its preferred
leadership back (settled again).  Per kill:

  victim gap       the longest interval between two consecutive acknowledgements
                   on the victim partition from its last one before the kill to
                   the end of the failover: its unavailability, "last acknowledged
                   write before to first after" (the longest interval, not simply
                   last-before to first-after-the-kill: a reply the old leader sent
                   just before dying can arrive a few ms after the kill, and a
                   partition may stall again after its first acknowledgement).
  follower-side gap  the same for the follower-side partition.
  kill -> new leader  until a survivor's Metadata names another leader.
  restart -> in sync  from starting the killed broker again until every broker
                   lists all three replicas of every partition in sync.
  rejoin gaps      the longest interval between acknowledgements on each
                   partition from that start until settled (the rejoin and the
                   preferred leader's return).

After the series each partition is read back from offset 0: every acknowledged
(offset, value) must be there, and the log end (high watermark) is compared with
the acknowledgements (equal when no send failed).

Catch-up (:func:`catchup`): one partition filled with ``--catchup-bytes`` of
``--size``-byte records (send_nowait, acks=all, linger 5 ms, 1 MiB batches), all
three in sync.  Then ``--runs`` times: a follower that is not the controller is
stopped (SIGTERM) and, once the others' Metadata shows it out of the ISR, its data
dir is deleted and it is started again; timed from that start until every
broker lists it in the ISR (its log end equal to the leader's).  The rate is the
leader's log bytes (segment files) over that time, in MB/s (10^6 bytes); the
follower's segment bytes are compared with the leader's afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Final

from bench.cluster import FAILOVER_POLL_S, log_ends
from bench.cluster_kills import Sender, percentile
from bench.cluster_processes import (
    EVENT_TIMEOUT_S,
    BenchError,
    Broker,
    RunningCluster,
    partitions,
    running_cluster,
    wait_for,
)
from broker.partition import partition_directory
from client import Consumer, Producer, TooManyRequestsError, TopicPartition

# A loopback block of the benchmarks' own: the chaos tests cut 127.0.0.x addresses
# apart with nftables (every port), which would cut a benchmark running meanwhile.
HOSTS: Final = ("127.0.66.2", "127.0.66.3", "127.0.66.4")
REPLICATION_FACTOR: Final = 3
MIN_INSYNC_REPLICAS: Final = 2
TOPIC_CONFIGS: Final = {"min.insync.replicas": str(MIN_INSYNC_REPLICAS)}
KILLS_TOPIC: Final = "bench-kills"
KILLS_PARTITIONS: Final = 3
CATCHUP_TOPIC: Final = "bench-catchup"
SETTLE_POLL_S: Final = 0.05
# Acknowledgements on each partition that mark it as flowing normally (about 0.5 s
# of one-at-a-time sends on an idle machine).
ACKS_STEADY: Final = 200
# The slowest catch-up waited for: a timeout of at least EVENT_TIMEOUT_S, more for
# large logs.
CATCHUP_BYTES_PER_S_MIN: Final = 2_000_000
FILL_LINGER_MS: Final = 5
FILL_BATCH_BYTES_MAX: Final = 1 << 20
READ_BACK_IDLE_MS: Final = 2_000


# -- leader kills ---------------------------------------------------------------------


async def kills(directory: Path, count: int, size: int) -> dict[str, Any]:
    """``count`` leader kills on one fresh cluster (module docstring): the per-kill
    figures, their p50/p99/max and the check.  Raises BenchError."""
    async with running_cluster(directory, HOSTS) as cluster:
        placed = await cluster.create_topic(
            KILLS_TOPIC, KILLS_PARTITIONS, REPLICATION_FACTOR, TOPIC_CONFIGS
        )
        controller = await cluster.controller()
        led_elsewhere = [p for p, state in placed.items() if state.leader != controller]
        led_by_controller = [p for p, state in placed.items() if state.leader == controller]
        if not led_elsewhere or not led_by_controller:
            raise BenchError(f"no partition led by the controller and one not: {placed}")
        victim_partition, follower_side_partition = min(led_elsewhere), min(led_by_controller)
        victim = cluster.broker(placed[victim_partition].leader)
        per_kill: list[dict[str, float]] = []
        stopping = asyncio.Event()
        async with Producer(cluster.bootstrap, linger_ms=0, acks="all") as producer:
            senders = (
                Sender(producer, follower_side_partition, KILLS_TOPIC, size),
                Sender(producer, victim_partition, KILLS_TOPIC, size),
            )
            tasks = [asyncio.create_task(s.run(stopping)) for s in senders]
            try:
                await settle(cluster, senders)
                for number in range(count):
                    figures = await one_kill(cluster, victim, senders)
                    per_kill.append(figures)
                    shown = {k: round(v) for k, v in figures.items()}
                    print(f"kill {number + 1}/{count}: {shown}", file=sys.stderr, flush=True)
            finally:
                stopping.set()
                await asyncio.wait_for(asyncio.gather(*tasks), EVENT_TIMEOUT_S)
        checks = [await check_acknowledged(cluster.bootstrap, sender) for sender in senders]
    return {
        "victim_partition": victim_partition,
        "follower_side_partition": follower_side_partition,
        "victim_node": victim.node_id,
        "controller": controller,
        "kills": per_kill,
        "series": {key: series([k[key] for k in per_kill]) for key in per_kill[0]},
        "checks": checks,
    }


def series(values: list[float]) -> dict[str, Any]:
    """p50, p99 (nearest rank) and max of ``values``, and the values."""
    return {
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "max": max(values),
        "values": [round(v, 1) for v in values],
    }


async def steady_after(senders: tuple[Sender, Sender], moment: float, what: str) -> list[float]:
    """Wait until both senders have ACKS_STEADY acknowledgements after ``moment``;
    the time of each one's ACKS_STEADY-th."""

    async def steady() -> bool:
        return all(s.acked_since(moment) >= ACKS_STEADY for s in senders)

    await wait_for(what, steady, SETTLE_POLL_S)
    return [[a for a in s.acks if a > moment][ACKS_STEADY - 1] for s in senders]


async def settle(cluster: RunningCluster, senders: tuple[Sender, Sender]) -> list[float]:
    """Every broker lists every partition led by its preferred replica with all in
    sync, and both senders have ACKS_STEADY acknowledgements from then on (the time
    of each one's ACKS_STEADY-th)."""
    synced, _ = await cluster.wait_in_sync(KILLS_TOPIC, KILLS_PARTITIONS, preferred=True)
    return await steady_after(senders, synced, "both partitions acknowledging in sync")


async def one_kill(
    cluster: RunningCluster, victim: Broker, senders: tuple[Sender, Sender]
) -> dict[str, float]:
    """SIGKILL ``victim``; wait for a new leader and ACKS_STEADY acknowledgements on
    both partitions; start ``victim`` again and settle."""
    follower_side, victim_sender = senders
    survivors = [b for b in cluster.brokers if b is not victim]

    async def new_leader() -> bool:
        for broker in survivors:
            found = partitions(await cluster.probe.metadata(broker, [KILLS_TOPIC]), KILLS_TOPIC)
            state = found.get(victim_sender.partition)
            if state is not None and state.leader not in (-1, victim.node_id):
                return True
        return False

    killed = time.monotonic()
    victim.kill()
    elected = await wait_for("a new leader", new_leader, FAILOVER_POLL_S)
    steady = await steady_after(senders, elected, "both partitions acknowledging again")
    restarted = time.monotonic()
    victim.start()
    await victim.wait_listening()
    in_sync, _ = await cluster.wait_in_sync(KILLS_TOPIC, KILLS_PARTITIONS)
    settled = await settle(cluster, senders)
    return {
        "victim_gap_ms": victim_sender.longest_gap(killed, steady[1]),
        "follower_side_gap_ms": follower_side.longest_gap(killed, steady[0]),
        "kill_to_new_leader_ms": (elected - killed) * 1000,
        "restart_to_in_sync_ms": (in_sync - restarted) * 1000,
        "victim_rejoin_gap_ms": victim_sender.longest_gap(restarted, settled[1]),
        "follower_side_rejoin_gap_ms": follower_side.longest_gap(restarted, settled[0]),
    }


async def check_acknowledged(bootstrap: list[str], sender: Sender) -> dict[str, Any]:
    """Read ``sender``'s partition back: how many acknowledged records are missing
    or hold another value at their offset, beside the log end."""
    end = (await log_ends(bootstrap, sender.topic, KILLS_PARTITIONS))[sender.partition]
    tp = TopicPartition(sender.topic, sender.partition)
    read: dict[int, bytes] = {}
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        await consumer.assign([tp])
        consumer.seek(tp, 0)
        while len(read) < end and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=READ_BACK_IDLE_MS)
            if not batches:
                break
            for record in batches.get(tp, []):
                read[record.offset] = bytes(record.value or b"")
    missing = sum(1 for offset, _ in sender.acknowledged if offset not in read)
    changed = sum(
        1 for offset, value in sender.acknowledged if offset in read and read[offset] != value
    )
    offsets = [offset for offset, _ in sender.acknowledged]
    return {
        "partition": sender.partition,
        "acknowledged": len(sender.acknowledged),
        "log_end": end,
        "read": len(read),
        "missing": missing,
        "other_value": changed,
        "offsets_acknowledged_twice": len(offsets) - len(set(offsets)),
        "send_errors": len(sender.errors),
        "first_errors": sender.errors[:3],
        "ok": not missing and not changed and len(offsets) == len(set(offsets)),
    }


# -- catch-up after a wipe ------------------------------------------------------------


def segment_bytes(broker: Broker, topic: str, partition: int) -> int:
    """Bytes in the segment files of ``broker``'s replica (0 when it has none)."""
    directory = partition_directory(broker.data_dir, topic, partition)
    return sum(path.stat().st_size for path in directory.glob("*.log"))


async def fill(bootstrap: list[str], topic: str, records: int, size: int) -> float:
    """``records`` records of ``size`` bytes to partition 0, acks=all; records/s.
    Raises BenchError when the log end is not ``records`` afterwards."""
    payload = b"c" * size
    started = time.perf_counter()
    async with Producer(
        bootstrap, linger_ms=FILL_LINGER_MS, batch_bytes_max=FILL_BATCH_BYTES_MAX, acks="all"
    ) as producer:
        await producer.partitions_for(topic)
        send_nowait = producer.send_nowait
        for index in range(records):
            if not index & 0xFFF:
                await asyncio.sleep(0)
            try:
                send_nowait(topic, payload, partition=0)
            except TooManyRequestsError:  # buffer full: let the sender catch up
                await producer.wait_for_space()
                send_nowait(topic, payload, partition=0)
        await producer.flush()
    rate = records / (time.perf_counter() - started)
    end = (await log_ends(bootstrap, topic, 1))[0]
    if end != records:
        raise BenchError(f"fill: log end {end}, expected {records}")
    return rate


async def catchup(directory: Path, cfg: argparse.Namespace) -> dict[str, Any]:
    """The fill, then ``cfg.runs`` wipes and catch-ups (module docstring)."""
    records = -(-cfg.catchup_bytes // cfg.size)
    timeout_s = max(EVENT_TIMEOUT_S, 2 * cfg.catchup_bytes / CATCHUP_BYTES_PER_S_MIN)
    async with running_cluster(directory, HOSTS) as cluster:
        await cluster.create_topic(CATCHUP_TOPIC, 1, REPLICATION_FACTOR, TOPIC_CONFIGS)
        fill_rps = await fill(cluster.bootstrap, CATCHUP_TOPIC, records, cfg.size)
        _, found = await cluster.wait_in_sync(CATCHUP_TOPIC, 1, timeout_s=timeout_s)
        leader = cluster.broker(found[0].leader)
        controller = await cluster.controller()
        candidates = [b for b in cluster.brokers if b.node_id not in (leader.node_id, controller)]
        runs: list[dict[str, Any]] = []
        for run in range(cfg.runs):
            follower = candidates[run % len(candidates)]
            row = await wipe_and_catch_up(cluster, leader, follower, timeout_s)
            runs.append(row)
            shown = {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}
            print(f"catch-up {run + 1}/{cfg.runs}: {shown}", file=sys.stderr, flush=True)
    rates = [row["rate_mb_s"] for row in runs]
    return {
        "records": records,
        "fill_rps": fill_rps,
        "runs": runs,
        "rate_mb_s": statistics.median(rates),
        "rate_from_listening_mb_s": statistics.median(r["rate_from_listening_mb_s"] for r in runs),
    }


async def wipe_and_catch_up(
    cluster: RunningCluster, leader: Broker, follower: Broker, timeout_s: float
) -> dict[str, Any]:
    others = [b for b in cluster.brokers if b is not follower]

    async def out_of_isr() -> bool:
        for broker in others:
            found = partitions(await cluster.probe.metadata(broker, [CATCHUP_TOPIC]), CATCHUP_TOPIC)
            if 0 not in found or follower.node_id in found[0].isr:
                return False
        return True

    follower.stop()
    await wait_for("the stopped follower out of the ISR", out_of_isr, SETTLE_POLL_S)
    shutil.rmtree(follower.data_dir)
    leader_bytes = segment_bytes(leader, CATCHUP_TOPIC, 0)
    started = time.monotonic()
    follower.start()
    await follower.wait_listening()
    listening = time.monotonic()
    in_sync, _ = await cluster.wait_in_sync(CATCHUP_TOPIC, 1, timeout_s=timeout_s)
    follower_bytes = segment_bytes(follower, CATCHUP_TOPIC, 0)
    return {
        "follower": follower.node_id,
        "bytes": leader_bytes,
        "start_to_in_sync_s": in_sync - started,
        "start_to_listening_s": listening - started,
        "rate_mb_s": leader_bytes / (in_sync - started) / 1e6,
        "rate_from_listening_mb_s": leader_bytes / (in_sync - listening) / 1e6,
        "follower_bytes_equal": follower_bytes == leader_bytes,
    }
