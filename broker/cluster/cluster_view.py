"""The metadata view of a cluster member: what the store says, as handlers ask it.

:class:`ClusterMetadataView` implements the MetadataView protocol
(broker/metadata_view.py) from the cluster metadata the member follows
(broker/cluster/member.py calls :meth:`ClusterMetadataView.update` after each
change it applies).  ``leads`` is on the produce and fetch paths: one set lookup
and one clock read.  The clock read is the self-fence: the member pushes
``lease_valid_until`` forward after each acknowledged keepalive; past it (etcd
unreachable, or this process was paused) the broker leads nothing until it has
re-registered and re-read the metadata, whatever its last view said.

Topics that are not in the cluster metadata but open locally (a
``__consumer_offsets`` a data dir kept from before the cluster created its own)
are led by this node, as on a single node.  The cluster's ``__consumer_offsets``
is a cluster topic like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from broker.cluster.schema import BrokerRegistration
from broker.metadata_view import PartitionLeadership
from broker.topics import TopicManager
from client.protocol.messages import BrokerInfo

NO_CONTROLLER = -1


class ClusterMetadataView:
    """The MetadataView of a cluster member (module docstring)."""

    def __init__(
        self,
        node_id: int,
        topics: TopicManager,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node_id = node_id
        self._topics = topics
        self._clock_s = clock_s
        self._brokers: list[BrokerInfo] = []
        self._controller = NO_CONTROLLER
        self._leaderships: dict[tuple[str, int], PartitionLeadership] = {}
        self._cluster_topics: frozenset[str] = frozenset()
        self._led: frozenset[tuple[str, int]] = frozenset()
        # Monotonic time until which this node may act as a leader (self-fencing).
        self.lease_valid_until = 0.0

    @property
    def node_id(self) -> int:
        return self._node_id

    def brokers(self) -> list[BrokerInfo]:
        return list(self._brokers)

    def controller_id(self) -> int:
        return self._controller

    def leadership(self, topic: str, partition: int) -> PartitionLeadership | None:
        found = self._leaderships.get((topic, partition))
        if found is not None or topic in self._cluster_topics:
            return found
        local = self._topics.get(topic)
        if local is None or not 0 <= partition < len(local.partitions):
            return None
        node = (self._node_id,)
        return PartitionLeadership(
            self._node_id, local.partitions[partition].leader_epoch, node, node
        )

    def leads(self, topic: str, partition: int) -> bool:
        if (topic, partition) in self._led:
            return self._clock_s() < self.lease_valid_until
        if topic in self._cluster_topics:
            return False
        local = self._topics.get(topic)
        return local is not None and 0 <= partition < len(local.partitions)

    def is_fenced(self) -> bool:
        return self._clock_s() >= self.lease_valid_until

    def update(
        self,
        brokers: Mapping[int, BrokerRegistration],
        controller: int,
        cluster_topics: frozenset[str],
        leaderships: dict[tuple[str, int], PartitionLeadership],
        held: frozenset[tuple[str, int]] = frozenset(),
    ) -> None:
        """Replace the view with the metadata as now applied: ``cluster_topics`` are
        the topics the store holds, ``leaderships`` their partitions' states;
        partitions in ``held`` are not led here yet, whatever their leader says
        (their leader state is being set up)."""
        self._brokers = [
            BrokerInfo(node, registration.host, registration.port)
            for node, registration in sorted(brokers.items())
        ]
        self._controller = controller
        self._leaderships = leaderships
        self._cluster_topics = cluster_topics
        self._led = frozenset(
            key
            for key, found in leaderships.items()
            if found.leader == self._node_id and key not in held
        )

    def check_invariants(self) -> None:
        assert self._led <= self._leaderships.keys()
        for key in self._led:
            assert self._leaderships[key].leader == self._node_id
