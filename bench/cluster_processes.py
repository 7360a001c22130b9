"""etcd and broker processes for the cluster benchmarks, and how they are watched.

A benchmark starts one etcd (one member, default flags, so with fsync) on
127.0.0.1 and brokers as ``distributary serve --cluster etcd://.../bench`` child
processes, each on a free port of its own loopback address (all on 127.0.0.1 by
default; ``hosts`` spreads them over addresses of their own, as
bench/replication_faults.py's HOSTS do), with its data dir and log file in a temp dir; etcd under the normal
scheduling policy even when the benchmark runs under a real-time one (``chrt``).
:meth:`Broker.disturbances_since` reads back the log events that say the cluster
was disturbed (a lost lease, a failed replica fetch, fenced replicas, a new
leader).  :func:`running_cluster` starts
them and stops them again (SIGTERM, then SIGKILL after STOP_TIMEOUT_S).  A
:class:`Probe` asks one chosen broker for Metadata (not routed by the SDK), and
:func:`wait_for` polls a condition under EVENT_TIMEOUT_S.  Used by
bench/cluster.py, bench/cluster_kills.py and bench/replication.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from broker.cluster.local_cluster import find_etcd
from client import Admin, Consumer, TopicPartition
from client._io.cluster import Cluster
from client.errors import DistributaryError
from client.protocol.messages import MetadataRequest, MetadataResponse, PartitionMetadata

HOST: Final = "127.0.0.1"
PREFIX: Final = "bench"
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0
# Wait at most this long for a failover, an offline partition or the first ack.
EVENT_TIMEOUT_S: Final = 60.0
PROBE_TIMEOUT_MS: Final = 1_000
FORMED_POLL_S: Final = 0.05
IN_SYNC_POLL_S: Final = 0.05
CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")
# Broker log events that say the cluster was disturbed: a lease that expired (a
# starved process, an etcd that did not answer), a follower cut from its leader
# (a network fault, a starved leader), replicas fenced, a new leader elected.
DISTURBANCE_EVENTS: Final = frozenset(
    {
        "lease lost; fenced until registered again",
        "replica fetch failed; retrying",
        "replicas fenced",
        "leader elected",
    }
)
REAL_TIME_POLICIES: Final = frozenset({os.SCHED_FIFO, os.SCHED_RR})


class BenchError(Exception):
    """A benchmark step failed (the message says which)."""


def free_port(host: str = HOST) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class Child:
    """A child process whose output goes to a log file."""

    def __init__(
        self, name: str, command: list[str], log: Path, normal_policy: bool = False
    ) -> None:
        self.name = name
        self.command = command
        self.log = log
        # Start it under the normal scheduling policy even when this process runs
        # under a real-time one (``chrt``).
        self.normal_policy = normal_policy
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        demote = self.normal_policy and os.sched_getscheduler(0) in REAL_TIME_POLICIES
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=_normal_policy if demote else None,
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

    def cpu_s(self) -> float:
        """User + system CPU seconds the running process has used (0 once it exited)."""
        if self.exited():
            return 0.0
        assert self.process is not None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        # Fields 14 and 15 of the whole line (utime, stime) are 12 and 13 after the name.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    def log_bytes(self) -> int:
        """The log file's size now (0 before it exists)."""
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0


def _normal_policy() -> None:
    """In the child before exec: back to SCHED_OTHER."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


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
        # At real-time priority etcd was seen spinning a whole CPU for seconds,
        # which kept the equal-priority brokers off the CPUs until their leases
        # expired: it runs under the normal policy.
        super().__init__("etcd", command, directory / "etcd.log", normal_policy=True)

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
    """``distributary serve`` on ``host`` with its data dir ``directory/broker-<id>``;
    a member of ``cluster_url`` as ``node_id``, or a single broker when it is None."""

    def __init__(
        self, directory: Path, node_id: int, cluster_url: str | None, host: str = HOST
    ) -> None:
        self.node_id = node_id
        self.host = host
        self.port = free_port(host)
        self.data_dir = directory / f"broker-{node_id}"
        command = [sys.executable, "-m", "broker", "serve", "--listen", self.address]
        command += ["--data-dir", str(self.data_dir), "--log-format", "json"]
        if cluster_url is not None:
            command += ["--cluster", cluster_url, "--node-id", str(node_id)]
        super().__init__(f"broker {node_id}", command, directory / f"broker-{node_id}.log")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def wait_listening(self) -> None:
        """Raises BenchError when the broker exits or does not listen in time."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.exited():
                raise BenchError(f"{self.name} exited: {self.tail()}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            return
        raise BenchError(f"{self.name} did not listen within {START_TIMEOUT_S} s")

    def disturbances_since(self, offset: int) -> list[str]:
        """The DISTURBANCE_EVENTS the broker logged past byte ``offset`` of its log
        (JSON lines), each as "<time> broker <id>: <event> <reason>"."""
        try:
            with self.log.open("rb") as log:
                log.seek(offset)
                lines = log.read().splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line not written by the broker's JSON logger
            if isinstance(entry, dict) and entry.get("event") in DISTURBANCE_EVENTS:
                at = str(entry.get("timestamp", ""))[11:23]
                reason = entry.get("reason", entry.get("isr", ""))
                found.append(f"{at} {self.name}: {entry['event']} {reason}".rstrip())
        return found


class Probe:
    """Metadata asked of one chosen broker (not routed by the SDK)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def metadata(self, broker: Broker, topics: list[str]) -> MetadataResponse | None:
        """The broker's answer, or None when it does not answer."""
        try:
            connection = await self.cluster.connection_to(
                (broker.host, broker.port), attempts_max=1
            )
            response = await connection.request(
                MetadataRequest(topics), timeout_ms=PROBE_TIMEOUT_MS
            )
        except DistributaryError:
            return None
        body = response.body
        assert isinstance(body, MetadataResponse)
        return body


def partitions(body: MetadataResponse | None, topic: str) -> dict[int, PartitionMetadata]:
    """Partition -> its metadata in ``body`` for ``topic`` (empty when it is unknown)."""
    if body is None:
        return {}
    for entry in body.topics:
        if entry.name == topic and not entry.error_code:
            return {p.partition: p for p in entry.partitions}
    return {}


def leaders(body: MetadataResponse | None, topic: str) -> dict[int, int]:
    """Partition -> leader in ``body`` for ``topic`` (empty when it is unknown)."""
    return {number: p.leader for number, p in partitions(body, topic).items()}


async def wait_for(
    what: str,
    condition: Callable[[], Awaitable[bool]],
    poll_s: float,
    timeout_s: float = EVENT_TIMEOUT_S,
) -> float:
    """Poll until ``condition()``; return time.monotonic() then.  Raises BenchError
    after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return time.monotonic()
        await asyncio.sleep(poll_s)
    raise BenchError(f"{what}: not within {timeout_s} s")


@dataclass
class RunningCluster:
    etcd: Etcd
    brokers: list[Broker]
    probe: Probe
    # Each broker's last answer to in_sync's probe (named when wait_in_sync times out).
    last_seen: dict[int, dict[int, PartitionMetadata]] = field(default_factory=dict)

    @property
    def bootstrap(self) -> list[str]:
        return [broker.address for broker in self.brokers]

    def broker(self, node_id: int) -> Broker:
        return next(b for b in self.brokers if b.node_id == node_id)

    async def controller(self) -> int:
        """The controller's node id as the first broker that answers names it.
        Raises BenchError when none names one."""
        for broker in self.brokers:
            body = await self.probe.metadata(broker, [])
            if body is not None and body.controller_id >= 0:
                return body.controller_id
        raise BenchError("no broker names a controller")

    async def in_sync(
        self,
        topic: str,
        partition_count: int,
        observers: Sequence[Broker] | None = None,
        preferred: bool = False,
    ) -> dict[int, PartitionMetadata] | None:
        """The partitions of ``topic`` when every observer (default: every broker)
        lists them all, each led and with all its replicas in sync (and, with
        ``preferred``, led by its first replica), the same in every answer; else
        None."""
        agreed: dict[int, PartitionMetadata] | None = None
        for broker in observers or self.brokers:
            found = partitions(await self.probe.metadata(broker, [topic]), topic)
            self.last_seen[broker.node_id] = found
            if len(found) != partition_count or (agreed is not None and found != agreed):
                return None
            for state in found.values():
                if state.leader < 0 or sorted(state.isr) != sorted(state.replicas):
                    return None
                if preferred and state.leader != state.replicas[0]:
                    return None
            agreed = found
        return agreed

    async def wait_in_sync(
        self,
        topic: str,
        partition_count: int,
        preferred: bool = False,
        timeout_s: float = EVENT_TIMEOUT_S,
    ) -> tuple[float, dict[int, PartitionMetadata]]:
        """Wait for :meth:`in_sync` over every broker; the time.monotonic() then and
        the partitions.  Raises BenchError after ``timeout_s``."""
        seen: list[dict[int, PartitionMetadata]] = []

        async def synced() -> bool:
            found = await self.in_sync(topic, partition_count, preferred=preferred)
            if found is not None:
                seen.append(found)
            return found is not None

        try:
            at = await wait_for(f"{topic}: all replicas in sync", synced, IN_SYNC_POLL_S, timeout_s)
        except BenchError as error:
            raise BenchError(f"{error}; last seen: {self.last_seen}") from None
        return at, seen[-1]

    async def create_topic(
        self,
        topic: str,
        partition_count: int,
        replication_factor: int,
        configs: dict[str, str] | None = None,
    ) -> dict[int, PartitionMetadata]:
        """Create ``topic`` and wait until it is in sync (:meth:`wait_in_sync`) and
        each leader answers ListOffsets for its partitions (its leadership is in
        place).  Raises BenchError, or the SDK's error for a refused creation."""
        async with Admin(self.bootstrap) as admin:
            await admin.create_topic(
                topic, partition_count, replication_factor=replication_factor, configs=configs
            )
        _, found = await self.wait_in_sync(topic, partition_count)
        async with Consumer(self.bootstrap) as consumer:
            targets = {TopicPartition(topic, p): -1 for p in range(partition_count)}
            await consumer.list_offsets(targets)
        return found


@asynccontextmanager
async def running_cluster(
    directory: Path, hosts: Sequence[str] = (HOST, HOST, HOST)
) -> AsyncIterator[RunningCluster]:
    """A fresh etcd and one broker per host (node ids 1, 2, ...), once every broker's
    Metadata lists them all and a controller; all stopped on exit.  Raises
    BenchError when a process does not start or the cluster does not form."""
    etcd = Etcd(directory)
    cluster_url = etcd.cluster_url()
    brokers = [
        Broker(directory, node_id, cluster_url, host) for node_id, host in enumerate(hosts, start=1)
    ]
    etcd.start()
    try:
        etcd.wait_ready()
        for broker in brokers:
            broker.start()
        for broker in brokers:
            await broker.wait_listening()
        bootstrap = [broker.address for broker in brokers]
        probe = Probe(await Cluster.open(bootstrap, connect_timeout_ms=PROBE_TIMEOUT_MS))
        try:

            async def formed() -> bool:
                for broker in brokers:
                    body = await probe.metadata(broker, [])
                    if body is None or len(body.brokers) != len(brokers) or body.controller_id < 0:
                        return False
                return True

            await wait_for("cluster formed", formed, FORMED_POLL_S)
            yield RunningCluster(etcd, brokers, probe)
        finally:
            await probe.cluster.shutdown()
    finally:
        for broker in brokers:
            broker.terminate()
        for broker in brokers:
            broker.stop()
        etcd.stop()
