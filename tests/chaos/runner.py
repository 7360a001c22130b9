"""A chaos run: the cluster, the workload, a seeded schedule of faults, then heal,
read everything and check.

:func:`schedule` turns a seed into a list of :class:`Step` (fault kind, which
broker -- a partition's leader, the controller or a random one --, how long it
lasts, how long to wait before it).  The same seed gives the same list; what the
brokers do meanwhile is real concurrency and not replayed exactly.  :func:`run`
starts etcd and three brokers (tests/chaos/cluster.py), creates the topic, runs
the workload (tests/chaos/workload.py) while the steps are applied one after
another, then heals everything (every rule removed, disk emptied, paused brokers
resumed, dead ones started), waits for every partition to have a leader, lets
the workload run ``settle_s`` more, stops it, reads every partition from the
beginning and runs the checker.  Every fault is undone in a ``finally``.

Fault kinds (``FAULTS``):

- ``kill``: SIGKILL a partition's leader, start it again after the step;
- ``pause``: SIGSTOP a leader for longer than the broker lease, then SIGCONT;
- ``partition``: cut a leader from the other brokers and from etcd (nftables);
- ``partition-etcd``: cut a leader from etcd only;
- ``partition-brokers``: cut a leader from the other brokers only;
- ``controller-kill``: SIGKILL the controller, start it again;
- ``election-kill``: SIGKILL a leader that is not the controller, then SIGKILL
  the controller when the leader's lease expires (while it elects), start both;
- ``disk``: fill a broker's small data disk (a tmpfs), then empty it;
- ``wipe``: SIGKILL a broker, delete its data, start it empty (loses the
  partitions it alone holds: meaningful with replication factor 3 only);
- ``restart``: a rolling graceful restart of every broker.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Final

import trio

from broker.cluster.member import LEASE_TTL_S
from client import Admin, ClusterMetadata, DistributaryError, NewTopic
from tests.chaos.checker import Verdict, check
from tests.chaos.cluster import ETCD_HOST, ChaosCluster
from tests.chaos.faults import Partitioner, SmallDisk, mount_unavailable, partition_unavailable
from tests.chaos.workload import Workload, WorkloadConfig, write_history

FAULTS: Final = (
    "kill",
    "pause",
    "partition",
    "partition-etcd",
    "partition-brokers",
    "controller-kill",
    "election-kill",
    "disk",
    "wipe",
    "restart",
)
NEEDS_NFT: Final = frozenset({"partition", "partition-etcd", "partition-brokers"})
# Faults that lose data by design without replication.
NEEDS_REPLICATION: Final = frozenset({"wipe"})
SMALL_DISK_BYTES: Final = 64 << 20
FAULT_S: Final = (2.0, 8.0)
PAUSE_S: Final = (LEASE_TTL_S + 2.0, LEASE_TTL_S + 5.0)
QUIET_S: Final = (2.0, 5.0)
LEADERS_TIMEOUT_S: Final = 60.0
METADATA_TIMEOUT_S: Final = 3.0
POLL_S: Final = 0.2


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """One fault of a schedule.  ``target``: "leader" (of partition ``pick`` mod
    the partition count), "controller" or "node" (node ``pick`` mod 3, plus 1)."""

    kind: str
    target: str
    pick: int
    wait_s: float
    duration_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class RunConfig:
    seed: int
    duration_s: float
    faults: tuple[str, ...] = ("kill", "pause")
    workload: WorkloadConfig = dataclasses.field(default_factory=WorkloadConfig)
    replication_factor: int = 3
    min_insync_replicas: int | None = 2
    settle_s: float = 5.0
    directory: Path | None = None
    # Explicit steps instead of the seeded schedule (a test of one fault).
    steps: tuple[Step, ...] | None = None


@dataclasses.dataclass(slots=True)
class RunResult:
    config: RunConfig
    verdict: Verdict
    steps: list[str]
    final_read_complete: bool
    history_path: Path
    elapsed_s: float
    crashes: list[str] = dataclasses.field(default_factory=list)
    final_read_errors: list[str] = dataclasses.field(default_factory=list)
    # (kind, node) of every fault applied, in order.
    applied: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    @property
    def valid(self) -> bool:
        """No anomaly, no client crash, and the final read completed."""
        return self.verdict.valid and not self.crashes and self.final_read_complete

    def assert_valid(self) -> None:
        """Raises AssertionError with the report when not valid."""
        if not self.valid:
            raise AssertionError(self.report())

    def kinds(self) -> list[str]:
        if self.config.steps is not None:
            return sorted({step.kind for step in self.config.steps})
        return list(self.config.faults)

    def report(self) -> str:
        head = (
            f"chaos run: seed={self.config.seed} duration={self.config.duration_s:.0f}s "
            f"faults={','.join(self.kinds()) or 'none'} "
            f"rf={self.config.replication_factor} acks={self.config.workload.acks} "
            f"elapsed={self.elapsed_s:.0f}s"
        )
        lines = [head, *(f"  {step}" for step in self.steps)]
        if not self.final_read_complete:
            lines.append("  the final read did not complete: 'lost' may be unread, not gone")
            lines.extend(f"    {error}" for error in self.final_read_errors[:5])
        lines.extend(f"  client crash: {crash}" for crash in self.crashes)
        lines.append(self.verdict.report())
        lines.append(f"history: {self.history_path}")
        return "\n".join(lines)


def unavailable(faults: Sequence[str]) -> str | None:
    """Why a run with ``faults`` cannot run here, or None."""
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        return f"unknown faults {unknown}; known: {', '.join(FAULTS)}"
    if NEEDS_NFT & set(faults):
        reason = partition_unavailable()
        if reason:
            return reason
    if "disk" in faults:
        reason = mount_unavailable()
        if reason:
            return reason
    return None


def loses_data_by_design(faults: Sequence[str], replication_factor: int) -> str | None:
    """Why ``faults`` lose acknowledged records whatever the broker does (a wipe of
    the only replica), or None."""
    if NEEDS_REPLICATION & set(faults) and replication_factor < 2:
        return "wipe loses data by design without replication (use replication factor 3)"
    return None


def schedule(seed: int, duration_s: float, faults: Sequence[str]) -> list[Step]:
    """The seeded list of steps that fits in ``duration_s`` (module docstring)."""
    rng = random.Random(seed)
    steps: list[Step] = []
    if not faults:
        return steps
    elapsed = 0.0
    for _ in range(int(duration_s // QUIET_S[0]) + 1):
        kind = rng.choice(list(faults))
        wait_s = rng.uniform(*QUIET_S)
        duration = rng.uniform(*(PAUSE_S if kind == "pause" else FAULT_S))
        if kind == "election-kill":
            duration = max(duration, LEASE_TTL_S + 1.0)
        target = {"controller-kill": "controller", "disk": "node", "wipe": "node"}.get(
            kind, "leader"
        )
        if kind == "restart":
            target, duration = "node", 0.0
        if elapsed + wait_s + duration > duration_s:
            break
        steps.append(Step(kind, target, rng.randrange(1 << 30), wait_s, duration))
        elapsed += wait_s + duration + (15.0 if kind == "restart" else 0.0)
    return steps


async def cluster_metadata(bootstrap: str, topic: str) -> ClusterMetadata | None:
    """The cluster's metadata from any broker that answers in time, or None."""
    with trio.move_on_after(METADATA_TIMEOUT_S):
        try:
            async with Admin(bootstrap, request_timeout_ms=int(METADATA_TIMEOUT_S * 1000)) as admin:
                return await admin.cluster_metadata([topic])
        except DistributaryError:
            return None
    return None


async def wait_for_leaders(
    cluster: ChaosCluster, topic: str, partitions: int, *, full_isr: bool = False
) -> None:
    """Until every partition of ``topic`` has a live leader (and, with
    ``full_isr``, every replica in its ISR).  Raises TimeoutError."""
    with trio.fail_after(LEADERS_TIMEOUT_S):
        while True:
            found = await cluster_metadata(cluster.bootstrap, topic)
            if found is not None:
                live = {b.node_id for b in found.brokers}
                led = [
                    p
                    for t in found.topics
                    if t.name == topic
                    for p in t.partitions
                    if p.leader in live and (not full_isr or set(p.replicas) <= set(p.isr))
                ]
                if len(led) == partitions:
                    return
            await trio.sleep(POLL_S)


class FaultDriver:
    """Applies steps to the cluster and undoes them (``heal``)."""

    def __init__(
        self,
        cluster: ChaosCluster,
        partitioner: Partitioner | None,
        disks: dict[int, SmallDisk],
        topic: str,
        partitions: int,
        log: Callable[[str], None],
    ) -> None:
        self.cluster = cluster
        self.partitioner = partitioner
        self.disks = disks
        self.topic = topic
        self.partitions = partitions
        self.log = log
        # (kind, node) of every step applied, in order.
        self.applied: list[tuple[str, int]] = []

    async def _target(self, step: Step) -> tuple[int, int]:
        """The broker ``step`` acts on, and the controller (-1 when unknown)."""
        nodes = self.cluster.node_ids
        fallback = nodes[step.pick % len(nodes)]
        found = await cluster_metadata(self.cluster.bootstrap, self.topic)
        controller = found.controller_id if found is not None else -1
        if step.target == "node" or found is None:
            return fallback, controller
        if step.target == "controller" and controller in nodes:
            return controller, controller
        partitions = [p for t in found.topics if t.name == self.topic for p in t.partitions]
        if step.kind == "election-kill":
            partitions = [p for p in partitions if p.leader != controller] or partitions
        if partitions:
            chosen = partitions[step.pick % len(partitions)]
            if chosen.leader in nodes:
                return chosen.leader, controller
        return fallback, controller

    async def apply(self, step: Step) -> None:
        """Apply ``step`` for its duration, then undo it (also when cancelled)."""
        run = trio.to_thread.run_sync
        cluster = self.cluster
        node, controller = await self._target(step)
        started = time.monotonic()
        self.applied.append((step.kind, node))
        try:
            if step.kind in ("kill", "controller-kill"):
                await run(cluster.kill, node)
            elif step.kind == "election-kill":
                await run(cluster.kill, node)
                await trio.sleep(LEASE_TTL_S)
                if controller in cluster.node_ids and controller != node:
                    await run(cluster.kill, controller)
            elif step.kind == "pause":
                await run(cluster.pause, node)
            elif step.kind.startswith("partition"):
                await run(self._isolate, node, step.kind)
            elif step.kind == "disk":
                node = min(self.disks)
                await run(self.disks[node].fill)
            elif step.kind == "wipe":
                await run(cluster.wipe, node)
            elif step.kind == "restart":
                for each in cluster.node_ids:
                    await run(cluster.restart, each)
                    await wait_for_leaders(cluster, self.topic, self.partitions, full_isr=True)
            await trio.sleep(step.duration_s)
        finally:
            with trio.CancelScope(shield=True):
                await run(self.heal)
            where = "every node" if step.kind == "restart" else f"node {node}"
            self.log(
                f"{step.kind:<18} {where}  {time.monotonic() - started:5.1f}s "
                f"(after {step.wait_s:.1f}s quiet)"
            )

    def _isolate(self, node: int, kind: str) -> None:
        assert self.partitioner is not None
        others = [self.cluster.host(n) for n in self.cluster.node_ids if n != node]
        if kind == "partition-etcd":
            others = []
        self.partitioner.isolate(
            self.cluster.host(node), others, from_etcd=kind != "partition-brokers"
        )

    def heal(self) -> None:
        """Remove every rule, empty every disk, resume and start every broker."""
        if self.partitioner is not None:
            self.partitioner.heal()
        for disk in self.disks.values():
            disk.unfill()
        self.cluster.heal()


def _quiet(line: str) -> None:
    del line


def _note(steps: list[str], log: Callable[[str], None], line: str) -> None:
    steps.append(line)
    log(line)


def run(config: RunConfig, log: Callable[[str], None] = _quiet) -> RunResult:
    """One chaos run (module docstring).  Raises RuntimeError when it cannot run
    here (see :func:`unavailable`) or the cluster does not come up.  The cluster's
    files (logs, data, ``history.jsonl``) stay in ``config.directory`` when given."""
    kinds = [step.kind for step in config.steps] if config.steps is not None else config.faults
    reason = unavailable(kinds)
    if reason:
        raise RuntimeError(reason)
    started = time.monotonic()
    with ExitStack() as stack:
        if config.directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        else:
            directory = config.directory
        cluster = ChaosCluster(directory)
        disks: dict[int, SmallDisk] = {}
        if "disk" in kinds:
            node = random.Random(config.seed).choice(cluster.node_ids)
            disks[node] = stack.enter_context(SmallDisk(cluster.data_dir(node), SMALL_DISK_BYTES))
        stack.callback(cluster.close)
        partitioner = None
        if NEEDS_NFT & set(kinds):
            partitioner = stack.enter_context(Partitioner(ETCD_HOST, cluster.etcd.client_port))
        cluster.start()
        steps: list[str] = []
        workload = Workload(cluster.bootstrap, config.workload)
        driver = FaultDriver(
            cluster,
            partitioner,
            disks,
            config.workload.topic,
            config.workload.partitions,
            functools.partial(_note, steps, log),
        )
        trio.run(_run, config, cluster, workload, driver)
        history_path = directory / "history.jsonl"
        if config.directory is None:
            history_path = Path(tempfile.gettempdir()) / f"chaos-history-{config.seed}.jsonl"
        write_history(workload.history, history_path)
        verdict = check(workload.history)
        return RunResult(
            config,
            verdict,
            steps,
            workload.final_read_complete,
            history_path,
            time.monotonic() - started,
            workload.crashes,
            workload.final_read_errors,
            driver.applied,
        )
    raise AssertionError("unreachable")


async def _run(
    config: RunConfig, cluster: ChaosCluster, workload: Workload, driver: FaultDriver
) -> None:
    wl = config.workload
    configs = {}
    if config.min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(config.min_insync_replicas)
    async with Admin(cluster.bootstrap) as admin:
        await admin.create_topics(
            [NewTopic(wl.topic, wl.partitions, config.replication_factor, configs)]
        )
    await wait_for_leaders(cluster, wl.topic, wl.partitions)
    async with workload.running():
        deadline = trio.current_time() + config.duration_s
        steps = config.steps
        if steps is None:
            steps = tuple(schedule(config.seed, config.duration_s, config.faults))
        for step in steps:
            await trio.sleep(step.wait_s)
            if trio.current_time() + step.duration_s > deadline:
                break
            await driver.apply(step)
        await trio.sleep_until(deadline)
        await trio.to_thread.run_sync(driver.heal)
        await wait_for_leaders(cluster, wl.topic, wl.partitions)
        await trio.sleep(config.settle_s)
    await workload.final_read()
