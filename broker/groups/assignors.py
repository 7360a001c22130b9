"""Server-side partition assignors: pure functions from subscriptions to an assignment.

The coordinator computes a group's *target assignment* whenever its membership,
subscriptions or the subscribed topics' partition counts change (KIP-848: the
server assigns; members only reconcile towards the target).  An assignor gets
every member's resolved topic set, the partition count of every subscribed topic
and the previous target, and returns a partition set for every member.

* ``range``: per topic, the subscribed members in a stable order (instance id,
  else member id) get contiguous ranges; the first ``partitions % members`` get
  one more.  Kafka's RangeAssignor.  Predictable, but a join or a leave shifts
  most ranges.
* ``sticky``: keeps every partition with its previous owner when that owner is
  still subscribed, gives orphaned partitions to the least-loaded eligible
  member, then moves partitions one at a time from the most- to the
  least-loaded member while they differ by more than one.  With identical
  subscriptions every move is one the balance requires, so the result is
  balanced to +-1 with the fewest partitions moved (Kafka's UniformAssignor
  reaches the same); with different subscriptions it is balanced as far as
  eligibility allows.

Both are deterministic: ties break on the stable member order and partition order.
Cost: O(partitions * log members) plus, for sticky, at most one move per partition.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from client.types import TopicPartition

Assignment = dict[str, set[TopicPartition]]


@dataclass(frozen=True)
class MemberSubscription:
    """What an assignor knows about one member."""

    topics: frozenset[str]
    instance_id: str | None = None


class Assignor(Protocol):
    name: str

    def assign(
        self,
        members: Mapping[str, MemberSubscription],
        partition_counts: Mapping[str, int],
        previous: Mapping[str, set[TopicPartition]],
    ) -> Assignment: ...


def member_order(members: Mapping[str, MemberSubscription]) -> list[str]:
    """Members in a stable order: static members by instance id first, then the rest
    by member id (so a static member that restarts keeps its place)."""
    return sorted(
        members,
        key=lambda member_id: (
            members[member_id].instance_id is None,
            members[member_id].instance_id or "",
            member_id,
        ),
    )


def _subscribed_topics(
    members: Mapping[str, MemberSubscription], partition_counts: Mapping[str, int]
) -> list[str]:
    return sorted(
        {topic for member in members.values() for topic in member.topics}
        & {topic for topic, count in partition_counts.items() if count > 0}
    )


class RangeAssignor:
    """Contiguous ranges per topic (see the module docstring)."""

    name = "range"

    def assign(
        self,
        members: Mapping[str, MemberSubscription],
        partition_counts: Mapping[str, int],
        previous: Mapping[str, set[TopicPartition]],
    ) -> Assignment:
        assignment: Assignment = {member_id: set() for member_id in members}
        order = member_order(members)
        for topic in _subscribed_topics(members, partition_counts):
            subscribers = [member_id for member_id in order if topic in members[member_id].topics]
            count = partition_counts[topic]
            share, extra = divmod(count, len(subscribers))
            start = 0
            for number, member_id in enumerate(subscribers):
                size = share + (1 if number < extra else 0)
                assignment[member_id].update(
                    TopicPartition(topic, partition) for partition in range(start, start + size)
                )
                start += size
            assert start == count, (start, count)
        return assignment


class StickyAssignor:
    """Balanced, moving as few partitions as possible (see the module docstring)."""

    name = "sticky"

    def assign(
        self,
        members: Mapping[str, MemberSubscription],
        partition_counts: Mapping[str, int],
        previous: Mapping[str, set[TopicPartition]],
    ) -> Assignment:
        assignment: Assignment = {member_id: set() for member_id in members}
        if not members:
            return assignment
        rank = {member_id: number for number, member_id in enumerate(member_order(members))}
        eligible: dict[str, list[str]] = {}
        for topic in _subscribed_topics(members, partition_counts):
            eligible[topic] = sorted(
                (m for m in members if topic in members[m].topics), key=rank.__getitem__
            )
        # 1. Keep what each member had, if it still exists and the member still wants it.
        owner: dict[TopicPartition, str] = {}
        for member_id in sorted(previous, key=lambda m: rank.get(m, len(rank))):
            if member_id not in members:
                continue
            for tp in sorted(previous[member_id]):
                if (
                    tp.topic in eligible
                    and tp.partition < partition_counts[tp.topic]
                    and tp.topic in members[member_id].topics
                    and tp not in owner
                ):
                    owner[tp] = member_id
                    assignment[member_id].add(tp)
        # 2. Orphans go to the least-loaded eligible member.
        for topic, subscribers in eligible.items():
            for partition in range(partition_counts[topic]):
                tp = TopicPartition(topic, partition)
                if tp in owner:
                    continue
                chosen = min(subscribers, key=lambda m: (len(assignment[m]), rank[m]))
                owner[tp] = chosen
                assignment[chosen].add(tp)
        # 3. Even out: move from the most- to the least-loaded while they differ by > 1.
        self._balance(assignment, members, rank)
        return assignment

    @staticmethod
    def _balance(
        assignment: Assignment, members: Mapping[str, MemberSubscription], rank: dict[str, int]
    ) -> None:
        total = sum(len(partitions) for partitions in assignment.values())
        # Every move lowers the sum of squared loads by at least 2, which bounds the loop.
        for _ in range(total * total + 1):
            move = StickyAssignor._best_move(assignment, members, rank)
            if move is None:
                return
            tp, source, target = move
            assignment[source].remove(tp)
            assignment[target].add(tp)
        raise AssertionError("sticky balancing did not converge")  # pragma: no cover

    @staticmethod
    def _best_move(
        assignment: Assignment, members: Mapping[str, MemberSubscription], rank: dict[str, int]
    ) -> tuple[TopicPartition, str, str] | None:
        """A partition to move from a loaded member to one with at least two fewer,
        preferring the most loaded source and the least loaded target."""
        by_load_ascending = sorted(assignment, key=lambda m: (len(assignment[m]), rank[m]))
        loads = [(-len(assignment[m]), rank[m], m) for m in assignment]
        heapq.heapify(loads)
        for _ in range(len(loads)):
            _, _, source = heapq.heappop(loads)
            source_load = len(assignment[source])
            # The source's partitions, highest first, so the lowest stay put.
            candidates = sorted(assignment[source], reverse=True)
            for target in by_load_ascending:
                if len(assignment[target]) >= source_load - 1:
                    break
                for tp in candidates:
                    if tp.topic in members[target].topics:
                        return tp, source, target
        return None


ASSIGNORS: dict[str, Assignor] = {"range": RangeAssignor(), "sticky": StickyAssignor()}
