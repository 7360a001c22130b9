"""Consumer-group benchmarks: ``python -m bench.groups``.

Starts a fresh ``distributary serve`` on 127.0.0.1 (a free port, a temporary
data directory removed afterwards) and measures, with every member a separate
process (``python -m bench.groups --member ...``):

* ``groups.consume.plain``: one plain consumer (assigned all 12 partitions)
  reading ``--records`` records from the beginning: records/s.
* ``groups.consume.members_N`` (N = 1, 2, 4): a fresh group of N members
  reading the same records (each from a new group, so from the beginning):
  total records/s from the first record any member got to the last.
* ``groups.failover_ms``: two members on a topic that keeps receiving records;
  one is SIGKILLed; the time until the survivor consumes a record of a
  partition the dead member held.  Default timeouts (10 s session, 1 s
  heartbeat), so it is about the session timeout by design.
* ``groups.join_to_stable_ms``: a stable group of two; a third member starts
  (timed from its subscribe call) until DescribeGroups reports the group
  stable with three members.  Default timeouts.

Prints a table and one JSON line per figure.  Figures are reported, not
asserted (the machine's core count bounds how far members scale: the broker
is one Python process).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import structlog

from bench.broker_process import start_broker

TOPIC = "bench-groups"
PARTITIONS = 12


# -- member processes -----------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


async def run_member(arguments: argparse.Namespace) -> None:
    """One consumer process: counts records and reports timings as JSON lines."""
    from client import Consumer, TopicPartition

    seen: set[str] = set()  # partitions with a record since they were (re)assigned

    def assigned(partitions: set[TopicPartition]) -> None:
        seen.difference_update(str(tp) for tp in partitions)
        emit("assigned", partitions=sorted(str(tp) for tp in partitions))

    consumer = Consumer(
        arguments.bootstrap, group=arguments.group, auto_offset_reset="earliest", on_assign=assigned
    )
    async with consumer:
        if arguments.group is None:
            await consumer.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
            await consumer.seek_to_beginning()
        else:
            emit("subscribing")
            await consumer.subscribe([TOPIC])
        count = reported = 0
        first = last = 0.0
        next_report = time.monotonic()
        while True:  # until the driver stops the process
            batches = await consumer.getmany(timeout_ms=100)
            if batches:
                now = time.time()
                first = first or now
                last = now
            for tp, records in batches.items():
                count += len(records)
                if arguments.follow and str(tp) not in seen:
                    seen.add(str(tp))
                    emit("first_record", partition=str(tp))
            if count != reported and time.monotonic() >= next_report:
                emit("progress", count=count, first=first, last=last)
                reported = count
                next_report = time.monotonic() + 0.1


# -- the driver -----------------------------------------------------------------------


class Member:
    """A member process and its events (read by a thread)."""

    def __init__(self, bootstrap: str, group: str | None, *, follow: bool = False) -> None:
        command = [sys.executable, "-m", "bench.groups", "--member", "--bootstrap", bootstrap]
        if group is not None:
            command += ["--group", group]
        if follow:
            command.append("--follow")
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(b"{"):
                with self._lock:
                    self.events.append(json.loads(line))

    def find(self, event: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == event]

    def progress(self) -> dict[str, Any]:
        reports = self.find("progress")
        return reports[-1] if reports else {"count": 0, "first": 0.0, "last": 0.0}

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def produce(bootstrap: str, count: int, value_bytes: int) -> None:
    from client.sync import Admin, Producer

    with Admin(bootstrap) as admin:
        admin.create_topic(TOPIC, PARTITIONS)
    value = os.urandom(value_bytes)
    with Producer(bootstrap) as producer:
        chunk = 10_000
        for start in range(0, count, chunk):
            keys = [b"k%d" % n for n in range(start, min(start + chunk, count))]
            producer.send_many(TOPIC, [value] * len(keys), keys=keys, timeout=60)


def throughput(bootstrap: str, group: str | None, members: int, expected: int) -> float:
    processes = [Member(bootstrap, group) for _ in range(members)]
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            results = [process.progress() for process in processes]
            if sum(result["count"] for result in results) >= expected:
                break
            time.sleep(0.05)
        total = sum(result["count"] for result in results)
        assert total == expected, (total, expected)
    finally:
        for process in processes:
            process.stop()
    first = min(r["first"] for r in results if r["count"])
    last = max(r["last"] for r in results)
    return total / (last - first)


def describe_state(bootstrap: str, group: str) -> tuple[str, int]:
    from client.errors import UnknownGroupError
    from client.sync import Admin

    with Admin(bootstrap) as admin:
        try:
            description = admin.describe_group(group)
        except UnknownGroupError:
            return "missing", 0
    return description.state, len(description.members)


def wait_stable(bootstrap: str, group: str, members: int, timeout_s: float = 60) -> float:
    from client.errors import UnknownGroupError
    from client.sync import Admin

    deadline = time.monotonic() + timeout_s
    with Admin(bootstrap) as admin:
        while time.monotonic() < deadline:
            try:
                description = admin.describe_group(group)
            except UnknownGroupError:
                time.sleep(0.01)
                continue
            if description.state == "stable" and len(description.members) == members:
                return time.time()
            time.sleep(0.01)
    raise RuntimeError(f"group {group} not stable with {members} members")


def failover_and_join(bootstrap: str) -> tuple[float, float]:
    """(SIGKILL -> partitions consumed again, join -> stable), both in ms."""
    from client.sync import Producer

    stop = threading.Event()

    def keep_producing() -> None:
        with Producer(bootstrap) as producer:
            number = 0
            while not stop.is_set():
                keys = [b"f%d" % n for n in range(number, number + 120)]
                producer.send_many(TOPIC, [b"x"] * 120, keys=keys, timeout=30)
                number += 120
                time.sleep(0.05)

    feeder = threading.Thread(target=keep_producing, daemon=True)
    feeder.start()
    members = [Member(bootstrap, "failover", follow=True) for _ in range(2)]
    try:
        wait_stable(bootstrap, "failover", 2)
        time.sleep(1.0)
        victim, survivor = members
        victim_partitions = set(victim.find("assigned")[-1]["partitions"])
        killed_at = time.time()
        victim.kill()
        deadline = time.monotonic() + 60
        consumed_at = None
        while consumed_at is None and time.monotonic() < deadline:
            for event in survivor.find("first_record"):
                if event["partition"] in victim_partitions and event["t"] > killed_at:
                    consumed_at = event["t"]
            time.sleep(0.01)
        assert consumed_at is not None, "the survivor never took the partitions over"
        failover_ms = (consumed_at - killed_at) * 1000
        wait_stable(bootstrap, "failover", 1)
        joiners = [Member(bootstrap, "failover", follow=True) for _ in range(2)]
        members += joiners
        wait_stable(bootstrap, "failover", 3)
        time.sleep(1.0)
        newcomer = Member(bootstrap, "failover", follow=True)
        members.append(newcomer)
        deadline = time.monotonic() + 30
        while not newcomer.find("subscribing") and time.monotonic() < deadline:
            time.sleep(0.005)
        joined_at = newcomer.find("subscribing")[0]["t"]
        stable_at = wait_stable(bootstrap, "failover", 4)
        return failover_ms, (stable_at - joined_at) * 1000
    finally:
        stop.set()
        for member in members:
            member.stop()
        feeder.join(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--member", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--follow", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if not arguments.member and not 100_000 <= arguments.records <= 50_000_000:
        # Fewer records arrive in one fetch or two, leaving no time span to divide by.
        parser.error("--records must be between 100,000 and 50,000,000")
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(40),
    )
    if arguments.member:
        anyio.run(run_member, arguments, backend="trio")
        return 0
    figures: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="distributary-groups-") as data_dir:
        broker, bootstrap = start_broker(str(Path(data_dir) / "data"))
        try:
            produce(bootstrap, arguments.records, arguments.value_bytes)
            plain = throughput(bootstrap, None, 1, arguments.records)
            figures.append(("groups.consume.plain", plain, "records/s"))
            for members in (1, 2, 4):
                rate = throughput(bootstrap, f"tp-{members}", members, arguments.records)
                figures.append((f"groups.consume.members_{members}", rate, "records/s"))
            failover_ms, join_ms = failover_and_join(bootstrap)
            figures.append(("groups.failover_ms", failover_ms, "ms"))
            figures.append(("groups.join_to_stable_ms", join_ms, "ms"))
        finally:
            broker.send_signal(signal.SIGTERM)
            broker.wait(timeout=30)
    width = max(len(name) for name, _, _ in figures)
    for name, value, unit in figures:
        print(f"{name.ljust(width)}  {value:>12,.0f} {unit}")
    for name, value, unit in figures:
        print(
            json.dumps(
                {"name": name, "value": round(value, 1), "unit": unit, "cpus": os.cpu_count()}
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
