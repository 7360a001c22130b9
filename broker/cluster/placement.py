"""Where partitions live and who leads them: the controller's decisions, with no
I/O (the trio shell in broker/cluster/controller.py and topic_writer.py does the
writes).

:func:`place_replicas` assigns each partition of a new topic its replicas.  The
live brokers are ordered by node id, or, when racks are set, alternately by rack
(a broker of rack a, then one of rack b, ...), so that neighbours in the order
sit in different racks.  Partition p's replicas are the ``replication_factor``
brokers that follow position ``start + p`` in that order: the first replica
(the preferred leader) goes round-robin over every broker, and the replicas of a
partition span as many racks as they can.

:func:`elect_leaders` answers a change of live brokers for every partition with
:func:`broker.replication.election.reconcile`: dead (or restarted) brokers leave
the ISR (into the ELR when the ISR falls below min ISR), and a partition whose
leader is gone gets a new one from the ISR, then the ELR (or goes offline,
NO_LEADER).  :func:`preferred_elections` moves leadership back to each
partition's first replica once it is live and in sync.  Both read the topic's
``min.insync.replicas`` and ``unclean.leader.election.enable`` from its configs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from broker.cluster.schema import PartitionState, TopicAssignment
from broker.replication.election import (
    Decision,
    min_insync_replicas,
    preferred_leader,
    reconcile,
    unclean_election_enabled,
)
from client.errors import InvalidReplicationFactorError


@dataclass(frozen=True, slots=True)
class LiveBroker:
    node_id: int
    rack: str | None = None


def broker_order(brokers: Sequence[LiveBroker]) -> list[int]:
    """Node ids by id, or alternating across racks when any broker has one."""
    by_id = sorted(brokers, key=lambda broker: broker.node_id)
    if all(broker.rack is None for broker in by_id):
        return [broker.node_id for broker in by_id]
    racks: dict[str, list[int]] = {}
    for broker in by_id:
        racks.setdefault(broker.rack or "", []).append(broker.node_id)
    columns = [racks[name] for name in sorted(racks)]
    order: list[int] = []
    for row in range(max(len(column) for column in columns)):
        order.extend(column[row] for column in columns if row < len(column))
    return order


def place_replicas(
    brokers: Sequence[LiveBroker], partitions: int, replication_factor: int, start: int
) -> list[list[int]]:
    """Replica lists for a new topic (module docstring); ``start`` (any int) picks
    the broker that leads partition 0.  Raises InvalidReplicationFactorError."""
    assert partitions >= 1
    if not 1 <= replication_factor <= len(brokers):
        raise InvalidReplicationFactorError(
            f"replication factor {replication_factor} needs that many live brokers; "
            f"{len(brokers)} are live"
        )
    order = broker_order(brokers)
    count = len(order)
    return [
        [order[(start + partition + offset) % count] for offset in range(replication_factor)]
        for partition in range(partitions)
    ]


def initial_state(replicas: Sequence[int]) -> PartitionState:
    """A new partition: led by its first replica, every replica in sync."""
    return PartitionState(leader=replicas[0], leader_epoch=0, isr=list(replicas))


def elect_leaders(
    topics: Mapping[str, TopicAssignment],
    states: Mapping[tuple[str, int], PartitionState],
    live: frozenset[int],
    restarted: Mapping[int, bool] | None = None,
) -> dict[tuple[str, int], Decision]:
    """Every partition whose state must change, with its new state and how its leader
    was chosen.  ``restarted`` maps brokers seen back since the last call (dead in
    between) to whether they shut down cleanly.  A partition of a topic with no
    state yet is left alone (its creator writes it)."""
    changes: dict[tuple[str, int], Decision] = {}
    for name, assignment in topics.items():
        min_isr = min_insync_replicas(assignment.configs)
        unclean = unclean_election_enabled(assignment.configs)
        for partition, replicas in enumerate(assignment.replicas):
            state = states.get((name, partition))
            if state is None:
                continue
            decision = reconcile(
                state, replicas, live, min_isr=min_isr, unclean_allowed=unclean, restarted=restarted
            )
            if decision is not None:
                changes[(name, partition)] = decision
    return changes


def preferred_elections(
    topics: Mapping[str, TopicAssignment],
    states: Mapping[tuple[str, int], PartitionState],
    live: frozenset[int],
    only: Collection[tuple[str, int]] | None = None,
) -> dict[tuple[str, int], PartitionState]:
    """The partitions (of ``only``, or all) whose first replica is live, in the ISR and
    not leading, with the state that makes it leader."""
    changes: dict[tuple[str, int], PartitionState] = {}
    for name, assignment in topics.items():
        for partition, replicas in enumerate(assignment.replicas):
            state = states.get((name, partition))
            if state is None or (only is not None and (name, partition) not in only):
                continue
            new_state = preferred_leader(state, replicas, live)
            if new_state is not None:
                changes[(name, partition)] = new_state
    return changes
