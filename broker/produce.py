"""Produce: append each partition's batches, in request order, with
per-partition errors.

The broker never looks inside a batch beyond its header (validated and
CRC-checked in broker/partition.py).  :func:`produce_now` is the path without
any wait -- every partition exists and is led here, none is being appended to,
no acknowledgement waits for the disk -- which the connection's reader runs
directly, so the producer's acknowledgement costs no trip through the
scheduler; :func:`handle_produce` is the general path (topic auto-creation, a
contended append lock, a flush before the acknowledgement).

An append wakes the partition's waiters when it moves the high watermark (a
long-polling fetch then answers from its own connection's writer).  A
partition this node does not lead answers NOT_LEADER; ``__consumer_offsets``
is written only by the group coordinator.
"""

from __future__ import annotations

from broker.groups.config import OFFSETS_TOPIC
from broker.partition import AppendResult, Partition
from broker.state import Broker
from broker.topics import validate_topic_name
from client.errors import (
    DistributaryError,
    InvalidRequestError,
    InvalidTopicError,
    NotLeaderError,
    UnknownTopicOrPartitionError,
)
from client.protocol.messages import (
    Acks,
    ProducePartitionResponse,
    ProduceRequest,
    ProduceResponse,
    ProduceTopicResponse,
)
from client.protocol.payload import split_payload


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
            check_leader(broker, name, index)
            result = produce_result(index, await partition.append(view))
        except DistributaryError as error:
            result = produce_refused(broker, name, index, error)
        by_topic.setdefault(name, []).append(result)
    return produce_response(by_topic)


def produce_now(
    broker: Broker, body: ProduceRequest, payload: memoryview
) -> ProduceResponse | None:
    """:func:`handle_produce` when nothing in it would wait, else None with
    nothing done (see the module docstring).  Never awaits.  Raises
    InvalidRequestError."""
    parts = produce_parts(body, payload)
    partitions: list[Partition] = []
    leads = broker.metadata.leads
    for name, index, _view in parts:
        topic = broker.topics.get(name)
        if topic is None or name == OFFSETS_TOPIC or not 0 <= index < len(topic.partitions):
            return None  # an error or a topic to create: the general path
        partition = topic.partitions[index]
        if not partition.can_append_now() or not leads(name, index):
            return None
        partitions.append(partition)
    by_topic: dict[str, list[ProducePartitionResponse]] = {}
    for (name, index, view), partition in zip(parts, partitions, strict=True):
        try:
            result = produce_result(index, partition.append_now(view))
        except DistributaryError as error:
            result = produce_refused(broker, name, index, error)
        by_topic.setdefault(name, []).append(result)
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


def check_leader(broker: Broker, topic: str, index: int) -> None:
    """Raises NotLeaderError unless this node leads ``topic``/``index``."""
    if not broker.metadata.leads(topic, index):
        raise NotLeaderError(f"{topic}-{index}: this broker is not its leader")


async def find_partition(broker: Broker, topic: str, index: int, *, create: bool) -> Partition:
    """The partition, auto-creating its topic when allowed.
    Raises UnknownTopicOrPartitionError, InvalidTopicError, StorageError."""
    if create and broker.topics.get(topic) is None:
        await auto_create(broker, topic)
    return broker.topics.partition(topic, index)


async def auto_create(broker: Broker, name: str) -> None:
    """Create ``name`` with the default partition count if auto-creation is on and
    nobody created it meanwhile.  Raises UnknownTopicOrPartitionError (off),
    InvalidTopicError, StorageError."""
    if not broker.config.auto_create_topics:
        raise UnknownTopicOrPartitionError(f"unknown topic {name!r} (auto-creation is off)")
    validate_topic_name(name)
    if broker.cluster is not None:
        await broker.cluster.create_topic_if_absent(name)
    elif broker.topics.get(name) is None:
        await broker.topics.create(name, broker.config.default_partitions, {})
