"""The ElectLeaders request: move partitions' leadership back to their preferred
replicas now (``distributary cluster elect-leaders``).

Only the controller decides leadership (its writes are fenced by its controller
epoch), so only the controller answers: it runs the same preferred-leader election
it runs on its own a few seconds after a preferred replica is back in sync
(broker/cluster/controller.py).  Any other broker answers NOT_CONTROLLER for the
whole request and the client asks the controller that Metadata names.  A single
broker (no cluster) leads every partition: ELECTION_NOT_NEEDED.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.state import Broker
from client.errors import ErrorCode, NotControllerError
from client.protocol.messages import (
    ElectLeadersPartitionResult,
    ElectLeadersRequest,
    ElectLeadersResponse,
    ElectLeadersTopicResult,
)

_MESSAGES = {
    ErrorCode.ELECTION_NOT_NEEDED: "already led by its preferred replica",
    ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE: "the preferred replica is not live and in sync",
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: "unknown topic or partition",
}


def _wanted(
    body: ElectLeadersRequest, partition_counts: Mapping[str, int]
) -> list[tuple[str, int]]:
    """The partitions asked for, given each topic's partition count; a topic without
    a partition list means all its partitions (an unknown one: partition 0, to
    name it in the answer)."""
    if body.topics is None:
        return [(name, p) for name, count in partition_counts.items() for p in range(count)]
    wanted: list[tuple[str, int]] = []
    for topic in body.topics:
        if topic.partitions is not None:
            wanted.extend((topic.name, partition) for partition in topic.partitions)
        else:
            count = partition_counts.get(topic.name, 1)
            wanted.extend((topic.name, partition) for partition in range(count))
    return wanted


async def handle_elect_leaders(broker: Broker, body: ElectLeadersRequest) -> ElectLeadersResponse:
    from broker.cluster.controller import elect_preferred_leaders
    from broker.cluster.member import ClusterMember

    member = broker.cluster
    outcomes: dict[tuple[str, int], tuple[ErrorCode, int]] = {}
    if isinstance(member, ClusterMember):
        counts = {name: topic.partitions for name, topic in member.metadata.topics.items()}
        try:
            outcomes = await elect_preferred_leaders(member, _wanted(body, counts))
        except NotControllerError as error:
            return ElectLeadersResponse(error_code=int(error.code), error_message=error.message)
    else:
        counts = {}
        for name in broker.topics.names():
            topic = broker.topics.get(name)
            if topic is not None:
                counts[name] = len(topic.partitions)
        for name, partition in _wanted(body, counts):
            known = 0 <= partition < counts.get(name, 0)
            code = ErrorCode.ELECTION_NOT_NEEDED if known else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            outcomes[(name, partition)] = (code, broker.config.node_id if known else -1)
    results: dict[str, list[ElectLeadersPartitionResult]] = {}
    for (name, partition), (code, leader) in sorted(outcomes.items()):
        results.setdefault(name, []).append(
            ElectLeadersPartitionResult(partition, int(code), _MESSAGES.get(code), leader)
        )
    return ElectLeadersResponse([ElectLeadersTopicResult(n, p) for n, p in results.items()])
