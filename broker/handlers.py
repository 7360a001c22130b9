"""Request handlers: plain async functions over the Broker state.

``handle(broker, request)`` dispatches on the body's type and returns a
:class:`Reply` (a response body plus the file regions of its payload) or None
when the client asked for no response (Produce with acks=0).  A handler raises a
DistributaryError for a whole-request failure (the connection answers it with an
ErrorResponse); per-partition failures become error codes in the response.
Handlers know nothing about sockets: broker/connection.py sends what they return.

Produce never looks inside a batch beyond its header (validated and CRC-checked
by client.records.header.iter_batches in broker/partition.py).  Fetch returns
byte ranges of segment files that the connection sends with os.sendfile.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from broker.groups import handlers as group_handlers
from broker.groups.config import OFFSETS_TOPIC
from broker.partition import AppendResult, Partition, Waiter
from broker.state import Broker
from broker.storage.file_handle import FileRegion
from broker.topics import config_strings, validate_topic_name
from client.errors import (
    DistributaryError,
    InvalidPartitionsError,
    InvalidRequestError,
    InvalidTopicError,
    UnknownTopicOrPartitionError,
)
from client.protocol.connection import IncomingRequest
from client.protocol.messages import (
    API_VERSIONS,
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    Acks,
    ApiVersionRange,
    BrokerInfo,
    ConsumerGroupHeartbeatRequest,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteGroupsRequest,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    DescribeGroupsRequest,
    DescribeTopicsRequest,
    DescribeTopicsResponse,
    FetchPartitionResponse,
    FetchRequest,
    FetchResponse,
    FetchTopicResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    HelloRequest,
    HelloResponse,
    ListGroupsRequest,
    ListOffsetsPartitionResponse,
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsetsTopicResponse,
    MetadataRequest,
    MetadataResponse,
    OffsetCommitRequest,
    OffsetFetchRequest,
    PartitionDescription,
    PartitionMetadata,
    ProducePartitionResponse,
    ProduceRequest,
    ProduceResponse,
    ProduceTopicResponse,
    Request,
    Response,
    TopicDescription,
    TopicMetadata,
    TopicResult,
)
from client.protocol.payload import split_payload

# CreateTopics with partitions=-1 (Kafka's convention) means the broker default.
DEFAULT_PARTITIONS_SENTINEL: Final = -1


@dataclass
class Reply:
    """A response body and the file regions that follow it as the frame payload."""

    body: Response
    regions: list[FileRegion] = field(default_factory=list)

    @property
    def payload_length(self) -> int:
        regions = self.regions
        if not regions:
            return 0
        return sum(region.length for region in regions)

    def release(self) -> None:
        if not self.regions:
            return
        for region in self.regions:
            region.release()
        self.regions = []


async def handle(broker: Broker, request: IncomingRequest) -> Reply | None:
    """Run one request.  Raises DistributaryError for a whole-request error."""
    body = request.body  # checked at decode (client/protocol/payload.py: check_request)
    if isinstance(body, ProduceRequest):
        produced = await handle_produce(broker, body, request.payload)
        return Reply(produced) if request.wants_response else None
    if isinstance(body, FetchRequest):
        return await handle_fetch(broker, body)
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
    return await handle_group_request(broker, body)


async def handle_group_request(broker: Broker, body: Request) -> Reply:
    """The consumer-group APIs (broker/groups/handlers.py)."""
    groups = broker.groups
    if isinstance(body, ConsumerGroupHeartbeatRequest):
        return Reply(await group_handlers.handle_heartbeat(groups, body))
    if isinstance(body, OffsetCommitRequest):
        return Reply(await group_handlers.handle_offset_commit(groups, body))
    if isinstance(body, OffsetFetchRequest):
        return Reply(group_handlers.handle_offset_fetch(groups, body))
    if isinstance(body, ListGroupsRequest):
        return Reply(group_handlers.handle_list_groups(groups, body))
    if isinstance(body, DescribeGroupsRequest):
        return Reply(group_handlers.handle_describe_groups(groups, body))
    if isinstance(body, DeleteGroupsRequest):
        return Reply(await group_handlers.handle_delete_groups(groups, body))
    if isinstance(body, FindCoordinatorRequest):
        return Reply(handle_find_coordinator(broker, body))
    raise AssertionError(f"no handler for {type(body).__name__}")


def handle_find_coordinator(
    broker: Broker, body: FindCoordinatorRequest
) -> FindCoordinatorResponse:
    """The broker that coordinates ``body.group_id``: the leader of the group's
    ``__consumer_offsets`` partition, which on one node is this broker."""
    return FindCoordinatorResponse(
        node_id=broker.config.node_id, host=broker.advertised_host, port=broker.advertised_port
    )


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
        brokers=[BrokerInfo(broker.config.node_id, broker.advertised_host, broker.advertised_port)],
        controller_id=broker.config.node_id,
        cluster_id=broker.config.cluster_id,
        topics=topics,
    )


def topic_metadata(broker: Broker, name: str) -> TopicMetadata:
    """Raises InvalidTopicError, UnknownTopicOrPartitionError."""
    validate_topic_name(name)
    topic = broker.topics.get(name)
    if topic is None:
        raise UnknownTopicOrPartitionError(f"unknown topic {name!r}")
    node = broker.config.node_id
    return TopicMetadata(
        name,
        partitions=[
            PartitionMetadata(p.index, leader=node, replicas=[node], isr=[node])
            for p in topic.partitions
        ],
        internal=name == OFFSETS_TOPIC,
    )


async def auto_create(broker: Broker, name: str) -> None:
    """Create ``name`` with the default partition count if auto-creation is on and
    nobody created it meanwhile.  Raises UnknownTopicOrPartitionError (off),
    InvalidTopicError, StorageError."""
    if not broker.config.auto_create_topics:
        raise UnknownTopicOrPartitionError(f"unknown topic {name!r} (auto-creation is off)")
    validate_topic_name(name)
    if broker.topics.get(name) is None:
        await broker.topics.create(name, broker.config.default_partitions, {})


# -- topic administration ---------------------------------------------------------------


async def handle_create_topics(broker: Broker, body: CreateTopicsRequest) -> CreateTopicsResponse:
    results: list[TopicResult] = []
    for creatable in body.topics:
        partitions = creatable.partitions
        if partitions == DEFAULT_PARTITIONS_SENTINEL:
            partitions = broker.config.default_partitions
        try:
            if creatable.replication_factor not in (-1, 1):
                raise InvalidPartitionsError(
                    f"replication factor {creatable.replication_factor} exceeds the 1 broker "
                    "in this cluster"
                )
            if body.validate_only:
                broker.topics.check_new_topic(creatable.name, partitions, creatable.configs)
            else:
                await broker.topics.create(creatable.name, partitions, creatable.configs)
            results.append(TopicResult(creatable.name))
        except DistributaryError as error:
            results.append(TopicResult(creatable.name, int(error.code), error.message))
    return CreateTopicsResponse(results)


async def handle_delete_topics(broker: Broker, body: DeleteTopicsRequest) -> DeleteTopicsResponse:
    results: list[TopicResult] = []
    for name in body.names:
        try:
            check_not_internal(name)
            await broker.topics.delete(name)
            results.append(TopicResult(name))
        except DistributaryError as error:
            results.append(TopicResult(name, int(error.code), error.message))
    return DeleteTopicsResponse(results)


def handle_describe_topics(broker: Broker, body: DescribeTopicsRequest) -> DescribeTopicsResponse:
    names = broker.topics.names() if body.names is None else body.names
    described: list[TopicDescription] = []
    node = broker.config.node_id
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
                    leader=node,
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


# -- Produce ----------------------------------------------------------------------------


async def handle_produce(
    broker: Broker, body: ProduceRequest, payload: memoryview
) -> ProduceResponse:
    """Append each partition's batches in request order; per-partition errors.
    Raises InvalidRequestError when the payload does not match the body."""
    by_topic: dict[str, list[ProducePartitionResponse]] = {}
    for name, index, view in produce_parts(body, payload):
        try:
            check_not_internal(name)
            partition = await find_partition(broker, name, index, create=True)
            result = produce_result(index, await partition.append(view))
        except DistributaryError as error:
            result = produce_refused(broker, name, index, error)
        by_topic.setdefault(name, []).append(result)
    return produce_response(by_topic)


def produce_now(
    broker: Broker, body: ProduceRequest, payload: memoryview
) -> ProduceResponse | None:
    """:func:`handle_produce` when nothing in it would wait -- every partition
    exists (no topic to create), none is being appended to, and no acknowledgement
    waits for the disk -- else None, with nothing done.  Never awaits: the
    connection's reader answers with it directly, and must then call
    :func:`answer_ready_fetches` (the long polls it fed sleep on until then).
    Raises InvalidRequestError."""
    parts = produce_parts(body, payload)
    partitions: list[Partition] = []
    for name, index, _view in parts:
        topic = broker.topics.get(name)
        if topic is None or name == OFFSETS_TOPIC or not 0 <= index < len(topic.partitions):
            return None  # an error or a topic to create: the general path
        partition = topic.partitions[index]
        if not partition.can_append_now():
            return None
        partitions.append(partition)
    by_topic: dict[str, list[ProducePartitionResponse]] = {}
    _inline_produce[0] = True  # the caller answers the woken fetches (answer_ready_fetches)
    try:
        for (name, index, view), partition in zip(parts, partitions, strict=True):
            try:
                result = produce_result(index, partition.append_now(view))
            except DistributaryError as error:
                result = produce_refused(broker, name, index, error)
            by_topic.setdefault(name, []).append(result)
    finally:
        _inline_produce[0] = False
    return produce_response(by_topic)


def produce_parts(body: ProduceRequest, payload: memoryview) -> list[tuple[str, int, memoryview]]:
    """Each partition's batches, in request order.  Raises InvalidRequestError."""
    if body.acks not in (Acks.NONE, Acks.LEADER, Acks.ALL):
        raise InvalidRequestError(f"acks must be 0, 1 or -1, got {body.acks}")
    return split_payload(body, payload)


def produce_result(index: int, appended: AppendResult) -> ProducePartitionResponse:
    return ProducePartitionResponse(
        index,
        base_offset=appended.base_offset,
        last_offset=appended.last_offset,
        log_start_offset=appended.log_start_offset,
        log_append_time_ms=appended.log_append_time_ms,
    )


def produce_refused(
    broker: Broker, name: str, index: int, error: DistributaryError
) -> ProducePartitionResponse:
    broker.logger.info("produce refused", topic=name, partition=index, error=error.message)
    return ProducePartitionResponse(index, int(error.code), error.message)


def produce_response(by_topic: dict[str, list[ProducePartitionResponse]]) -> ProduceResponse:
    return ProduceResponse(
        [ProduceTopicResponse(name, results) for name, results in by_topic.items()]
    )


def check_not_internal(name: str) -> None:
    """Clients may read __consumer_offsets but never write or delete it (the group
    coordinator owns it).  Raises InvalidTopicError."""
    if name == OFFSETS_TOPIC:
        raise InvalidTopicError(f"{name} is internal: only the group coordinator writes it")


async def find_partition(broker: Broker, topic: str, index: int, *, create: bool) -> Partition:
    """The partition, auto-creating its topic when allowed.
    Raises UnknownTopicOrPartitionError, InvalidTopicError, StorageError."""
    if create and broker.topics.get(topic) is None:
        await auto_create(broker, topic)
    return broker.topics.partition(topic, index)


# -- Fetch ------------------------------------------------------------------------------


class Answered(enum.Enum):
    """What a connection did with a parked fetch's ready answer (FetchWaker)."""

    NOT_SENT = 0  # left to the fetch's task
    SENT = 1  # the fetch is answered: its task finishes
    SENT_MORE = 2  # a stream's answer flagged MORE: the fetch waits on, re-armed


class FetchWaker:
    """A connection's parked long poll, as the partitions it waits on see it.

    ``set`` runs synchronously inside the append that makes data available
    (Partition.wake_waiters).  If the connection gave ``answer_now``, the fetch is
    queued for :func:`answer_ready_fetches`, which the appending connection calls
    right after sending its own response: the producer's acknowledgement leaves
    first and the consumer's records right after, without a trip through the
    scheduler to the fetch's task.

    The task is woken too, except during an inline produce (:func:`produce_now`,
    whose connection always calls answer_ready_fetches next): then it sleeps on
    while :meth:`answer` can answer for it, and a fetch stream's answer flagged
    MORE re-arms the waker on its partitions, so a live tail costs no task switch
    per answer.  ``interrupt`` ends the long poll early: another request was
    queued behind it (requests are answered in order)."""

    __slots__ = (
        "answer_now",
        "answered",
        "answered_at",
        "body",
        "broker",
        "event",
        "interrupted",
        "partitions",
        "queued",
    )

    def __init__(
        self,
        broker: Broker,
        body: FetchRequest,
        answer_now: Callable[[Reply], Answered] | None = None,
    ) -> None:
        self.broker = broker
        self.body = body
        self.answer_now = answer_now
        self.event: trio.Event | None = None  # set while the fetch sleeps
        self.partitions: list[Partition] = []  # what it sleeps on
        self.answered = False
        self.answered_at = -math.inf  # when an answer flagged MORE last left
        self.interrupted = False
        self.queued = False

    def interrupt(self) -> None:
        self.interrupted = True
        if self.event is not None:
            self.event.set()

    def set(self) -> None:
        event = self.event
        if event is None or self.answered:
            return
        if self.answer_now is not None:
            if not self.queued:
                self.queued = True
                ready_fetches().append(self)
            if _inline_produce[0]:
                return  # answer() runs right after the producer's response
        event.set()

    def answer(self) -> None:
        """Answer now if still asleep and the answer is ready (else its task will)."""
        self.queued = False
        event = self.event
        answer_now = self.answer_now
        if event is None or self.answered or self.interrupted or answer_now is None:
            return
        reply = fetch_now(self.broker, self.body)
        if reply is None:
            self._rearm()  # nothing for it yet (say, below min_bytes): sleep on
            return
        answered = answer_now(reply)
        if answered is Answered.SENT_MORE:
            self.answered_at = trio.current_time()  # max_wait_ms counts from here
            self._rearm()
            return
        if answered is Answered.SENT:
            self.answered = True
        else:
            reply.release()  # the task collects again
        event.set()

    def _rearm(self) -> None:
        # The append that woke us took us off its partition's waiters.
        if self.event is None or self.event.is_set():
            return
        for partition in self.partitions:
            partition.add_waiter(self)


# True while produce_now appends: a FetchWaker then leaves its task asleep (see
# FetchWaker).  One event loop per thread, and produce_now never awaits.
_inline_produce: list[bool] = [False]


# Long polls that appends made ready, to answer right after the appending
# connection's response (one list per event loop).
_READY_FETCHES: Final = trio.lowlevel.RunVar[list[FetchWaker]]("ready_fetches")


def ready_fetches() -> list[FetchWaker]:
    try:
        return _READY_FETCHES.get()
    except LookupError:
        ready: list[FetchWaker] = []
        _READY_FETCHES.set(ready)
        return ready


def answer_ready_fetches() -> None:
    """Answer the long polls appends have made ready (see FetchWaker).  Called by
    a connection right after it sent a response, and by a woken fetch task."""
    ready = ready_fetches()
    for _ in range(len(ready)):  # each answer may not append: the list only shrinks
        ready.pop(0).answer()


async def handle_fetch(
    broker: Broker, body: FetchRequest, waker: FetchWaker | None = None
) -> Reply | None:
    """Answer once ``min_bytes`` are available, ``max_wait_ms`` has passed or
    ``waker`` is interrupted; None when ``waker`` sent the answer itself.
    Offsets must be resolved (no FETCH_OFFSET_CONTINUE).

    Reads at most ``partition_max_bytes`` per partition and
    ``min(max_bytes, fetch_bytes_max)`` in total, but always the first available
    batch whole, so a consumer behind a huge batch makes progress.
    """
    reply = fetch_now(broker, body)
    if reply is not None:
        return reply
    wait_s = min(body.max_wait_ms, broker.limits.request_timeout_ms) / 1000
    deadline = trio.current_time() + wait_s
    for _ in range(1_000_000):  # each pass either answers or waits for an append
        if waker is not None and waker.interrupted:
            return collect_fetch(broker, body)
        await wait_for_append(broker, body, deadline, waker)
        answer_ready_fetches()  # if nobody did yet: this one's among them
        if waker is not None:
            if waker.answered:
                return None
            # A stream answered for it meanwhile: the long poll restarted then.
            deadline = max(deadline, waker.answered_at + wait_s)
        if trio.current_time() >= deadline:
            return collect_fetch(broker, body)
        reply = fetch_now(broker, body)
        if reply is not None:
            return reply
    raise AssertionError("fetch long-poll loop did not finish")


def fetch_now(broker: Broker, body: FetchRequest) -> Reply | None:
    """The Fetch's answer if it needs no waiting -- ``min_bytes`` are there, a
    partition has an error, ``max_wait_ms`` is 0 or the broker is shutting down --
    else None.  Never blocks: the connection's reader answers with it directly."""
    no_wait = body.max_wait_ms <= 0 or body.min_bytes <= 0 or broker.shutting_down
    # A live consumer's fetch usually finds nothing new: then skip building an
    # empty reply.
    if not no_wait and caught_up(broker, body):
        return None
    reply = collect_fetch(broker, body)
    if no_wait or reply.payload_length >= body.min_bytes or any_fetch_error(reply.body):
        return reply
    reply.release()
    return None


def caught_up(broker: Broker, body: FetchRequest) -> bool:
    """True when every requested partition is open and its fetch offset is its log
    end: a collect pass would find no records and no error."""
    for fetch_topic in body.topics:
        for wanted in fetch_topic.partitions:
            try:
                partition = broker.topics.partition(fetch_topic.name, wanted.partition)
            except DistributaryError:
                return False
            if partition.closed or wanted.fetch_offset != partition.log_end_offset:
                return False
    return True


def any_fetch_error(body: Response) -> bool:
    assert isinstance(body, FetchResponse)
    return any(p.error_code for t in body.topics for p in t.partitions)


def collect_fetch(broker: Broker, body: FetchRequest) -> Reply:
    """One pass over the requested partitions: what is available now."""
    budget = min(body.max_bytes, broker.limits.fetch_bytes_max)
    regions: list[FileRegion] = []
    topics: list[FetchTopicResponse] = []
    try:
        for fetch_topic in body.topics:
            responses: list[FetchPartitionResponse] = []
            for wanted in fetch_topic.partitions:
                if budget == 0 and regions:
                    # Full: the partition is answered empty, its data waits for the
                    # next fetch (offsets and watermarks are still reported).
                    responses.append(
                        fetch_partition_empty(broker, fetch_topic.name, wanted.partition)
                    )
                    continue
                response, region = fetch_partition(
                    broker,
                    fetch_topic.name,
                    wanted.partition,
                    wanted.fetch_offset,
                    min(wanted.partition_max_bytes, budget),
                    whole_batch=not regions,
                )
                if region is not None:
                    regions.append(region)
                    budget = max(0, budget - region.length)
                responses.append(response)
            topics.append(FetchTopicResponse(fetch_topic.name, responses))
    except BaseException:
        for region in regions:
            region.release()
        raise
    return Reply(FetchResponse(topics), regions)


def fetch_partition(
    broker: Broker, topic: str, index: int, offset: int, max_bytes: int, *, whole_batch: bool
) -> tuple[FetchPartitionResponse, FileRegion | None]:
    try:
        partition = broker.topics.partition(topic, index)
        region = partition.read(offset, max_bytes, whole_batch=whole_batch)
    except DistributaryError as error:
        return FetchPartitionResponse(index, int(error.code), error.message), None
    response = FetchPartitionResponse(
        index,
        high_watermark=partition.high_watermark,
        log_start_offset=partition.log_start_offset,
        records_bytes=region.length,
    )
    if region.length == 0:
        region.release()
        return response, None
    return response, region


def fetch_partition_empty(broker: Broker, topic: str, index: int) -> FetchPartitionResponse:
    try:
        partition = broker.topics.partition(topic, index)
    except DistributaryError as error:
        return FetchPartitionResponse(index, int(error.code), error.message)
    return FetchPartitionResponse(
        index, high_watermark=partition.high_watermark, log_start_offset=partition.log_start_offset
    )


async def wait_for_append(
    broker: Broker, body: FetchRequest, deadline: float, waker: FetchWaker | None = None
) -> None:
    """Sleep until an append to any requested partition, a topic change, shutdown,
    ``deadline`` or an interruption by ``waker``."""
    event = trio.Event()
    waiter: Waiter = event
    if waker is not None:
        waker.event = event
        waiter = waker
    partitions: list[Partition] = []
    for fetch_topic in body.topics:
        for wanted in fetch_topic.partitions:
            try:
                partitions.append(broker.topics.partition(fetch_topic.name, wanted.partition))
            except UnknownTopicOrPartitionError:
                continue
    for partition in partitions:
        partition.add_waiter(waiter)
    if waker is not None:
        waker.partitions = partitions
    try:
        with trio.move_on_at(deadline):
            await event.wait()
    finally:
        for partition in partitions:
            partition.remove_waiter(waiter)
        if waker is not None:
            waker.event = None
            waker.partitions = []


# -- ListOffsets ------------------------------------------------------------------------


def handle_list_offsets(broker: Broker, body: ListOffsetsRequest) -> ListOffsetsResponse:
    topics: list[ListOffsetsTopicResponse] = []
    for wanted_topic in body.topics:
        results: list[ListOffsetsPartitionResponse] = []
        for wanted in wanted_topic.partitions:
            try:
                partition = broker.topics.partition(wanted_topic.name, wanted.partition)
                results.append(list_offset(partition, wanted.timestamp_ms))
            except DistributaryError as error:
                results.append(
                    ListOffsetsPartitionResponse(wanted.partition, int(error.code), error.message)
                )
        topics.append(ListOffsetsTopicResponse(wanted_topic.name, results))
    return ListOffsetsResponse(topics)


def list_offset(partition: Partition, timestamp_ms: int) -> ListOffsetsPartitionResponse:
    if timestamp_ms == EARLIEST_TIMESTAMP:
        return ListOffsetsPartitionResponse(partition.index, offset=partition.log_start_offset)
    if timestamp_ms == LATEST_TIMESTAMP:
        return ListOffsetsPartitionResponse(partition.index, offset=partition.log_end_offset)
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
