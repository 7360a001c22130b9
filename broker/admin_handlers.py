"""The administrative and metadata requests: Hello, Metadata, CreateTopics,
DeleteTopics, DescribeTopics, AlterConfigs, CreatePartitions, ListOffsets and
FindCoordinator.

Plain functions over the Broker state.  Everything they say about leaders,
replicas and brokers comes from the broker's metadata view
(broker/metadata_view.py), never from assumptions about a single node; offsets
a consumer may use ("latest") are the high watermark, not the log end.
Per-topic and per-partition failures become error codes in the response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from broker.fetch import check_leader_epoch
from broker.groups.config import OFFSETS_TOPIC
from broker.groups.records import partition_for_group
from broker.partition import Partition
from broker.produce import auto_create, check_not_internal
from broker.state import Broker
from broker.topics import config_strings, validate_topic_name
from client.errors import (
    CoordinatorNotAvailableError,
    DistributaryError,
    InvalidReplicationFactorError,
    InvalidRequestError,
    NotLeaderError,
    OffsetNotAvailableError,
    UnknownTopicOrPartitionError,
)
from client.protocol.messages import (
    API_VERSIONS,
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    AlterConfigsRequest,
    AlterConfigsResponse,
    ApiVersionRange,
    CreatePartitionsRequest,
    CreatePartitionsResponse,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    DescribeTopicsRequest,
    DescribeTopicsResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    HelloRequest,
    HelloResponse,
    ListOffsetsPartitionResponse,
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsetsTopicResponse,
    MetadataRequest,
    MetadataResponse,
    PartitionDescription,
    PartitionMetadata,
    TopicDescription,
    TopicMetadata,
    TopicResult,
)

# The leader of a partition that has none (its only replica is down).
NO_LEADER: Final = -1
# CreateTopics with partitions=-1 (Kafka's convention) means the broker default.
DEFAULT_PARTITIONS_SENTINEL: Final = -1


async def handle_find_coordinator(
    broker: Broker, body: FindCoordinatorRequest
) -> FindCoordinatorResponse:
    """The broker that coordinates ``body.group_id``: the leader of the group's
    ``__consumer_offsets`` partition, as the metadata view knows it.  In a cluster
    the offsets topic is created in the store on first use; a partition without a
    leader (its broker is down) is COORDINATOR_NOT_AVAILABLE."""
    metadata = broker.metadata
    if broker.cluster is not None:
        await broker.cluster.create_offsets_topic_if_absent()
        index = broker.groups.offsets_partition(body.group_id)
        leadership = metadata.leadership(OFFSETS_TOPIC, index)
        leader = NO_LEADER if leadership is None else leadership.leader
    else:
        index = partition_for_group(body.group_id, broker.config.groups.offsets_topic_partitions)
        leadership = metadata.leadership(OFFSETS_TOPIC, index)
        # Before the offsets topic exists (it is created at start) this node answers.
        leader = metadata.node_id if leadership is None else leadership.leader
    for found in metadata.brokers():
        if found.node_id == leader:
            return FindCoordinatorResponse(node_id=leader, host=found.host, port=found.port)
    error = CoordinatorNotAvailableError(
        f"coordinator of {body.group_id!r} (leader of {OFFSETS_TOPIC}-{index}) is not available"
    )
    return FindCoordinatorResponse(int(error.code), error.message)


# -- Hello and Metadata -----------------------------------------------------------------


def handle_hello(broker: Broker, body: HelloRequest) -> HelloResponse:
    return HelloResponse(
        api_versions=[
            ApiVersionRange(int(key), low, high) for key, (low, high) in API_VERSIONS.items()
        ],
        node_id=broker.config.node_id,
        cluster_id=broker.config.cluster_id,
        frame_bytes_max=broker.limits.frame_bytes_max,
        inflight_requests_max=broker.limits.inflight_requests_max,
        broker_version=broker.version,
    )


async def handle_metadata(broker: Broker, body: MetadataRequest) -> MetadataResponse:
    names = broker.topics.names() if body.topics is None else body.topics
    topics: list[TopicMetadata] = []
    for name in names:
        try:
            if broker.topics.get(name) is None and body.allow_auto_create:
                await auto_create(broker, name)
            topics.append(topic_metadata(broker, name))
        except DistributaryError as error:
            topics.append(TopicMetadata(name, int(error.code), error.message))
    return MetadataResponse(
        brokers=broker.metadata.brokers(),
        controller_id=broker.metadata.controller_id(),
        cluster_id=broker.config.cluster_id,
        topics=topics,
    )


def topic_metadata(broker: Broker, name: str) -> TopicMetadata:
    """Raises InvalidTopicError, UnknownTopicOrPartitionError."""
    validate_topic_name(name)
    topic = broker.topics.get(name)
    if topic is None:
        raise UnknownTopicOrPartitionError(f"unknown topic {name!r}")
    partitions: list[PartitionMetadata] = []
    for partition in topic.partitions:
        leadership = broker.metadata.leadership(name, partition.index)
        if leadership is None:  # deleted meanwhile
            error = UnknownTopicOrPartitionError(f"unknown partition {name}-{partition.index}")
            partitions.append(PartitionMetadata(partition.index, int(error.code)))
            continue
        partitions.append(
            PartitionMetadata(
                partition.index,
                leader=leadership.leader,
                leader_epoch=leadership.leader_epoch,
                replicas=list(leadership.replicas),
                isr=list(leadership.isr),
            )
        )
    return TopicMetadata(name, partitions=partitions, internal=name == OFFSETS_TOPIC)


# -- topic administration ---------------------------------------------------------------


async def topic_results(
    names: Iterable[str], action: Callable[[str], Awaitable[None]]
) -> list[TopicResult]:
    """Run ``action`` for each topic in turn; each gets its own result (its typed
    error's code and message, or success), and one failure does not stop the rest."""
    results: list[TopicResult] = []
    for name in names:
        try:
            await action(name)
            results.append(TopicResult(name))
        except DistributaryError as error:
            results.append(TopicResult(name, int(error.code), error.message))
    return results


async def handle_create_topics(broker: Broker, body: CreateTopicsRequest) -> CreateTopicsResponse:
    if broker.cluster is not None:
        return await broker.cluster.create_topics(body)
    wanted = {creatable.name: creatable for creatable in body.topics}

    async def create(name: str) -> None:
        creatable = wanted[name]
        partitions = creatable.partitions
        if partitions == DEFAULT_PARTITIONS_SENTINEL:
            partitions = broker.config.default_partitions
        if creatable.replication_factor not in (-1, 1):
            raise InvalidReplicationFactorError(
                f"replication factor {creatable.replication_factor} exceeds the 1 broker "
                "in this cluster"
            )
        if body.validate_only:
            broker.topics.check_new_topic(name, partitions, creatable.configs)
        else:
            await broker.topics.create(name, partitions, creatable.configs)

    return CreateTopicsResponse(await topic_results([t.name for t in body.topics], create))


async def handle_delete_topics(broker: Broker, body: DeleteTopicsRequest) -> DeleteTopicsResponse:
    if broker.cluster is not None:
        return await broker.cluster.delete_topics(body)

    async def delete(name: str) -> None:
        check_not_internal(name)
        await broker.topics.delete(name)

    return DeleteTopicsResponse(await topic_results(body.names, delete))


async def handle_alter_configs(broker: Broker, body: AlterConfigsRequest) -> AlterConfigsResponse:
    if broker.cluster is not None:
        return await broker.cluster.alter_configs(body)
    changes = {alterable.name: alterable.configs for alterable in body.topics}

    async def alter(name: str) -> None:
        check_not_internal(name)
        if body.validate_only:
            broker.topics.check_alter(name, changes[name])
        else:
            await broker.topics.alter_configs(name, changes[name])

    return AlterConfigsResponse(await topic_results([t.name for t in body.topics], alter))


async def handle_create_partitions(
    broker: Broker, body: CreatePartitionsRequest
) -> CreatePartitionsResponse:
    if broker.cluster is not None:
        return await broker.cluster.create_partitions(body)
    counts = {wanted.name: wanted.count for wanted in body.topics}

    async def add(name: str) -> None:
        check_not_internal(name)
        if body.validate_only:
            broker.topics.check_add_partitions(name, counts[name])
        else:
            await broker.topics.add_partitions(name, counts[name])

    return CreatePartitionsResponse(await topic_results([t.name for t in body.topics], add))


def handle_describe_topics(broker: Broker, body: DescribeTopicsRequest) -> DescribeTopicsResponse:
    names = broker.topics.names() if body.names is None else body.names
    described: list[TopicDescription] = []
    for name in names:
        topic = broker.topics.get(name)
        if topic is None:
            error = UnknownTopicOrPartitionError(f"unknown topic {name!r}")
            described.append(TopicDescription(name, int(error.code), error.message))
            continue
        partitions = []
        for partition in topic.partitions:
            stats = partition.stats()
            partitions.append(
                PartitionDescription(
                    partition.index,
                    leader=leader_of(broker, name, partition.index),
                    log_start_offset=stats.log_start_offset,
                    log_end_offset=stats.log_end_offset,
                    high_watermark=partition.high_watermark,
                    size_bytes=stats.size_bytes,
                    segment_count=stats.segment_count,
                )
            )
        described.append(
            TopicDescription(
                name,
                configs=config_strings(topic.config),
                partitions=partitions,
                internal=name == OFFSETS_TOPIC,
            )
        )
    return DescribeTopicsResponse(described)


# -- ListOffsets ------------------------------------------------------------------------


def handle_list_offsets(broker: Broker, body: ListOffsetsRequest) -> ListOffsetsResponse:
    topics: list[ListOffsetsTopicResponse] = []
    for wanted_topic in body.topics:
        results: list[ListOffsetsPartitionResponse] = []
        for wanted in wanted_topic.partitions:
            try:
                partition = broker.topics.partition(wanted_topic.name, wanted.partition)
                if not broker.metadata.serves_reads(wanted_topic.name, wanted.partition):
                    raise NotLeaderError(
                        f"{wanted_topic.name}-{wanted.partition}: this broker is not its leader"
                    )
                if wanted.current_leader_epoch != -1:
                    check_leader_epoch(partition, wanted.current_leader_epoch)
                results.append(list_offset(partition, wanted.timestamp_ms))
            except DistributaryError as error:
                results.append(
                    ListOffsetsPartitionResponse(wanted.partition, int(error.code), error.message)
                )
        topics.append(ListOffsetsTopicResponse(wanted_topic.name, results))
    return ListOffsetsResponse(topics)


def leader_of(broker: Broker, topic: str, index: int) -> int:
    """The partition's leader (-1 when unknown), from the metadata view."""
    leadership = broker.metadata.leadership(topic, index)
    return -1 if leadership is None else leadership.leader


def list_offset(partition: Partition, timestamp_ms: int) -> ListOffsetsPartitionResponse:
    if timestamp_ms == EARLIEST_TIMESTAMP:
        return ListOffsetsPartitionResponse(partition.index, offset=partition.log_start_offset)
    if timestamp_ms == LATEST_TIMESTAMP:
        leader_state = partition.leader_state
        if leader_state is not None and not leader_state.high_watermark_known:
            # A new leader's HW may lag the one consumers saw (replication.md 1.3).
            unknown = OffsetNotAvailableError(
                f"{partition.topic}-{partition.index}: the new leader's high watermark "
                "is not known yet"
            )
            return ListOffsetsPartitionResponse(partition.index, int(unknown.code), unknown.message)
        return ListOffsetsPartitionResponse(partition.index, offset=partition.high_watermark)
    if timestamp_ms < 0:
        error = InvalidRequestError(f"timestamp {timestamp_ms} is neither -1, -2 nor a time")
        return ListOffsetsPartitionResponse(partition.index, int(error.code), error.message)
    found = partition.offset_for_timestamp(timestamp_ms)
    if found is None:  # no record at or after it: offset and timestamp -1 (Kafka's answer)
        return ListOffsetsPartitionResponse(partition.index)
    offset, found_timestamp_ms = found
    return ListOffsetsPartitionResponse(
        partition.index, offset=offset, timestamp_ms=found_timestamp_ms
    )
