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
this node does not lead answers NOT_LEADER; a ``current_leader_epoch`` other
than the partition's answers FENCED_LEADER_EPOCH (older) or
UNKNOWN_LEADER_EPOCH (newer), KIP-320.

A replica fetch (``replica_id`` >= 0, a follower) is answered by
:func:`collect_replica_fetch` instead: it reads up to the log end, checks per
partition (replication.md 1.2) the epoch, that the replica is an assigned one
(NOT_REPLICA), where the follower's last fetched epoch ends here (a diverging
epoch: answered with the divergence point and no records), the offset range,
then reports the follower's log end to the partition's leader state, which may
advance the high watermark (waking consumers and acks=all produces).  It waits
for records past its fetch offset, not for the high watermark.

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
from client.errors import (
    DistributaryError,
    FencedLeaderEpochError,
    NotLeaderError,
    NotReplicaError,
    OffsetOutOfRangeError,
    UnknownLeaderEpochError,
    UnknownTopicOrPartitionError,
)
from client.protocol.messages import (
    FetchPartition,
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
    if body.replica_id >= 0:
        reply = collect_replica_fetch(broker, body)
        if no_wait or reply.payload_length >= body.min_bytes or replica_fetch_settled(reply.body):
            return reply
        reply.release()
        return None
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
    """True when every requested partition is open, led here, in the leader epoch
    the fetch names (if it names one), and its fetch offset is its high
    watermark: a collect pass would find no records and no error."""
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
                or not metadata.leads(fetch_topic.name, wanted.partition)
                or (
                    wanted.current_leader_epoch != -1
                    and wanted.current_leader_epoch != partition.leader_epoch
                )
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
    """One pass over the requested partitions: what is available now (a replica
    fetch's: :func:`collect_replica_fetch`)."""
    if body.replica_id >= 0:
        return collect_replica_fetch(broker, body)
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
                    wanted,
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
    broker: Broker, topic: str, wanted: FetchPartition, max_bytes: int, *, whole_batch: bool
) -> tuple[FetchPartitionResponse, FileRegion | None]:
    """One partition's answer to a consumer: records from its fetch offset below the
    high watermark."""
    index, offset = wanted.partition, wanted.fetch_offset
    try:
        partition = broker.topics.partition(topic, index)
        if not broker.metadata.leads(topic, index):
            raise NotLeaderError(f"{topic}-{index}: this broker is not its leader")
        if wanted.current_leader_epoch != -1:
            check_leader_epoch(partition, wanted.current_leader_epoch)
        high_watermark = partition.high_watermark
        if offset >= high_watermark:
            # Nothing committed there yet (the range check still applies).
            partition.read(offset, 0, whole_batch=False).release()
            region = None
        else:
            region = partition.read(offset, max_bytes, whole_batch=whole_batch)
    except DistributaryError as error:
        return fetch_error_response(broker, topic, index, error), None
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


def check_leader_epoch(partition: Partition, current_leader_epoch: int) -> None:
    """Raises FencedLeaderEpochError when the asker's epoch is older than the
    partition's, UnknownLeaderEpochError when it is newer (this broker has not
    learnt it yet)."""
    local = partition.leader_epoch
    if current_leader_epoch < local:
        raise FencedLeaderEpochError(
            f"{partition.topic}-{partition.index}: leader epoch {current_leader_epoch} "
            f"is older than {local}"
        )
    if current_leader_epoch > local:
        raise UnknownLeaderEpochError(
            f"{partition.topic}-{partition.index}: leader epoch {current_leader_epoch} "
            f"is newer than {local}"
        )


def fetch_error_response(
    broker: Broker, topic: str, index: int, error: DistributaryError
) -> FetchPartitionResponse:
    """A partition's error answer; with a leadership or epoch error it names the
    leader and its epoch as this broker knows them."""
    response = FetchPartitionResponse(index, int(error.code), error.message)
    if isinstance(error, NotLeaderError | FencedLeaderEpochError | UnknownLeaderEpochError):
        leadership = broker.metadata.leadership(topic, index)
        if leadership is not None:
            response.leader_id = leadership.leader
            response.leader_epoch = leadership.leader_epoch
    return response


# -- replica fetches ---------------------------------------------------------------------


def replica_fetch_settled(body: Response) -> bool:
    """Whether a replica fetch's answer must go now although it holds too few
    records: a partition has an error or a diverging epoch."""
    assert isinstance(body, FetchResponse)
    return any(
        p.error_code or p.diverging_end_offset >= 0 for t in body.topics for p in t.partitions
    )


def collect_replica_fetch(broker: Broker, body: FetchRequest) -> Reply:
    """One pass over a follower's fetch: each partition checked, the follower's
    progress reported to the leader state, records read up to the log end (see the
    module docstring)."""
    budget = min(body.max_bytes, broker.limits.fetch_bytes_max)
    now_ms = broker.clock_ms()
    regions: list[FileRegion] = []
    topics: list[FetchTopicResponse] = []
    try:
        for fetch_topic in body.topics:
            responses: list[FetchPartitionResponse] = []
            for wanted in fetch_topic.partitions:
                response, region = replica_fetch_partition(
                    broker,
                    fetch_topic.name,
                    wanted,
                    body.replica_id,
                    min(wanted.partition_max_bytes, budget),
                    whole_batch=not regions,
                    now_ms=now_ms,
                    replica_epoch=body.replica_epoch,
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


def replica_fetch_partition(
    broker: Broker,
    topic: str,
    wanted: FetchPartition,
    replica_id: int,
    max_bytes: int,
    *,
    whole_batch: bool,
    now_ms: int,
    replica_epoch: int = -1,
) -> tuple[FetchPartitionResponse, FileRegion | None]:
    """One partition's answer to follower ``replica_id`` (checks in Kafka's order,
    replication.md 1.2), sent by its broker's incarnation ``replica_epoch``."""
    index, offset = wanted.partition, wanted.fetch_offset
    found: Partition | None = None
    try:
        partition = found = broker.topics.partition(topic, index)
        partition.check_open()
        leadership = broker.metadata.leadership(topic, index)
        node_id = broker.metadata.node_id
        if leadership is None or leadership.leader != node_id or partition.is_follower:
            raise NotLeaderError(f"{topic}-{index}: this broker is not its leader")
        if wanted.current_leader_epoch != -1:
            check_leader_epoch(partition, wanted.current_leader_epoch)
        leader_state = partition.leader_state
        if (
            replica_id == node_id
            or replica_id not in leadership.replicas
            or (leader_state is not None and replica_id not in leader_state.replicas)
        ):
            raise NotReplicaError(
                f"{topic}-{index}: broker {replica_id} is not one of its replicas "
                f"{list(leadership.replicas)}"
            )
        # Followers read what the leader state counts as appended: under the
        # every-append flush policy that waits for the fsync, like the HW does.
        log_end_offset = (
            partition.log_end_offset if leader_state is None else leader_state.log_end_offset
        )
        if wanted.last_fetched_epoch != -1:
            epoch, end_offset = partition.epochs.end_offset_for(
                wanted.last_fetched_epoch, log_end_offset
            )
            if epoch < wanted.last_fetched_epoch or end_offset < offset:
                return diverging_response(partition, epoch, end_offset), None
        if not partition.log_start_offset <= offset <= log_end_offset:
            raise OffsetOutOfRangeError(
                f"{topic}-{index}: fetch offset {offset} is outside "
                f"[{partition.log_start_offset}, {log_end_offset}]"
            )
        if leader_state is not None:
            partition.follower_fetched(replica_id, offset, now_ms, replica_epoch)
        region = partition.read(
            offset, max_bytes, whole_batch=whole_batch, end_offset_max=log_end_offset
        )
    except DistributaryError as error:
        response = fetch_error_response(broker, topic, index, error)
        if isinstance(error, OffsetOutOfRangeError) and found is not None:
            # The follower restarts from the log start when it is behind it.
            response.log_start_offset = found.log_start_offset
            response.high_watermark = found.high_watermark
        return response, None
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


def diverging_response(partition: Partition, epoch: int, end_offset: int) -> FetchPartitionResponse:
    """The follower's log diverges after ``epoch``, which ends at ``end_offset`` here:
    no records.  When this log has no epoch at or below the follower's (-1), the
    end offset is the log start, so the answer still reads as diverging
    (``diverging_end_offset`` >= 0)."""
    if end_offset < 0:
        end_offset = partition.log_start_offset
    return FetchPartitionResponse(
        partition.index,
        high_watermark=partition.high_watermark,
        log_start_offset=partition.log_start_offset,
        diverging_epoch=epoch,
        diverging_end_offset=end_offset,
    )
