"""Tests for broker.groups.assignors: range is contiguous, sticky moves little and balances."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.groups.assignors import (
    Assignment,
    MemberSubscription,
    RangeAssignor,
    StickyAssignor,
    member_order,
)
from client.types import TopicPartition


def subscriptions(count: int, topics: frozenset[str]) -> dict[str, MemberSubscription]:
    return {f"m{number}": MemberSubscription(topics) for number in range(count)}


def loads(assignment: Assignment) -> list[int]:
    return sorted(len(partitions) for partitions in assignment.values())


def moved(before: Assignment, after: Assignment) -> int:
    """Partitions whose owner changed (or that a member lost to another)."""
    owner_before = {tp: m for m, parts in before.items() for tp in parts}
    owner_after = {tp: m for m, parts in after.items() for tp in parts}
    return sum(1 for tp, m in owner_after.items() if owner_before.get(tp, m) != m)


def all_partitions(assignment: Assignment) -> list[TopicPartition]:
    return [tp for parts in assignment.values() for tp in parts]


def test_range_gives_contiguous_ranges() -> None:
    """Range: 6 partitions over 3 members are three contiguous pairs in member order."""
    result = RangeAssignor().assign(subscriptions(3, frozenset({"t"})), {"t": 6}, {})
    assert [sorted(tp.partition for tp in result[m]) for m in ("m0", "m1", "m2")] == [
        [0, 1],
        [2, 3],
        [4, 5],
    ]


def test_range_gives_the_remainder_to_the_first_members() -> None:
    """Range: 7 partitions over 3 members are 3, 2, 2, each contiguous."""
    result = RangeAssignor().assign(subscriptions(3, frozenset({"t"})), {"t": 7}, {})
    assert [sorted(tp.partition for tp in result[m]) for m in ("m0", "m1", "m2")] == [
        [0, 1, 2],
        [3, 4],
        [5, 6],
    ]


def test_range_orders_static_members_by_instance_id() -> None:
    """Range: a static member keeps its place by instance id, whatever its member id."""
    members = {
        "zzz": MemberSubscription(frozenset({"t"}), instance_id="a"),
        "aaa": MemberSubscription(frozenset({"t"}), instance_id="b"),
    }
    assert member_order(members) == ["zzz", "aaa"]
    result = RangeAssignor().assign(members, {"t": 4}, {})
    assert sorted(tp.partition for tp in result["zzz"]) == [0, 1]


def test_range_only_assigns_subscribed_topics() -> None:
    """Range: members get partitions only of topics they subscribe to; unknown topics
    (no partition count) are skipped."""
    members = {
        "a": MemberSubscription(frozenset({"x", "missing"})),
        "b": MemberSubscription(frozenset({"y"})),
    }
    result = RangeAssignor().assign(members, {"x": 2, "y": 3}, {})
    assert {tp.topic for tp in result["a"]} == {"x"}
    assert {tp.topic for tp in result["b"]} == {"y"}
    assert len(result["a"]) == 2 and len(result["b"]) == 3


def test_sticky_balances_a_fresh_group() -> None:
    """Sticky: 6 partitions over 3 new members are 2 each."""
    result = StickyAssignor().assign(subscriptions(3, frozenset({"t"})), {"t": 6}, {})
    assert loads(result) == [2, 2, 2]
    assert sorted(all_partitions(result)) == [TopicPartition("t", p) for p in range(6)]


def test_sticky_join_moves_only_what_the_new_member_needs() -> None:
    """Sticky: a fourth member joining 3 x 2 takes one partition; nobody else's move."""
    before = StickyAssignor().assign(subscriptions(3, frozenset({"t"})), {"t": 6}, {})
    after = StickyAssignor().assign(subscriptions(4, frozenset({"t"})), {"t": 6}, before)
    assert loads(after) == [1, 1, 2, 2]
    assert moved(before, after) == 1
    for member, partitions in before.items():
        assert len(partitions - after[member]) <= 1


def test_sticky_leave_moves_only_the_orphans() -> None:
    """Sticky: when a member leaves, only its partitions move."""
    before = StickyAssignor().assign(subscriptions(3, frozenset({"t"})), {"t": 6}, {})
    survivors = {m: s for m, s in subscriptions(3, frozenset({"t"})).items() if m != "m1"}
    after = StickyAssignor().assign(survivors, {"t": 6}, before)
    assert loads(after) == [3, 3]
    for member in survivors:
        assert before[member] <= after[member]


def test_sticky_respects_subscriptions() -> None:
    """Sticky: with different subscriptions, nobody gets a topic it did not ask for."""
    members = {
        "a": MemberSubscription(frozenset({"x"})),
        "b": MemberSubscription(frozenset({"x", "y"})),
        "c": MemberSubscription(frozenset({"y"})),
    }
    result = StickyAssignor().assign(members, {"x": 4, "y": 4}, {})
    for member, partitions in result.items():
        assert {tp.topic for tp in partitions} <= members[member].topics
    assert len(all_partitions(result)) == 8
    assert loads(result) == [2, 3, 3]


@settings(max_examples=150, deadline=None)
@given(
    before_count=st.integers(1, 6),
    after_count=st.integers(1, 6),
    partitions=st.integers(0, 30),
)
def test_sticky_is_balanced_and_minimal(
    before_count: int, after_count: int, partitions: int
) -> None:
    """Sticky, same subscriptions: balanced to +-1, every partition once, and the number
    moved equals the least any balanced assignment needs."""
    topics = frozenset({"t"})
    counts = {"t": partitions}
    before = StickyAssignor().assign(subscriptions(before_count, topics), counts, {})
    members = subscriptions(after_count, topics)
    after = StickyAssignor().assign(members, counts, before)
    assert sorted(all_partitions(after)) == [TopicPartition("t", p) for p in range(partitions)]
    assert max(loads(after)) - min(loads(after)) <= 1
    # Lower bound: each surviving member keeps at most its share of the new balance.
    share, extra = divmod(partitions, after_count)
    kept_max = 0
    surviving = sorted(
        (len(before[m]) for m in members if m in before),
        reverse=True,
    )
    for number, had in enumerate(surviving):
        kept_max += min(had, share + (1 if number < extra else 0))
    must_move = sum(len(before[m]) for m in before if m in members) - kept_max
    lost = sum(len(parts - after.get(m, set())) for m, parts in before.items() if m in members)
    assert lost == must_move


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    member_count=st.integers(1, 5),
)
def test_assignors_cover_every_subscribed_partition_once(
    data: st.DataObject, member_count: int
) -> None:
    """Both assignors, random subscriptions: every partition of a subscribed topic is
    assigned exactly once, and only to a subscriber."""
    topic_names = ["a", "b", "c"]
    counts = {name: data.draw(st.integers(1, 7)) for name in topic_names}
    members = {
        f"m{n}": MemberSubscription(
            frozenset(data.draw(st.sets(st.sampled_from(topic_names), min_size=1)))
        )
        for n in range(member_count)
    }
    subscribed = {t for s in members.values() for t in s.topics}
    expected = sorted(TopicPartition(t, p) for t in subscribed for p in range(counts[t]))
    previous = RangeAssignor().assign(members, counts, {})
    for assignor in (RangeAssignor(), StickyAssignor()):
        result = assignor.assign(members, counts, previous)
        assert sorted(all_partitions(result)) == expected
        for member, partitions in result.items():
            assert {tp.topic for tp in partitions} <= members[member].topics
