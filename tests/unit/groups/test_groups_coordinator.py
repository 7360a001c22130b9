"""Tests for broker.groups.coordinator: joins, reconciliation, fencing, commits, replay."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from broker.groups.coordinator import HeartbeatRequest
from broker.groups.group import GroupState
from client.errors import (
    FencedMemberEpochError,
    GroupNotEmptyError,
    InvalidRequestError,
    UnknownGroupError,
    UnknownMemberError,
)
from client.types import TopicPartition

from .harness import Harness, settle

T = [TopicPartition("t", p) for p in range(6)]


def test_three_members_get_two_partitions_each() -> None:
    """Three members on a 6-partition topic end up with 2 each, group stable."""
    harness = Harness()
    members = [harness.join() for _ in range(3)]
    settle(members)
    assert sorted(len(m.owned) for m in members) == [2, 2, 2]
    assert set().union(*(m.owned for m in members)) == set(T)
    group = harness.coordinator.group("g")
    assert group is not None and group.state is GroupState.STABLE
    harness.coordinator.check_invariants()


def test_partition_moves_only_after_release() -> None:
    """A joining member gets a partition only once its previous owner released it."""
    harness = Harness()
    first = harness.join()
    assert first.owned == set(T)
    second = harness.join()
    assert second.owned == set()  # everything is still held by the first
    result = first.heartbeat()  # told to release three, and releases them
    assert len(result.revoking) == 3 and len(first.owned) == 3
    first.heartbeat()  # reports them released
    second.heartbeat()
    assert len(second.owned) == 3 and not first.owned & second.owned
    harness.coordinator.check_invariants()


def test_member_that_keeps_partitions_never_loses_them() -> None:
    """During a rebalance members keep what does not move (incremental rebalancing)."""
    harness = Harness()
    members = [harness.join() for _ in range(3)]
    settle(members)
    before = [set(m.owned) for m in members]
    members.append(harness.join())
    for _ in range(4):
        for member, had in zip(members[:3], before, strict=True):
            member.heartbeat()
            assert len(had - member.owned) <= 1
    settle(members)
    moved = sum(len(had - m.owned) for m, had in zip(members, before, strict=False))
    assert moved == 1  # 2+2+2 -> 2+2+1+1: one partition moves, to the new member
    assert sorted(len(m.owned) for m in members) == [1, 1, 2, 2]


def test_session_expiry_frees_partitions() -> None:
    """A member that stops heartbeating is expelled after the session timeout; the
    others take its partitions."""
    harness = Harness()
    alive, dead = harness.join(), harness.join()
    settle([alive, dead])
    harness.advance(1_500)
    alive.heartbeat()
    harness.advance(600)  # dead's session (2 s) expired
    group = harness.coordinator.group("g")
    assert group is not None and dead.member_id not in group.members
    alive.settle()
    assert alive.owned == set(T)
    with pytest.raises(UnknownMemberError):
        dead.heartbeat()
    with pytest.raises(UnknownMemberError):
        harness.commit("g", dead.member_id, dead.epoch, {T[0]: 5})
    harness.coordinator.check_invariants()


def test_expelled_member_cannot_commit() -> None:
    """A commit from an expelled member fails with UNKNOWN_MEMBER; a stale epoch with
    FENCED_MEMBER_EPOCH."""
    harness = Harness()
    member = harness.join()
    settle([member])
    with pytest.raises(FencedMemberEpochError):
        harness.coordinator.prepare_commit("g", member.member_id, member.epoch + 5, {})
    harness.advance(5_000)
    with pytest.raises(UnknownMemberError):
        harness.coordinator.prepare_commit("g", member.member_id, member.epoch, {})


def test_commit_of_a_partition_not_held_is_refused() -> None:
    """A member may commit only partitions it holds now (so a zombie cannot move a new
    owner's offset back)."""
    harness = Harness()
    a, b = harness.join(), harness.join()
    settle([a, b])
    theirs = next(iter(b.owned))
    mine = next(iter(a.owned))
    errors = harness.commit("g", a.member_id, a.epoch, {mine: 10, theirs: 3})
    assert errors == {theirs: "FencedMemberEpochError"}
    assert harness.coordinator.fetch_offsets("g")[mine].offset == 10


def test_stale_heartbeat_epoch_is_fenced() -> None:
    """A heartbeat with an epoch the member never had is FENCED_MEMBER_EPOCH."""
    harness = Harness()
    member = harness.join()
    with pytest.raises(FencedMemberEpochError):
        harness.coordinator.heartbeat(HeartbeatRequest("g", member.member_id, member.epoch + 1))


def test_lost_response_is_tolerated() -> None:
    """A member that missed the answer moving it to a new epoch may heartbeat with its
    previous epoch, as long as it claims nothing it does not hold."""
    harness = Harness()
    a = harness.join()
    settle([a])
    old_epoch, old_owned = a.epoch, set(a.owned)
    b = harness.join()  # bumps the group epoch; a must release three partitions
    a.heartbeat()  # told to release
    assert a.epoch == old_epoch and len(a.owned) == 3
    kept = set(a.owned)
    lost = harness.coordinator.heartbeat(
        HeartbeatRequest("g", a.member_id, a.epoch, owned=sorted(kept))
    )
    assert lost.member_epoch > old_epoch  # this answer never reaches the member
    again = harness.coordinator.heartbeat(
        HeartbeatRequest("g", a.member_id, old_epoch, owned=sorted(kept))
    )
    assert again.member_epoch == lost.member_epoch and again.assignment == kept
    with pytest.raises(FencedMemberEpochError):  # claims a partition it released
        harness.coordinator.heartbeat(
            HeartbeatRequest("g", a.member_id, old_epoch, owned=sorted(old_owned))
        )
    b.settle()
    harness.coordinator.check_invariants()


def test_leave_moves_partitions_at_once() -> None:
    """A member that leaves (epoch -1) frees its partitions without waiting."""
    harness = Harness()
    a, b = harness.join(), harness.join()
    settle([a, b])
    b.leave()
    a.settle()
    assert a.owned == set(T)


def test_static_member_keeps_assignment_across_restart() -> None:
    """A static member that leaves for a moment (-2) and rejoins with the same instance
    id gets its partitions back, and nobody else got them meanwhile."""
    harness = Harness()
    a = harness.join(instance_id="a")
    b = harness.join(instance_id="b")
    settle([a, b])
    a_partitions = set(a.owned)
    harness.heartbeat(HeartbeatRequest("g", a.member_id, -2, instance_id="a"))
    harness.advance(1_000)
    b.settle()
    assert not b.owned & a_partitions
    again = harness.join(instance_id="a")
    assert again.member_id != a.member_id
    assert again.owned == a_partitions
    with pytest.raises(UnknownMemberError):
        a.heartbeat()  # the old incarnation is fenced
    harness.coordinator.check_invariants()


def test_static_member_that_stays_away_is_expelled() -> None:
    """A static member that does not come back within its session loses its partitions."""
    harness = Harness()
    a = harness.join(instance_id="a")
    b = harness.join(instance_id="b")
    settle([a, b])
    harness.heartbeat(HeartbeatRequest("g", a.member_id, -2, instance_id="a"))
    for _ in range(5):
        harness.advance(500)
        b.heartbeat()
    assert b.owned == set(T)


def test_admin_commit_needs_an_empty_group() -> None:
    """An admin commit (epoch -1) is refused with GROUP_NOT_EMPTY while members are in
    the group, and accepted once they left."""
    harness = Harness()
    member = harness.join()
    with pytest.raises(GroupNotEmptyError):
        harness.coordinator.prepare_commit("g", "", -1, {})
    member.leave()
    assert harness.commit("g", "", -1, {T[0]: 4}) == {}
    assert harness.coordinator.fetch_offsets("g", [T[0]])[T[0]].offset == 4


def test_commit_validation_errors_are_per_partition() -> None:
    """Unknown partitions and negative offsets are refused per partition."""
    harness = Harness()
    errors = harness.commit(
        "g", "", -1, {TopicPartition("nope", 0): 1, TopicPartition("t", 9): 1, T[1]: -3, T[2]: 8}
    )
    assert errors == {
        TopicPartition("nope", 0): "UnknownTopicOrPartitionError",
        TopicPartition("t", 9): "UnknownTopicOrPartitionError",
        T[1]: "InvalidRequestError",
    }


def test_restart_rebuilds_offsets_and_epochs() -> None:
    """A coordinator rebuilt from the offsets log has the same offsets and a group epoch
    no lower than before."""
    harness = Harness()
    a, b = harness.join(), harness.join()
    settle([a, b])
    for member in (a, b):
        harness.commit("g", member.member_id, member.epoch, {tp: 7 for tp in member.owned})
    epoch = harness.coordinator.group("g").group_epoch  # type: ignore[union-attr]
    offsets = harness.coordinator.fetch_offsets("g")
    rebuilt = harness.restart()
    assert {tp: o.offset for tp, o in rebuilt.fetch_offsets("g").items()} == {
        tp: o.offset for tp, o in offsets.items()
    }
    group = rebuilt.group("g")
    assert group is not None and group.state is GroupState.EMPTY
    new = harness.join()
    assert new.epoch > epoch


def test_delete_group() -> None:
    """DeleteGroups is refused while members exist; afterwards the group and its
    offsets are gone, also after a restart."""
    harness = Harness()
    member = harness.join()
    with pytest.raises(GroupNotEmptyError):
        harness.coordinator.prepare_delete("g")
    member.leave()
    harness.commit("g", "", -1, {T[0]: 3})
    harness.append(harness.coordinator.prepare_delete("g"))
    assert harness.coordinator.group("g") is None
    with pytest.raises(UnknownGroupError):
        harness.coordinator.describe_group("g")
    assert harness.restart().group("g") is None


def test_regex_subscription_follows_new_topics() -> None:
    """A regex subscription picks up a topic created later (the group rebalances);
    internal topics never match."""
    harness = Harness({"orders-eu": 2, "__consumer_offsets": 8})
    member = harness.join(topics=(), subscribed_topic_regex="orders-.*|__.*")
    assert member.owned == {TopicPartition("orders-eu", 0), TopicPartition("orders-eu", 1)}
    harness.topics["orders-us"] = 1
    member.settle()
    assert TopicPartition("orders-us", 0) in member.owned
    assert not any(tp.topic.startswith("__") for tp in member.owned)


def test_partition_count_change_rebalances() -> None:
    """New partitions of a subscribed topic are assigned at the next heartbeat."""
    harness = Harness({"t": 2})
    member = harness.join()
    harness.topics["t"] = 4
    member.settle()
    assert len(member.owned) == 4


def test_invalid_requests() -> None:
    """Bad group ids, joins without subscription, unknown assignors and bad regexes
    are INVALID_REQUEST."""
    coordinator = Harness().coordinator
    for request in (
        HeartbeatRequest("", subscribed_topic_names=["t"]),
        HeartbeatRequest("g"),
        HeartbeatRequest("g", subscribed_topic_names=["t"], assignor="nope"),
        HeartbeatRequest("g", subscribed_topic_regex="("),
        HeartbeatRequest("g", member_id="x", member_epoch=-2),
        HeartbeatRequest("g", member_epoch=-7, subscribed_topic_names=["t"]),
    ):
        with pytest.raises(InvalidRequestError):
            coordinator.heartbeat(request)


def test_session_timeout_is_clamped_to_broker_bounds() -> None:
    """A member's requested session timeout and heartbeat interval are clamped."""
    harness = Harness()
    result = harness.heartbeat(
        HeartbeatRequest(
            "g", subscribed_topic_names=["t"], session_timeout_ms=1, heartbeat_interval_ms=10**9
        )
    )
    assert result.session_timeout_ms == 1_000
    assert result.heartbeat_interval_ms == 333


def test_range_assignor_can_be_chosen() -> None:
    """Members asking for "range" get contiguous ranges."""
    harness = Harness()
    members = [harness.join(assignor="range") for _ in range(3)]
    settle(members)
    for member in members:
        partitions = sorted(tp.partition for tp in member.owned)
        assert partitions == list(range(partitions[0], partitions[0] + 2))
    assert harness.coordinator.describe_group("g").assignor == "range"


def test_describe_and_list() -> None:
    """Describe shows members, assignments and offsets; list shows every group."""
    harness = Harness()
    member = harness.join(client_id="c1")
    harness.commit("g", member.member_id, member.epoch, {T[0]: 11})
    description = harness.coordinator.describe_group("g")
    assert description.state is GroupState.STABLE
    assert [m.client_id for m in description.members] == ["c1"]
    assert description.members[0].assigned == tuple(T)
    assert description.offsets[T[0]].offset == 11
    listing = harness.coordinator.list_groups()
    assert [(g.group_id, g.state, g.member_count) for g in listing] == [("g", GroupState.STABLE, 1)]


def test_next_deadline_tracks_sessions() -> None:
    """next_deadline_ms is the earliest member session deadline."""
    harness = Harness()
    assert harness.coordinator.next_deadline_ms() is None
    harness.join()
    assert harness.coordinator.next_deadline_ms() == harness.now_ms + 2_000


def test_coordinator_modules_do_no_io() -> None:
    """The state machine and everything it uses (every module of broker/groups but the
    trio shell service.py and the request handlers) never import trio, anyio, sockets
    or time."""
    root = Path(__file__).resolve().parents[3] / "broker" / "groups"
    shells = {"service.py", "handlers.py"}
    checked = []
    for path in sorted(root.glob("*.py")):
        if path.name in shells:
            continue
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not imported & {"trio", "anyio", "asyncio", "socket", "time"}, (path, imported)
        checked.append(path.name)
    assert {"coordinator.py", "membership.py", "assignment.py", "offsets.py"} <= set(checked)


def test_refused_heartbeat_changes_nothing() -> None:
    """A heartbeat refused for its subscription or assignor leaves the group as it
    was: a refused join adds no member, a refused update keeps the old subscription."""
    harness = Harness()
    member = harness.join()
    before = harness.coordinator.describe_group("g")
    for fields in ({"subscribed_topic_regex": "("}, {"assignor": "nope"}):
        with pytest.raises(InvalidRequestError):
            harness.coordinator.heartbeat(HeartbeatRequest("g", **fields))  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError):
            harness.coordinator.heartbeat(
                HeartbeatRequest("g", member.member_id, member.epoch, **fields)  # type: ignore[arg-type]
            )
    assert harness.coordinator.describe_group("g") == before
    harness.coordinator.check_invariants()
