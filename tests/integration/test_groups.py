"""Consumer groups end to end: real brokers, real consumer processes (group_consumer.py),
SIGKILL and restarts, the SDK and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client.errors import UnknownGroupError
from client.protocol.messages import (
    ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetCommitTopic,
)
from client.records.builder import build_batch
from client.sync import Admin, Consumer, Producer
from client.types import TopicPartition

pytestmark = pytest.mark.timeout(60)

SCRIPT = Path(__file__).with_name("group_consumer.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
SESSION_TIMEOUT_MS = 2_000
HEARTBEAT_INTERVAL_MS = 200


class ConsumerProcess:
    """One group_consumer.py process and the JSON lines it printed."""

    def __init__(self, broker: Any, group: str, topic: str, *extra: str) -> None:
        command = [
            sys.executable,
            str(SCRIPT),
            "--bootstrap",
            broker.address,
            "--group",
            group,
            "--topic",
            topic,
            "--session-timeout-ms",
            str(SESSION_TIMEOUT_MS),
            "--heartbeat-interval-ms",
            str(HEARTBEAT_INTERVAL_MS),
            *extra,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTARY_")}
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO_ROOT, env=env
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

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def wait_for(self, predicate: Callable[[ConsumerProcess], bool], timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self):
                return
            assert self.process.poll() is None or predicate(self), "consumer died"
            time.sleep(0.02)
        raise AssertionError(f"condition not met within {timeout_s} s: {self.snapshot()[-5:]}")

    @property
    def owned(self) -> set[str]:
        owned: set[str] = set()
        for event in self.snapshot():
            if event["event"] == "assigned":
                owned |= set(event["partitions"])
            elif event["event"] in ("revoked", "lost"):
                owned -= set(event["partitions"])
        return owned

    def consumed(self) -> list[tuple[str, int]]:
        return [
            (event["partition"], offset)
            for event in self.snapshot()
            if event["event"] == "records"
            for offset in event["offsets"]
        ]

    def last_commits(self) -> dict[str, int]:
        commits: dict[str, int] = {}
        for event in self.snapshot():
            if event["event"] == "committed":
                commits.update(event["offsets"])
        return commits

    def revoked(self) -> set[str]:
        return {
            partition
            for event in self.snapshot()
            if event["event"] in ("revoked", "lost")
            for partition in event["partitions"]
        }

    def stop(self) -> None:
        """SIGTERM: commit and leave the group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)
        self._reader.join(timeout=5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)
        self._reader.join(timeout=5)


@pytest.fixture
def consumers() -> Iterator[Callable[..., ConsumerProcess]]:
    started: list[ConsumerProcess] = []

    def start(broker: Any, group: str, topic: str, *extra: str) -> ConsumerProcess:
        process = ConsumerProcess(broker, group, topic, *extra)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def produce(broker: Any, topic: str, count: int, start: int = 0) -> dict[int, int]:
    """``count`` keyed records spread over the partitions; returns records per partition."""
    per_partition: dict[int, int] = {}
    with Producer(broker.address) as producer:
        values = [b"v%d" % n for n in range(start, start + count)]
        keys = [b"k%d" % n for n in range(start, start + count)]
        for metadata in producer.send_many(topic, values, keys=keys, timeout=30):
            per_partition[metadata.partition] = per_partition.get(metadata.partition, 0) + 1
    return per_partition


def log_ends(broker: Any, topic: str) -> dict[str, int]:
    with Admin(broker.address) as admin:
        (description,) = admin.describe_topics([topic])
    return {f"{topic}-{p.partition}": p.log_end_offset for p in description.partitions}


def all_offsets(ends: dict[str, int]) -> set[tuple[str, int]]:
    return {(partition, offset) for partition, end in ends.items() for offset in range(end)}


def consumed_everything(processes: list[ConsumerProcess], ends: dict[str, int]) -> bool:
    seen = {item for process in processes for item in process.consumed()}
    return seen >= all_offsets(ends)


def wait_stable(broker: Any, group: str, members: int, timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    description = None
    with Admin(broker.address) as admin:
        while time.monotonic() < deadline:
            try:
                description = admin.describe_group(group)
            except UnknownGroupError:  # no member has joined yet
                time.sleep(0.05)
                continue
            if description.state == "stable" and len(description.members) == members:
                return description
            time.sleep(0.05)
    raise AssertionError(f"group {group} not stable with {members} members: {description}")


def create_topic(broker: Any, topic: str, partitions: int) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic(topic, partitions)


def test_three_members_share_six_partitions_exactly_once(
    broker: Any, consumers: Callable[..., ConsumerProcess]
) -> None:
    """Three members of a group on a 6-partition topic get 2 partitions each, and every
    record is consumed exactly once across the group when nobody fails (including the
    rebalances while members join one by one)."""
    create_topic(broker, "orders", 6)
    produce(broker, "orders", 300)
    members = [consumers(broker, "billing", "orders") for _ in range(3)]
    produce(broker, "orders", 300, start=300)
    ends = log_ends(broker, "orders")
    for member in members:
        member.wait_for(lambda m: consumed_everything(members, ends), timeout_s=30)
    wait_stable(broker, "billing", 3)
    for member in members:
        member.wait_for(lambda m: len(m.owned) == 2)
    assert sorted(p for m in members for p in m.owned) == sorted(ends)
    consumed = [item for member in members for item in member.consumed()]
    assert sorted(consumed) == sorted(all_offsets(ends))  # no duplicates, nothing missing


def test_sigkill_moves_partitions_and_resumes_from_the_last_commit(
    broker: Any, consumers: Callable[..., ConsumerProcess]
) -> None:
    """SIGKILL of one member: its partitions move to the others within the session
    timeout, nothing is skipped, and only what it had not committed is delivered again."""
    create_topic(broker, "events", 6)
    members = [consumers(broker, "g", "events") for _ in range(3)]
    wait_stable(broker, "g", 3)
    produce(broker, "events", 600)
    ends = log_ends(broker, "events")
    members[0].wait_for(lambda m: consumed_everything(members, ends), timeout_s=30)
    victim, survivors = members[0], members[1:]
    victim_partitions = victim.owned
    assert len(victim_partitions) == 2
    victim.kill()
    killed_at = time.monotonic()
    commits = victim.last_commits()
    produce(broker, "events", 600, start=600)
    ends = log_ends(broker, "events")
    for survivor in survivors:
        survivor.wait_for(lambda m: consumed_everything(members, ends), timeout_s=30)
    taken_at = min(
        event["at"]
        for survivor in survivors
        for event in survivor.snapshot()
        if event["event"] == "assigned" and set(event["partitions"]) & victim_partitions
    )
    assert taken_at - killed_at < (SESSION_TIMEOUT_MS + 1_500) / 1000
    assert set().union(*(s.owned for s in survivors)) == set(ends)
    consumed = [item for member in members for item in member.consumed()]
    assert set(consumed) == all_offsets(ends)  # nothing skipped
    counts: dict[tuple[str, int], int] = {}
    for item in consumed:
        counts[item] = counts.get(item, 0) + 1
    redelivered = {item for item, count in counts.items() if count > 1}
    victim_consumed = set(victim.consumed())
    for partition, offset in redelivered:
        assert partition in victim_partitions
        assert offset >= commits.get(partition, 0), (partition, offset, commits)
        assert (partition, offset) in victim_consumed


def test_fourth_member_moves_only_what_it_needs(
    broker: Any, consumers: Callable[..., ConsumerProcess]
) -> None:
    """A fourth member joining a stable group of three on six partitions takes one
    partition; the members that keep theirs never release them and keep consuming them
    through the rebalance."""
    create_topic(broker, "clicks", 6)
    members = [consumers(broker, "g", "clicks") for _ in range(3)]
    wait_stable(broker, "g", 3)
    before = [member.owned for member in members]
    newcomer = consumers(broker, "g", "clicks")
    produce(broker, "clicks", 300)
    wait_stable(broker, "g", 4)
    produce(broker, "clicks", 300, start=300)
    everyone = [*members, newcomer]
    ends = log_ends(broker, "clicks")
    newcomer.wait_for(lambda m: consumed_everything(everyone, ends), timeout_s=30)
    moved = [had - member.owned for member, had in zip(members, before, strict=True)]
    assert sum(len(partitions) for partitions in moved) == 1
    assert len(newcomer.owned) == 1 and newcomer.owned == set().union(*moved)
    for member, had in zip(members, before, strict=True):
        kept = had & member.owned
        assert not member.revoked() & kept  # never released what it kept
        consumed_by_member = {p for p, _ in member.consumed()}
        assert kept <= consumed_by_member  # and consumed it, during and after
    consumed = [item for member in everyone for item in member.consumed()]
    assert sorted(consumed) == sorted(all_offsets(ends))


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_commits_survive_a_broker_restart(broker: Any, stop: str) -> None:
    """Committed offsets (and the group) survive a broker restart after SIGTERM and
    after SIGKILL; a member then resumes exactly after them."""
    create_topic(broker, "audit", 3)
    produce(broker, "audit", 90)
    with Consumer(
        broker.address,
        group="auditors",
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    ) as consumer:
        consumer.subscribe(["audit"])
        consumer.wait_for_assignment(timeout=10)
        taken = list(consumer.records(idle_timeout=1.0, max_records=90))
        assert len(taken) == 90
        consumer.commit()
        committed = consumer.committed()
    assert sum(committed.values()) == 90
    if stop == "sigterm":
        broker.restart()
    else:
        broker.kill()
        broker.start()
    with Admin(broker.address) as admin:
        description = admin.describe_group("auditors")
        assert {
            TopicPartition(p.topic, p.partition): p.committed_offset for p in description.partitions
        } == committed
        assert description.state == "empty"
    produce(broker, "audit", 30, start=90)
    with Consumer(broker.address, group="auditors", auto_offset_reset="earliest") as consumer:
        consumer.subscribe(["audit"])
        consumer.wait_for_assignment(timeout=10)
        values = sorted(r.value for r in consumer.records(idle_timeout=1.5))
    assert values == sorted(b"v%d" % n for n in range(90, 120))


def test_lag_in_describe_is_exact_and_reset_offsets(broker: Any) -> None:
    """``groups describe`` reports committed offset, log end and lag exactly;
    ``groups reset-offsets`` is refused while members are active, and afterwards
    moves the committed offsets as asked (dry runs change nothing)."""
    create_topic(broker, "ledger", 2)
    with Producer(broker.address) as producer:
        producer.send_many("ledger", [b"a%d" % n for n in range(40)], partition=0)
        producer.send_many("ledger", [b"b%d" % n for n in range(25)], partition=1)
    tp0, tp1 = TopicPartition("ledger", 0), TopicPartition("ledger", 1)
    consumer = Consumer(
        broker.address,
        group="acct",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    )
    consumer.subscribe(["ledger"])
    consumer.wait_for_assignment(timeout=10)
    consumer.commit({tp0: 13, tp1: 20})
    described = cli(broker, "groups", "describe", "acct", "--json")
    rows = {(p["topic"], p["partition"]): p for p in json.loads(described.stdout)["partitions"]}
    assert rows[("ledger", 0)]["committed_offset"] == 13 and rows[("ledger", 0)]["lag"] == 27
    assert rows[("ledger", 1)]["committed_offset"] == 20 and rows[("ledger", 1)]["lag"] == 5
    assert (
        rows[("ledger", 0)]["log_end_offset"] == 40 and rows[("ledger", 1)]["log_end_offset"] == 25
    )
    refused = cli(
        broker, "groups", "reset-offsets", "acct", "--topic", "ledger", "--to-earliest", check=False
    )
    assert refused.returncode == 1 and "has 1 active member;" in refused.stderr
    lags = consumer.lag()
    assert lags[tp0].committed == 13 and lags[tp0].log_end_offset == 40
    consumer.close()  # leaves the group: its members are gone at once
    with Admin(broker.address) as admin:

        def committed() -> dict[TopicPartition, int]:
            return admin.committed_offsets("acct")

        cli(
            broker,
            "groups",
            "reset-offsets",
            "acct",
            "--topic",
            "ledger",
            "--to-earliest",
            "--dry-run",
        )
        assert committed() == {tp0: 13, tp1: 20}
        cli(broker, "groups", "reset-offsets", "acct", "--topic", "ledger", "--to-earliest")
        assert committed() == {tp0: 0, tp1: 0}
        cli(broker, "groups", "reset-offsets", "acct", "--topic", "ledger", "--to-offset", "30")
        assert committed() == {tp0: 30, tp1: 25}  # clamped to the log end
        cli(broker, "groups", "reset-offsets", "acct", "--topic", "ledger", "--shift-by", "-10")
        assert committed() == {tp0: 20, tp1: 15}
        cli(broker, "groups", "reset-offsets", "acct", "--topic", "ledger", "--to-latest")
        assert committed() == {tp0: 40, tp1: 25}
        cli(
            broker,
            "groups",
            "reset-offsets",
            "acct",
            "--topic",
            "ledger",
            "--to-datetime",
            "2000-01-01T00:00:00Z",
        )
        assert committed() == {tp0: 0, tp1: 0}
    tailed = cli(broker, "tail", "ledger", "-g", "acct", "-e", "--raw")
    assert len(tailed.stdout.splitlines()) == 65
    listed = cli(broker, "groups", "list", "--json")
    assert json.loads(listed.stdout) == [{"group_id": "acct", "state": "empty", "members": 0}]
    cli(broker, "groups", "delete", "acct")
    assert json.loads(cli(broker, "groups", "list", "--json").stdout) == []


def test_fenced_member_commit_is_rejected(broker: Any, raw_client: Callable[..., Any]) -> None:
    """A member expelled for missing heartbeats cannot commit (UNKNOWN_MEMBER), and a
    commit with a stale epoch gets FENCED_MEMBER_EPOCH."""
    client = raw_client(broker.address)
    client.create_topic("pay", 2)
    client.produce("pay", {0: [build_batch([b"x"])]})
    joined = client.call(
        ConsumerGroupHeartbeatRequest(
            "fence", subscribed_topic_names=["pay"], session_timeout_ms=1_000
        )
    ).body
    assert isinstance(joined, ConsumerGroupHeartbeatResponse) and joined.error_code == 0

    def commit(epoch: int) -> OffsetCommitResponse:
        body = client.call(
            OffsetCommitRequest(
                "fence",
                joined.member_id,
                epoch,
                [OffsetCommitTopic("pay", [OffsetCommitPartition(0, 1)])],
            )
        ).body
        assert isinstance(body, OffsetCommitResponse)
        return body

    assert commit(joined.member_epoch).error_code == 0
    assert commit(joined.member_epoch + 7).error_code == 51  # FENCED_MEMBER_EPOCH
    # No heartbeat: the session (1 s) expires and the broker expels the member.
    assert broker.wait_for_log("member expelled")["reason"] == "session"
    assert commit(joined.member_epoch).error_code == 50  # UNKNOWN_MEMBER
    stale = client.call(
        ConsumerGroupHeartbeatRequest("fence", joined.member_id, joined.member_epoch)
    ).body
    assert isinstance(stale, ConsumerGroupHeartbeatResponse) and stale.error_code == 50


def test_static_member_keeps_its_partitions_across_a_quick_restart(
    broker: Any, consumers: Callable[..., ConsumerProcess]
) -> None:
    """A static member (instance id) that restarts within its session timeout gets the
    same partitions back, and the other member never got them meanwhile."""
    create_topic(broker, "static", 4)
    first = consumers(broker, "s", "static", "--instance-id", "a")
    other = consumers(broker, "s", "static", "--instance-id", "b")
    wait_stable(broker, "s", 2)
    first.wait_for(lambda m: len(m.owned) == 2)
    other.wait_for(lambda m: len(m.owned) == 2)
    had, others = first.owned, other.owned
    seen = len(other.snapshot())
    first.stop()  # SIGTERM: leaves "for a moment" (epoch -2), keeps its partitions
    again = consumers(broker, "s", "static", "--instance-id", "a")
    again.wait_for(lambda m: m.owned == had)
    time.sleep(0.5)  # a few heartbeats later nothing has moved
    assert other.owned == others
    assert [e for e in other.snapshot()[seen:] if e["event"] != "records"] == []


def cli(broker: Any, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTARY_")}
    env["DISTRIBUTARY_BOOTSTRAP"] = broker.address
    result = subprocess.run(
        [sys.executable, "-m", "broker", *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=30,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_pause_and_resume_in_a_group(broker: Any) -> None:
    """A paused partition is neither handed out nor skipped: after resume its records
    arrive, all of them, and the member never left the group meanwhile."""
    create_topic(broker, "paused", 2)
    tp0, tp1 = TopicPartition("paused", 0), TopicPartition("paused", 1)
    with Consumer(
        broker.address,
        group="p",
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    ) as consumer:
        consumer.subscribe(["paused"])
        assert consumer.wait_for_assignment(timeout=10) == {tp0, tp1}
        with Producer(broker.address) as producer:
            producer.send_many("paused", [b"a%d" % n for n in range(20)], partition=0)
            producer.send_many("paused", [b"b%d" % n for n in range(20)], partition=1)
        seen: dict[TopicPartition, list[int]] = {tp0: [], tp1: []}

        def take(until: Callable[[], bool], timeout_s: float = 10) -> None:
            deadline = time.monotonic() + timeout_s
            while not until() and time.monotonic() < deadline:
                for tp, records in consumer.getmany(timeout_ms=200).items():
                    seen[tp].extend(r.offset for r in records)

        take(lambda: bool(seen[tp0] or seen[tp1]))
        consumer.pause(tp0)
        assert consumer.paused() == {tp0}
        before = len(seen[tp0])
        take(lambda: len(seen[tp1]) == 20)
        take(lambda: False, timeout_s=0.7)  # nothing of tp0 while paused
        assert len(seen[tp0]) == before and sorted(seen[tp1]) == list(range(20))
        consumer.resume(tp0)
        take(lambda: len(seen[tp0]) == 20)
        assert sorted(seen[tp0]) == list(range(20))
        assert consumer.assignment() == {tp0, tp1}
        lags = consumer.lag()
        assert lags[tp0].lag == 0 and lags[tp1].lag == 0
