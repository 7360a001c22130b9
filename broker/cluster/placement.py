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

:func:`elect_leaders` answers a change of live brokers: a partition whose leader
died gets the first live member of its ISR as leader (or none, NO_LEADER, when no
ISR member is alive: the partition is offline); an offline partition gets a
leader again as soon as an ISR member is back.  Each change bumps the leader
epoch.  The ISR itself is not changed here (with one replica it never shrinks;
the leader maintains it once partitions are replicated).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from broker.cluster.schema import NO_LEADER, PartitionState, TopicAssignment
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


def elect_leader(state: PartitionState, live: frozenset[int]) -> PartitionState | None:
    """The partition's new state for these live brokers, or None when it stays."""
    if state.leader != NO_LEADER and state.leader in live:
        return None
    candidates = [replica for replica in state.isr if replica in live]
    leader = candidates[0] if candidates else NO_LEADER
    if leader == state.leader:
        return None
    return PartitionState(leader=leader, leader_epoch=state.leader_epoch + 1, isr=state.isr)


def elect_leaders(
    topics: Mapping[str, TopicAssignment],
    states: Mapping[tuple[str, int], PartitionState],
    live: frozenset[int],
) -> dict[tuple[str, int], PartitionState]:
    """Every partition whose leadership must change, with its new state.  A partition
    of a topic with no state yet is left alone (its creator writes it)."""
    changes: dict[tuple[str, int], PartitionState] = {}
    for name, assignment in topics.items():
        for partition in range(assignment.partitions):
            state = states.get((name, partition))
            if state is None:
                continue
            new_state = elect_leader(state, live)
            if new_state is not None:
                changes[(name, partition)] = new_state
    return changes
