"""Fetch: what a consumer may read now, as byte ranges of segment files.

:func:`fetch_now` answers a Fetch if it needs no waiting (``min_bytes`` are
there, a partition has an error, ``max_wait_ms`` is 0, the broker is stopping)
and never blocks; :func:`collect_fetch` is one pass over the requested
partitions whatever it finds.  Consumers see records up to the partition's
high watermark only (the committed records): every check of "is there
something new" compares with it, never with the log end.

Reads take at most ``partition_max_bytes`` per partition and
``min(max_bytes, fetch_bytes_max)`` in total, but always the first available
batch whole, so a consumer behind a huge batch makes progress.  A partition
this node does not serve reads of (it does not lead it, nor led it when it was
fenced from the cluster metadata: broker/metadata_view.py) answers NOT_LEADER.

Waiting is the caller's: a connection parks the fetch (broker/waiting.py) and
its writer calls :func:`fetch_now` again when a partition wakes it;
:func:`handle_fetch` is the awaitable form for a caller with a task of its own.
"""

from __future__ import annotations

import trio

from broker.partition import Partition
from broker.response_slots import Reply
from broker.state import Broker
from broker.storage.file_handle import FileRegion
from broker.waiting import wait_for_partitions
from client.errors import DistributaryError, NotLeaderError, UnknownTopicOrPartitionError
from client.protocol.messages import (
    FetchPartitionResponse,
    FetchRequest,
    FetchResponse,
    FetchTopicResponse,
    Response,
)


async def handle_fetch(broker: Broker, body: FetchRequest) -> Reply:
    """Answer once ``min_bytes`` are available or ``max_wait_ms`` has passed
    (at most request_timeout_ms).  Offsets must be resolved (no
    FETCH_OFFSET_CONTINUE)."""
    reply = fetch_now(broker, body)
    if reply is not None:
        return reply
    wait_s = min(body.max_wait_ms, broker.limits.request_timeout_ms) / 1000
    deadline = trio.current_time() + wait_s
    while True:  # each pass answers or waits for a partition to change, until deadline
        await wait_for_partitions(fetch_partitions(broker, body), deadline)
        if trio.current_time() >= deadline:
            return collect_fetch(broker, body)
        reply = fetch_now(broker, body)
        if reply is not None:
            return reply


def fetch_now(broker: Broker, body: FetchRequest) -> Reply | None:
    """The Fetch's answer if it needs no waiting, else None (see the module
    docstring).  Never blocks."""
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
    """True when every requested partition is open, led here, and its fetch
    offset is its high watermark: a collect pass would find no records and no
    error."""
    metadata = broker.metadata
    for fetch_topic in body.topics:
        for wanted in fetch_topic.partitions:
            try:
                partition = broker.topics.partition(fetch_topic.name, wanted.partition)
            except DistributaryError:
                return False
            if (
                partition.closed
                or wanted.fetch_offset != partition.high_watermark
                or not metadata.serves_reads(fetch_topic.name, wanted.partition)
            ):
                return False
    return True


def fetch_partitions(broker: Broker, body: FetchRequest) -> list[Partition]:
    """The requested partitions that exist, for a fetch to wait on."""
    found: list[Partition] = []
    for fetch_topic in body.topics:
        for wanted in fetch_topic.partitions:
            try:
                found.append(broker.topics.partition(fetch_topic.name, wanted.partition))
            except UnknownTopicOrPartitionError:
                continue
    return found


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
    """One partition's answer: records from ``offset`` below the high watermark."""
    try:
        partition = broker.topics.partition(topic, index)
        if not broker.metadata.serves_reads(topic, index):
            raise NotLeaderError(f"{topic}-{index}: this broker is not its leader")
        high_watermark = partition.high_watermark
        if offset >= high_watermark:
            # Nothing committed there yet (the range check still applies).
            partition.read(offset, 0, whole_batch=False).release()
            region = None
        else:
            region = partition.read(offset, max_bytes, whole_batch=whole_batch)
    except DistributaryError as error:
        return FetchPartitionResponse(index, int(error.code), error.message), None
    response = FetchPartitionResponse(
        index,
        high_watermark=high_watermark,
        log_start_offset=partition.log_start_offset,
        records_bytes=0 if region is None else region.length,
    )
    if region is None or region.length == 0:
        if region is not None:
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
