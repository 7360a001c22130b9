"""A coordinator on a manual clock, an in-memory "offsets topic" and helpers that act
like a well-behaved consumer (release what it is told to release, then heartbeat)."""

from __future__ import annotations

import random
from collections.abc import Iterable

from broker.groups.config import GroupConfig
from broker.groups.coordinator import (
    GroupCoordinator,
    HeartbeatRequest,
    HeartbeatResult,
    OffsetCommitInput,
    Record,
)
from client.types import TopicPartition

START_MS = 1_700_000_000_000
CONFIG = GroupConfig(session_timeout_ms=2_000, heartbeat_interval_ms=500)


class Harness:
    def __init__(self, topics: dict[str, int] | None = None, seed: int = 0) -> None:
        self.now_ms = START_MS
        self.topics: dict[str, int] = dict(topics or {"t": 6})
        self.log: list[Record] = []  # the "offsets topic", one partition is enough here
        self.coordinator = self.new_coordinator(seed)

    def new_coordinator(self, seed: int = 0) -> GroupCoordinator:
        return GroupCoordinator(
            CONFIG,
            clock_ms=lambda: self.now_ms,
            rng=random.Random(seed),
            topic_partitions=lambda: self.topics,
        )

    def restart(self) -> GroupCoordinator:
        """A new coordinator rebuilt from the log (a broker restart)."""
        self.coordinator = self.new_coordinator(seed=99)
        for offset, (key, value) in enumerate(self.log):
            self.coordinator.replay(key, value, offset)
        return self.coordinator

    def append(self, records: Iterable[Record]) -> None:
        for key, value in records:
            self.log.append((key, value))
            self.coordinator.replay(key, value, len(self.log) - 1)

    def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResult:
        result = self.coordinator.heartbeat(request)
        self.append(result.records)
        return result

    def join(self, group: str = "g", topics: Iterable[str] = ("t",), **fields: object) -> Member:
        result = self.heartbeat(
            HeartbeatRequest(group, subscribed_topic_names=list(topics), **fields)  # type: ignore[arg-type]
        )
        return Member(self, group, result)

    def commit(
        self, group: str, member_id: str, epoch: int, offsets: dict[TopicPartition, int]
    ) -> dict[TopicPartition, str]:
        """Commit; returns {tp: error class name} for refused partitions."""
        plan = self.coordinator.prepare_commit(
            group, member_id, epoch, {tp: OffsetCommitInput(o) for tp, o in offsets.items()}
        )
        self.append(plan.records)
        return {tp: type(error).__name__ for tp, error in plan.errors.items()}

    def advance(self, delta_ms: int) -> None:
        self.now_ms += delta_ms
        for records in self.coordinator.expire().records.values():
            self.append(records)


class Member:
    """A consumer that does what it is told: releases revoked partitions at once."""

    def __init__(self, harness: Harness, group: str, result: HeartbeatResult) -> None:
        self.harness = harness
        self.group = group
        self.member_id = result.member_id
        self.epoch = result.member_epoch
        self.owned: set[TopicPartition] = set(result.assignment)

    def heartbeat(self) -> HeartbeatResult:
        result = self.harness.heartbeat(
            HeartbeatRequest(self.group, self.member_id, self.epoch, owned=sorted(self.owned))
        )
        self.epoch = result.member_epoch
        self.owned = set(result.assignment)  # releases what is not in it
        return result

    def settle(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            self.heartbeat()

    def leave(self) -> None:
        self.harness.heartbeat(HeartbeatRequest(self.group, self.member_id, -1))


def settle(members: Iterable[Member], rounds: int = 4) -> None:
    """Heartbeat every member a few rounds (enough to finish any rebalance)."""
    members = list(members)
    for _ in range(rounds):
        for member in members:
            member.heartbeat()
