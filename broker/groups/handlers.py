"""Request handlers of the group APIs: wire messages in, wire messages out.

Each turns a request body into calls on the :class:`GroupService` (and its
coordinator) and the result into the response body.  OffsetFetch and
DescribeGroups show only commits the offsets partition's in-sync replicas hold
(service.py: pending records).  Group errors travel in the
responses' ``error_code`` fields (whole request or per partition/group), never
as an ErrorResponse, so a client always learns which part failed.

DescribeGroups reports each partition's log end (its high watermark) and the
group's lag only where this broker serves the partition's reads: elsewhere its
own copy of the log may be stale (a cluster member keeps the logs of partitions
others lead), so those rows carry -1, unknown, and the SDK asks each
partition's leader instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from broker.groups.coordinator import HeartbeatRequest, OffsetCommitInput
from broker.groups.service import GroupService
from client.errors import DistributaryError
from client.protocol.messages import (
    ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
    DeleteGroupResult,
    DeleteGroupsRequest,
    DeleteGroupsResponse,
    DescribedGroup,
    DescribedMember,
    DescribedPartition,
    DescribeGroupsRequest,
    DescribeGroupsResponse,
    GroupTopicPartitions,
    ListedGroup,
    ListGroupsRequest,
    ListGroupsResponse,
    OffsetCommitPartitionResponse,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetCommitTopicResponse,
    OffsetFetchPartitionResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
    OffsetFetchTopicResponse,
)
from client.types import TopicPartition


def to_wire(partitions: Iterable[TopicPartition]) -> list[GroupTopicPartitions]:
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(partitions):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return [GroupTopicPartitions(topic, numbers) for topic, numbers in by_topic.items()]


def from_wire(partitions: Iterable[GroupTopicPartitions]) -> list[TopicPartition]:
    return [TopicPartition(item.topic, number) for item in partitions for number in item.partitions]


async def handle_heartbeat(
    service: GroupService, body: ConsumerGroupHeartbeatRequest
) -> ConsumerGroupHeartbeatResponse:
    request = HeartbeatRequest(
        group_id=body.group_id,
        member_id=body.member_id,
        member_epoch=body.member_epoch,
        instance_id=body.instance_id,
        client_id=body.client_id,
        subscribed_topic_names=body.subscribed_topic_names,
        subscribed_topic_regex=body.subscribed_topic_regex,
        assignor=body.server_assignor,
        owned=None if body.owned_partitions is None else from_wire(body.owned_partitions),
        session_timeout_ms=body.session_timeout_ms,
        heartbeat_interval_ms=body.heartbeat_interval_ms,
        rebalance_timeout_ms=body.rebalance_timeout_ms,
    )
    try:
        service.check_coordinator(body.group_id)
        result = service.coordinator.heartbeat(request)
    except DistributaryError as error:
        return ConsumerGroupHeartbeatResponse(int(error.code), error.message)
    service.deadlines_changed()
    await service.append_quietly(body.group_id, result.records)
    return ConsumerGroupHeartbeatResponse(
        member_id=result.member_id,
        member_epoch=result.member_epoch,
        heartbeat_interval_ms=result.heartbeat_interval_ms,
        session_timeout_ms=result.session_timeout_ms,
        assignment=to_wire(result.assignment),
        revoking=to_wire(result.revoking),
    )


async def handle_offset_commit(
    service: GroupService, body: OffsetCommitRequest
) -> OffsetCommitResponse:
    offsets = {
        TopicPartition(topic.name, part.partition): OffsetCommitInput(
            part.offset, part.leader_epoch, part.metadata
        )
        for topic in body.topics
        for part in topic.partitions
    }
    try:
        service.check_coordinator(body.group_id)
        plan = service.coordinator.prepare_commit(
            body.group_id, body.member_id, body.member_epoch, offsets
        )
        await service.append(body.group_id, plan.records)
    except DistributaryError as error:
        return OffsetCommitResponse(int(error.code), error.message)
    topics: dict[str, list[OffsetCommitPartitionResponse]] = {}
    for topic in body.topics:
        results = topics.setdefault(topic.name, [])
        for part in topic.partitions:
            refused = plan.errors.get(TopicPartition(topic.name, part.partition))
            if refused is None:
                results.append(OffsetCommitPartitionResponse(part.partition))
            else:
                results.append(
                    OffsetCommitPartitionResponse(
                        part.partition, int(refused.code), refused.message
                    )
                )
    return OffsetCommitResponse(
        topics=[OffsetCommitTopicResponse(name, parts) for name, parts in topics.items()]
    )


async def handle_offset_fetch(
    service: GroupService, body: OffsetFetchRequest
) -> OffsetFetchResponse:
    """The group's committed offsets, as replicated: first waits (bounded) for its
    commits awaiting replication to be applied or dropped (GroupService.wait_pending)."""
    try:
        service.check_coordinator(body.group_id)
        if service.has_pending(body.group_id):
            await service.wait_pending(body.group_id)
            service.check_coordinator(body.group_id)
    except DistributaryError as error:
        return OffsetFetchResponse(int(error.code), error.message)
    coordinator = service.coordinator
    if body.topics is None:
        committed = coordinator.fetch_offsets(body.group_id)
        wanted = sorted(committed)
    else:
        committed = coordinator.fetch_offsets(body.group_id)
        wanted = []
        for topic in body.topics:
            if topic.partitions is None:
                wanted.extend(sorted(tp for tp in committed if tp.topic == topic.name))
            else:
                wanted.extend(TopicPartition(topic.name, p) for p in topic.partitions)
    topics: dict[str, list[OffsetFetchPartitionResponse]] = {}
    for tp in wanted:
        found = committed.get(tp)
        results = topics.setdefault(tp.topic, [])
        if found is None:
            results.append(OffsetFetchPartitionResponse(tp.partition))
        else:
            results.append(
                OffsetFetchPartitionResponse(
                    tp.partition,
                    found.offset,
                    found.leader_epoch,
                    found.metadata,
                    found.commit_time_ms,
                )
            )
    return OffsetFetchResponse(
        topics=[OffsetFetchTopicResponse(name, parts) for name, parts in topics.items()]
    )


def handle_list_groups(service: GroupService, body: ListGroupsRequest) -> ListGroupsResponse:
    states = None if body.states is None else set(body.states)
    return ListGroupsResponse(
        groups=[
            ListedGroup(listing.group_id, listing.state.value, listing.member_count)
            for listing in service.coordinator.list_groups()
            if states is None or listing.state.value in states
        ]
    )


def describe_group(
    service: GroupService, group_id: str, serves_reads: Callable[[str, int], bool] | None = None
) -> DescribedGroup:
    """The group's members and partitions; a partition's log end and lag are -1
    (unknown) unless ``serves_reads`` says this broker serves its reads (None: a
    single node, which serves every partition it holds).  Raises
    UnknownGroupError, CoordinatorNotAvailableError."""
    service.check_coordinator(group_id)
    description = service.coordinator.describe_group(group_id)
    members = [
        DescribedMember(
            member_id=member.member_id,
            instance_id=member.instance_id,
            client_id=member.client_id,
            client_host=member.client_host,
            member_epoch=member.member_epoch,
            state=member.state.value,
            subscribed_topic_names=list(member.subscribed_topic_names),
            subscribed_topic_regex=member.subscribed_topic_regex,
            assignment=to_wire(member.assigned),
            revoking=to_wire(member.revoking),
            target=to_wire(member.target),
            session_timeout_ms=member.session_timeout_ms,
            heartbeat_interval_ms=member.heartbeat_interval_ms,
        )
        for member in description.members
    ]
    rows = set(description.offsets)
    rows.update(
        TopicPartition(topic, partition)
        for topic, count in description.subscribed.items()
        for partition in range(count)
    )
    partitions: list[DescribedPartition] = []
    for tp in sorted(rows):
        log_end = _log_end_offset(service, tp, serves_reads)
        committed = description.offsets.get(tp)
        row = DescribedPartition(
            tp.topic, tp.partition, log_end_offset=log_end, member_id=description.owners.get(tp, "")
        )
        if committed is not None:
            row.committed_offset = committed.offset
            row.leader_epoch = committed.leader_epoch
            row.metadata = committed.metadata
            row.commit_time_ms = committed.commit_time_ms
            if log_end >= 0:
                row.lag = max(0, log_end - committed.offset)
        partitions.append(row)
    return DescribedGroup(
        group_id,
        state=description.state.value,
        group_epoch=description.group_epoch,
        assignment_epoch=description.assignment_epoch,
        assignor=description.assignor,
        members=members,
        partitions=partitions,
    )


def _log_end_offset(
    service: GroupService, tp: TopicPartition, serves_reads: Callable[[str, int], bool] | None
) -> int:
    """The partition's high watermark (what a consumer can reach); -1 if it is gone
    or this broker does not serve its reads (its copy may be stale)."""
    if serves_reads is not None and not serves_reads(tp.topic, tp.partition):
        return -1
    try:
        return service.topics.partition(tp.topic, tp.partition).high_watermark
    except DistributaryError:
        return -1


def handle_describe_groups(
    service: GroupService,
    body: DescribeGroupsRequest,
    serves_reads: Callable[[str, int], bool] | None = None,
) -> DescribeGroupsResponse:
    """DescribeGroups; ``serves_reads`` as for :func:`describe_group`."""
    groups: list[DescribedGroup] = []
    for group_id in body.group_ids:
        try:
            groups.append(describe_group(service, group_id, serves_reads))
        except DistributaryError as error:
            groups.append(DescribedGroup(group_id, int(error.code), error.message))
    return DescribeGroupsResponse(groups)


async def handle_delete_groups(
    service: GroupService, body: DeleteGroupsRequest
) -> DeleteGroupsResponse:
    results: list[DeleteGroupResult] = []
    for group_id in body.group_ids:
        try:
            service.check_coordinator(group_id)
            await service.append(group_id, service.coordinator.prepare_delete(group_id))
            results.append(DeleteGroupResult(group_id))
            service.logger.info("group deleted", group=group_id)
        except DistributaryError as error:
            results.append(DeleteGroupResult(group_id, int(error.code), error.message))
    return DeleteGroupsResponse(results)
