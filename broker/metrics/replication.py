"""What the replication metrics read at scrape time: the partitions this broker
leads (replicas and ISR size), the offline partitions if it is the controller,
and how far behind its leader each partition it follows is.

:func:`replication_view` takes one pass over the applied cluster metadata (the
partition states) and one over the followed partitions of the fetchers; nothing
here is touched on the produce or fetch paths.  A single node (no cluster) leads
every open partition, each with one replica in sync, and is its own controller
with nothing offline, so its gauges are 0 rather than absent; a cluster member
that has not joined yet reports nothing led and no controller.
"""

from __future__ import annotations

from typing import NamedTuple

from broker.cluster.controller import my_controller
from broker.cluster.member import ClusterMember
from broker.cluster.schema import NO_LEADER
from broker.cluster.snapshot import ClusterMetadata
from broker.state import Broker


class LedPartition(NamedTuple):
    topic: str
    partition: int
    replicas: int  # assigned replicas
    isr: int  # in-sync replicas, this leader included

    @property
    def under_replicated(self) -> bool:
        return self.isr < self.replicas


class FollowedPartition(NamedTuple):
    topic: str
    partition: int
    lag_records: int  # the leader's HW as last seen minus this replica's log end


class ReplicationView(NamedTuple):
    led: list[LedPartition]
    followed: list[FollowedPartition]
    controller: bool  # whether this broker is the active controller
    offline: int  # partitions with no leader (counted by the controller only; 0 elsewhere)


def replication_view(broker: Broker) -> ReplicationView:
    """The replication state of ``broker`` now (module docstring)."""
    member = broker.cluster
    if not isinstance(member, ClusterMember):
        if broker.config.cluster is not None:
            # A cluster member still joining: it leads nothing yet.
            return ReplicationView([], [], False, 0)
        led = [
            LedPartition(partition.topic, partition.index, 1, 1)
            for partition in broker.topics.all_partitions()
            if partition.failure is None and not partition.closed
        ]
        return ReplicationView(led, [], True, 0)
    metadata = member.metadata
    followed = [
        FollowedPartition(
            key[0],
            key[1],
            max(0, entry.leader_high_watermark - entry.partition.log_end_offset),
        )
        for fetcher in member.replicas.fetchers.values()
        for key, entry in fetcher.followed.items()
        if entry.leader_high_watermark >= 0
    ]
    controller = my_controller(member, metadata) is not None
    return cluster_view(metadata, member.node_id, followed, controller=controller)


def cluster_view(
    metadata: ClusterMetadata,
    node_id: int,
    followed: list[FollowedPartition],
    *,
    controller: bool,
) -> ReplicationView:
    """The view of broker ``node_id`` from the cluster ``metadata`` it applied."""
    led = []
    offline = 0
    for (topic, index), state in metadata.states.items():
        assignment = metadata.topics.get(topic)
        if assignment is None or index >= assignment.partitions:
            continue  # a state left over from a deleted topic or partition
        if state.leader == NO_LEADER:
            offline += 1
        elif state.leader == node_id:
            led.append(LedPartition(topic, index, len(assignment.replicas[index]), len(state.isr)))
    return ReplicationView(sorted(led), sorted(followed), controller, offline if controller else 0)
