"""The broker's view of cluster metadata: which partitions exist, who leads
each (with the leader epoch), its replicas and in-sync replicas, and the
brokers' addresses.

Handlers read metadata through the :class:`MetadataView` protocol only --
Metadata, DescribeTopics and FindCoordinator answers, and the leadership check
of Produce and Fetch (a partition this node does not lead is answered
NOT_LEADER; ``serves_reads`` answers the same for Fetch and ListOffsets, except
that a cluster member fenced from its metadata store keeps serving reads of the
partitions it led).  :class:`LocalMetadataView` is the single-node implementation: it
is fed by the TopicManager (a partition exists when its topic's log is open
here) and this node leads every partition, unless a leadership was set
explicitly with :meth:`LocalMetadataView.set_leadership` (a cluster metadata
store does that; tests do too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from broker.topics import TopicManager
from client.protocol.messages import BrokerInfo


@dataclass(frozen=True)
class PartitionLeadership:
    """Who leads a partition, since which epoch, and who holds its replicas."""

    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class MetadataView(Protocol):
    """What handlers may ask about the cluster."""

    @property
    def node_id(self) -> int: ...

    def brokers(self) -> list[BrokerInfo]:
        """Every live broker, this one included."""
        ...

    def controller_id(self) -> int: ...

    def leadership(self, topic: str, partition: int) -> PartitionLeadership | None:
        """None when the partition does not exist."""
        ...

    def leads(self, topic: str, partition: int) -> bool:
        """Whether this node leads the partition (False when it does not exist).
        On the produce path: cheap."""
        ...

    def serves_reads(self, topic: str, partition: int) -> bool:
        """Whether this node answers Fetch and ListOffsets for the partition: it
        leads it, or led it when it lost its metadata store (fenced).  On the
        fetch path: cheap."""
        ...


class LocalMetadataView:
    """One node's metadata, from the TopicManager; see the module docstring."""

    def __init__(
        self,
        node_id: int,
        topics: TopicManager,
        address: Callable[[], tuple[str, int]],
        rack: str | None = None,
    ) -> None:
        self._node_id = node_id
        self._topics = topics
        self._address = address  # this broker's advertised (host, port)
        self._rack = rack  # this broker's configured rack
        self._leaderships: dict[tuple[str, int], PartitionLeadership] = {}
        self._peers: dict[int, tuple[str, int]] = {}

    @property
    def node_id(self) -> int:
        return self._node_id

    def brokers(self) -> list[BrokerInfo]:
        host, port = self._address()
        found = [BrokerInfo(self._node_id, host, port, self._rack)]
        found.extend(BrokerInfo(node, *address) for node, address in sorted(self._peers.items()))
        return found

    def controller_id(self) -> int:
        return self._node_id

    def leadership(self, topic: str, partition: int) -> PartitionLeadership | None:
        explicit = self._leaderships.get((topic, partition))
        if explicit is not None:
            return explicit
        found = self._topics.get(topic)
        if found is None or not 0 <= partition < len(found.partitions):
            return None
        node = (self._node_id,)
        return PartitionLeadership(
            self._node_id, found.partitions[partition].leader_epoch, node, node
        )

    def leads(self, topic: str, partition: int) -> bool:
        if self._leaderships:
            explicit = self._leaderships.get((topic, partition))
            if explicit is not None:
                return explicit.leader == self._node_id
        found = self._topics.get(topic)
        return found is not None and 0 <= partition < len(found.partitions)

    def serves_reads(self, topic: str, partition: int) -> bool:
        return self.leads(topic, partition)

    def set_leadership(self, topic: str, partition: int, leadership: PartitionLeadership) -> None:
        """Record who leads ``topic``/``partition`` (instead of this node)."""
        self._leaderships[(topic, partition)] = leadership

    def add_broker(self, node_id: int, host: str, port: int) -> None:
        """Another broker of the cluster, listed by :meth:`brokers`."""
        assert node_id != self._node_id, node_id
        self._peers[node_id] = (host, port)
