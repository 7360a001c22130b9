"""Which role this broker plays for each partition, read from the cluster metadata,
and what changed since the last metadata it applied.  Pure: no I/O, no clock.

:func:`local_roles` maps each partition this node holds a replica of to a
:class:`Assignment`: LEADER when the partition state names this node as leader,
FOLLOWER when another node leads it, NONE when nobody does (every in-sync
replica is down) -- with the leader, the leader epoch, the replicas, the ISR and
the state key's version (what this node's ISR writes compare against).

:func:`role_changes` compares two such maps.  A :class:`RoleChange` is
*new leadership* when the role or the leader epoch moved (a leader with a new
epoch, a follower of a new leader or of the same leader in a new epoch: each
truncates first), otherwise an update of the ISR or version only.  A partition
that left the map (topic deleted, or no longer assigned here) reports role NONE.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from broker.cluster.schema import NO_LEADER
from broker.cluster.snapshot import ClusterMetadata

PartitionKey = tuple[str, int]


class Role(enum.Enum):
    LEADER = "leader"
    FOLLOWER = "follower"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Assignment:
    """One partition as the metadata says it is, seen from this node."""

    role: Role
    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    # The partition state key's version (its mod revision): the ISR CAS compares it.
    version: int
    # The topic key's create revision: a topic deleted and created again under the
    # same name is another partition.
    incarnation: int


NOT_ASSIGNED = Assignment(Role.NONE, NO_LEADER, -1, (), (), 0, 0)


@dataclass(frozen=True, slots=True)
class RoleChange:
    key: PartitionKey
    before: Assignment
    after: Assignment

    @property
    def new_leadership(self) -> bool:
        """The role, the leader, the leader epoch or the topic incarnation moved: a
        leader starts leading in a new epoch, a follower truncates and fetches
        again."""
        before, after = self.before, self.after
        return (
            before.incarnation != after.incarnation
            or before.role is not after.role
            or before.leader != after.leader
            or before.leader_epoch != after.leader_epoch
        )


def local_roles(node_id: int, metadata: ClusterMetadata) -> dict[PartitionKey, Assignment]:
    """Every partition with a replica on ``node_id`` (its state written) and its
    assignment (module docstring)."""
    found: dict[PartitionKey, Assignment] = {}
    for name, topic in metadata.topics.items():
        for index, replicas in enumerate(topic.replicas):
            if node_id not in replicas:
                continue
            state = metadata.states.get((name, index))
            if state is None:
                continue  # its creator writes the state next
            if state.leader == node_id:
                role = Role.LEADER
            elif state.leader == NO_LEADER:
                role = Role.NONE
            else:
                role = Role.FOLLOWER
            found[(name, index)] = Assignment(
                role,
                state.leader,
                state.leader_epoch,
                tuple(replicas),
                tuple(state.isr),
                metadata.state_versions.get((name, index), 0),
                metadata.topic_incarnations.get(name, 0),
            )
    return found


def role_changes(
    before: Mapping[PartitionKey, Assignment], after: Mapping[PartitionKey, Assignment]
) -> list[RoleChange]:
    """Each partition whose assignment differs between ``before`` and ``after``, in
    key order; one that left ``after`` changes to NOT_ASSIGNED."""
    changes: list[RoleChange] = []
    for key in sorted(before.keys() | after.keys()):
        old = before.get(key, NOT_ASSIGNED)
        new = after.get(key, NOT_ASSIGNED)
        if old != new:
            changes.append(RoleChange(key, old, new))
    return changes
