"""broker/replication/roles.py: a node's roles read from the cluster metadata, and
the changes between two metadata versions."""

from __future__ import annotations

from broker.cluster.schema import NO_LEADER, PartitionState, TopicAssignment
from broker.cluster.snapshot import ClusterMetadata
from broker.replication.roles import (
    NOT_ASSIGNED,
    Assignment,
    Role,
    local_roles,
    role_changes,
)


def metadata(
    states: dict[int, PartitionState], replicas: list[list[int]], incarnation: int = 5
) -> ClusterMetadata:
    found = ClusterMetadata()
    found.topics["t"] = TopicAssignment(replicas=replicas)
    found.topic_incarnations["t"] = incarnation
    for index, state in states.items():
        found.states[("t", index)] = state
        found.state_versions[("t", index)] = 100 + index
    return found


def test_roles_follow_the_partition_state() -> None:
    """Leader when the state names this node, follower when another, none when
    nobody leads; partitions without a replica here or without a state are absent."""
    found = metadata(
        {
            0: PartitionState(1, 3, [1, 2]),
            1: PartitionState(2, 4, [2, 1]),
            2: PartitionState(NO_LEADER, 7, [1]),
            3: PartitionState(3, 0, [3]),
        },
        [[1, 2], [2, 1], [1, 3], [3], [1, 2]],
    )
    roles = local_roles(1, found)
    assert roles == {
        ("t", 0): Assignment(Role.LEADER, 1, 3, (1, 2), (1, 2), 100, 5),
        ("t", 1): Assignment(Role.FOLLOWER, 2, 4, (2, 1), (2, 1), 101, 5),
        ("t", 2): Assignment(Role.NONE, NO_LEADER, 7, (1, 3), (1,), 102, 5),
    }


def test_changes_tell_new_leadership_from_isr_updates() -> None:
    """A new epoch or role is new leadership; an ISR or version change alone is not;
    a partition that went away changes to NOT_ASSIGNED; equal ones are not listed."""
    replicas = [[1, 2], [2, 1], [1]]
    before = local_roles(
        1,
        metadata(
            {
                0: PartitionState(1, 3, [1, 2]),
                1: PartitionState(2, 4, [2, 1]),
                2: PartitionState(1, 0, [1]),
            },
            replicas,
        ),
    )
    after = local_roles(
        1, metadata({0: PartitionState(1, 3, [1]), 1: PartitionState(2, 5, [2, 1])}, replicas)
    )
    changes = {change.key: change for change in role_changes(before, after)}
    assert sorted(changes) == [("t", 0), ("t", 1), ("t", 2)]
    assert not changes[("t", 0)].new_leadership  # ISR shrank, same epoch
    assert changes[("t", 1)].new_leadership  # same leader, new epoch: truncate again
    assert changes[("t", 2)].after is NOT_ASSIGNED and changes[("t", 2)].new_leadership
    assert role_changes(after, after) == []


def test_a_recreated_topic_is_new_leadership() -> None:
    """The same name, leader and epoch under a new topic incarnation is another
    partition: new leadership."""
    state = {0: PartitionState(2, 0, [2, 1])}
    before = local_roles(1, metadata(state, [[2, 1]], incarnation=5))
    after = local_roles(1, metadata(state, [[2, 1]], incarnation=9))
    (change,) = role_changes(before, after)
    assert change.new_leadership
