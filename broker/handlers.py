"""Request dispatch: ``handle(broker, request)`` runs one request to its answer.

It dispatches on the body's type to the handler modules -- broker/produce.py,
broker/fetch.py, broker/admin_handlers.py (Hello, Metadata, topics,
ListOffsets, FindCoordinator), broker/offsets_for_leader_epoch.py and
broker/groups/handlers.py -- and returns a
:class:`Reply` (a response body plus the file regions of its payload) or None
when the client asked for no response (Produce with acks=0).  A handler raises
a DistributaryError for a whole-request failure (the connection answers it with
an ErrorResponse); per-partition failures become error codes in the response.
Handlers know nothing about sockets: broker/connection.py sends what they
return, in request order, through its response slots.

This awaitable form waits where a request must (a long-polling Fetch sleeps in
:func:`broker.fetch.handle_fetch`); the connection instead parks such a fetch
(broker/waiting.py) and goes on with the requests behind it.
"""

from __future__ import annotations

from broker.admin_handlers import (
    DEFAULT_PARTITIONS_SENTINEL,
    handle_alter_configs,
    handle_create_partitions,
    handle_create_topics,
    handle_delete_topics,
    handle_describe_topics,
    handle_find_coordinator,
    handle_hello,
    handle_list_offsets,
    handle_metadata,
    list_offset,
    topic_metadata,
)
from broker.elect_leaders import handle_elect_leaders
from broker.fetch import any_fetch_error, caught_up, collect_fetch, fetch_now, handle_fetch
from broker.groups import handlers as group_handlers
from broker.offsets_for_leader_epoch import handle_offsets_for_leader_epoch
from broker.produce import (
    auto_create,
    check_not_internal,
    find_partition,
    handle_produce,
    produce_now,
)
from broker.response_slots import Reply
from broker.state import Broker
from client.protocol.connection import IncomingRequest
from client.protocol.messages import (
    AlterConfigsRequest,
    ConsumerGroupHeartbeatRequest,
    CreatePartitionsRequest,
    CreateTopicsRequest,
    DeleteGroupsRequest,
    DeleteTopicsRequest,
    DescribeGroupsRequest,
    DescribeTopicsRequest,
    ElectLeadersRequest,
    FetchRequest,
    FindCoordinatorRequest,
    HelloRequest,
    ListGroupsRequest,
    ListOffsetsRequest,
    MetadataRequest,
    OffsetCommitRequest,
    OffsetFetchRequest,
    OffsetsForLeaderEpochRequest,
    ProduceRequest,
    Request,
)

__all__ = [
    "DEFAULT_PARTITIONS_SENTINEL",
    "Reply",
    "any_fetch_error",
    "auto_create",
    "caught_up",
    "check_not_internal",
    "collect_fetch",
    "fetch_now",
    "find_partition",
    "handle",
    "handle_create_topics",
    "handle_delete_topics",
    "handle_describe_topics",
    "handle_fetch",
    "handle_find_coordinator",
    "handle_group_request",
    "handle_hello",
    "handle_list_offsets",
    "handle_metadata",
    "handle_produce",
    "list_offset",
    "produce_now",
    "topic_metadata",
]


async def handle(broker: Broker, request: IncomingRequest) -> Reply | None:
    """Run one request.  Raises DistributaryError for a whole-request error."""
    body = request.body  # checked at decode (client/protocol/payload.py: check_request)
    if isinstance(body, ProduceRequest):
        produced = await handle_produce(broker, body, request.payload)
        return Reply(produced) if request.wants_response else None
    if isinstance(body, FetchRequest):
        return await handle_fetch(broker, body)
    return await handle_other(broker, body)


async def handle_other(broker: Broker, body: Request) -> Reply:
    """Every request but Produce and Fetch."""
    if isinstance(body, HelloRequest):
        return Reply(handle_hello(broker, body))
    if isinstance(body, MetadataRequest):
        return Reply(await handle_metadata(broker, body))
    if isinstance(body, CreateTopicsRequest):
        return Reply(await handle_create_topics(broker, body))
    if isinstance(body, DeleteTopicsRequest):
        return Reply(await handle_delete_topics(broker, body))
    if isinstance(body, DescribeTopicsRequest):
        return Reply(handle_describe_topics(broker, body))
    if isinstance(body, ListOffsetsRequest):
        return Reply(handle_list_offsets(broker, body))
    if isinstance(body, AlterConfigsRequest):
        return Reply(await handle_alter_configs(broker, body))
    if isinstance(body, CreatePartitionsRequest):
        return Reply(await handle_create_partitions(broker, body))
    if isinstance(body, FindCoordinatorRequest):
        return Reply(await handle_find_coordinator(broker, body))
    if isinstance(body, OffsetsForLeaderEpochRequest):
        return Reply(handle_offsets_for_leader_epoch(broker, body))
    if isinstance(body, ElectLeadersRequest):
        return Reply(await handle_elect_leaders(broker, body))
    return await handle_group_request(broker, body)


async def handle_group_request(broker: Broker, body: Request) -> Reply:
    """The consumer-group APIs (broker/groups/handlers.py)."""
    groups = broker.groups
    if isinstance(body, ConsumerGroupHeartbeatRequest):
        return Reply(await group_handlers.handle_heartbeat(groups, body))
    if isinstance(body, OffsetCommitRequest):
        return Reply(await group_handlers.handle_offset_commit(groups, body))
    if isinstance(body, OffsetFetchRequest):
        return Reply(await group_handlers.handle_offset_fetch(groups, body))
    if isinstance(body, ListGroupsRequest):
        return Reply(group_handlers.handle_list_groups(groups, body))
    if isinstance(body, DescribeGroupsRequest):
        return Reply(
            group_handlers.handle_describe_groups(groups, body, broker.metadata.serves_reads)
        )
    if isinstance(body, DeleteGroupsRequest):
        return Reply(await group_handlers.handle_delete_groups(groups, body))
    raise AssertionError(f"no handler for {type(body).__name__}")
