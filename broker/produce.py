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

acks=all (replication.md 1.5).  A partition led with followers (a leader state,
broker/replication/leader_state.py) refuses the batch before appending when its
ISR is below min.insync.replicas (NOT_ENOUGH_REPLICAS); otherwise it is appended
-- on the spot by :func:`append_produce_now` when nothing waits, as
:func:`produce_now` appends, so the followers' parked fetches are woken
without a trip through the scheduler -- and the answer waits (:func:`wait_for_replication`) until the high watermark
passes the batch (success), or it passed with the maximal ISR below the minimum
(NOT_ENOUGH_REPLICAS_AFTER_APPEND), or the request's ``timeout_ms`` passed
(REQUEST_TIMED_OUT), or the partition lost its leadership or was truncated
under the batch (NOT_LEADER): every outcome but success leaves it unknown
whether the records survive, which an idempotent producer's retry resolves.
Without a leader state (one replica) acks=all answers at once, as acks=leader
does, and takes the path without waiting.  Followers report what they have
appended by their next fetch (broker/fetch.py), which moves the high watermark
and wakes the waiting answers in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import trio

from broker.groups.config import OFFSETS_TOPIC
from broker.partition import AppendResult, Partition
from broker.replication.leader_state import WAIT, LeaderState
from broker.state import Broker
from broker.topics import validate_topic_name
from broker.waiting import wait_for_partitions
from client.errors import (
    DistributaryError,
    InvalidRequestError,
    InvalidTopicError,
    NotEnoughReplicasError,
    NotLeaderError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.protocol.messages import (
    Acks,
    ProducePartitionResponse,
    ProduceRequest,
    ProduceResponse,
    ProduceTopicResponse,
)
from client.protocol.payload import split_payload

# An acks=all wait ends at the request's timeout_ms, but at most at this share of
# the broker's request_timeout_ms: the per-partition REQUEST_TIMED_OUT answer must
# come before the handler's own timeout answers the whole request.
REPLICATION_WAIT_SHARE_OF_REQUEST_TIMEOUT: Final = 0.9


@dataclass
class AwaitedAppend:
    """An acks=all append waiting for its followers: the partition, the leader epoch
    it was appended in, where it ends, and its (success) answer."""

    name: str
    partition: Partition
    leader_epoch: int
    end_offset: int
    result: ProducePartitionResponse


class PendingReplication:
    """The acks=all appends of one Produce still waiting for their followers, and
    until when (trio time).  :meth:`wait` settles them: the response they belong
    to is final once it returns."""

    def __init__(self, broker: Broker, awaited: list[AwaitedAppend], deadline: float) -> None:
        assert awaited
        self.broker = broker
        self.awaited = awaited
        self.deadline = deadline

    async def wait(self) -> None:
        await wait_for_replication(self.broker, self.awaited, self.deadline)


async def handle_produce(
    broker: Broker, body: ProduceRequest, payload: memoryview
) -> ProduceResponse:
    """Append each partition's batches in request order, and with acks=all wait for
    the followers; per-partition errors.  Raises InvalidRequestError when the
    payload does not match the body."""
    response, pending = await append_produce(broker, body, payload)
    if pending is not None:
        await pending.wait()
    return response


async def append_produce(
    broker: Broker, body: ProduceRequest, payload: memoryview
) -> tuple[ProduceResponse, PendingReplication | None]:
    """Append each partition's batches in request order; per-partition errors.  With
    acks=all on partitions with followers, the response is final only once the
    returned PendingReplication's ``wait`` returns (a connection waits for it in
    a task of its own, so the requests behind are handled meanwhile).  Raises
    InvalidRequestError when the payload does not match the body."""
    started = trio.current_time()
    acks_all = body.acks == Acks.ALL
    by_topic: dict[str, list[ProducePartitionResponse]] = {}
    awaited: list[AwaitedAppend] = []
    for name, index, view in produce_parts(body, payload):
        try:
            check_not_internal(name)
            partition = await find_partition(broker, name, index, create=True)
            check_leader(broker, name, index)
            leader_state = partition.leader_state
            if acks_all and leader_state is not None:
                check_min_insync(leader_state, name, index)
                epoch = partition.leader_epoch
                appended = await partition.append(view)
                result = produce_result(index, appended)
                awaited.append(
                    AwaitedAppend(name, partition, epoch, appended.last_offset + 1, result)
                )
            else:
                result = produce_result(index, await partition.append(view))
        except DistributaryError as error:
            result = produce_refused(broker, name, index, error)
        by_topic.setdefault(name, []).append(result)
    return produce_response(by_topic), replication_pending(broker, body, awaited, started)


async def wait_for_replication(
    broker: Broker, awaited: list[AwaitedAppend], deadline: float
) -> None:
    """Wait until every acks=all append in ``awaited`` has its outcome (see the
    module docstring), or ``deadline`` (trio time) passes; a failed one's answer is
    turned into its error in place."""
    pending = awaited
    while True:  # each pass settles what it can, then waits for a partition to change
        pending = [entry for entry in pending if not settle(broker, entry)]
        if not pending:
            return
        if broker.shutting_down:
            for entry in pending:
                refuse_in_place(
                    broker,
                    entry,
                    NotLeaderError(
                        f"{entry.name}-{entry.result.partition}: the broker is shutting down"
                    ),
                )
            return
        if trio.current_time() >= deadline:
            for entry in pending:
                refuse_in_place(
                    broker,
                    entry,
                    RequestTimedOutError(
                        f"{entry.name}-{entry.result.partition}: the in-sync replicas did "
                        f"not confirm offsets below {entry.end_offset} in time"
                    ),
                )
            return
        await wait_for_partitions([entry.partition for entry in pending], deadline)


def settle(broker: Broker, entry: AwaitedAppend) -> bool:
    """Whether ``entry``'s outcome is known (its answer is then final)."""
    partition = entry.partition
    leader_state = partition.leader_state
    if (
        leader_state is None
        or partition.closed
        or partition.leader_epoch != entry.leader_epoch
        or partition.log_end_offset < entry.end_offset
    ):
        refuse_in_place(
            broker,
            entry,
            NotLeaderError(
                f"{entry.name}-{entry.result.partition}: leadership changed before the "
                "in-sync replicas confirmed the batch"
            ),
        )
        return True
    outcome = leader_state.acks_all_outcome(entry.end_offset)
    if outcome == WAIT:
        return False
    if outcome is not None:
        refuse_in_place(
            broker, entry, error_for_code(outcome, f"{entry.name}-{entry.result.partition}")
        )
    return True


def refuse_in_place(broker: Broker, entry: AwaitedAppend, error: DistributaryError) -> None:
    result = entry.result
    broker.logger.info(
        "acks=all produce failed",
        topic=entry.name,
        partition=result.partition,
        error=error.message,
        code=error.code.name,
    )
    result.error_code = int(error.code)
    result.error_message = error.message


def produce_now(
    broker: Broker, body: ProduceRequest, payload: memoryview
) -> ProduceResponse | None:
    """:func:`handle_produce` when nothing in it would wait, else None with
    nothing done (see the module docstring).  Never awaits.  Raises
    InvalidRequestError."""
    parts = produce_parts(body, payload)
    partitions = appendable_now(broker, parts)
    if partitions is None:
        return None
    if body.acks == Acks.ALL and any(p.leader_state is not None for p in partitions):
        return None  # waits for the followers: append_produce_now
    by_topic: dict[str, list[ProducePartitionResponse]] = {}
    for (name, index, view), partition in zip(parts, partitions, strict=True):
        try:
            result = produce_result(index, partition.append_now(view))
        except DistributaryError as error:
            result = produce_refused(broker, name, index, error)
        by_topic.setdefault(name, []).append(result)
    return produce_response(by_topic)


def append_produce_now(
    broker: Broker, body: ProduceRequest, payload: memoryview
) -> tuple[ProduceResponse, PendingReplication | None] | None:
    """:func:`append_produce` when its appends would not wait (as
    :func:`produce_now`'s), else None with nothing done.  Never awaits: an
    acks=all Produce to partitions with followers is appended on the spot, so
    the followers' parked fetches are woken without a trip through the
    scheduler; the returned PendingReplication waits for them.  Raises
    InvalidRequestError."""
    parts = produce_parts(body, payload)
    partitions = appendable_now(broker, parts)
    if partitions is None:
        return None
    acks_all = body.acks == Acks.ALL
    by_topic: dict[str, list[ProducePartitionResponse]] = {}
    awaited: list[AwaitedAppend] = []
    for (name, index, view), partition in zip(parts, partitions, strict=True):
        try:
            if not partition.can_append_now():
                # An earlier part of this request made it give up leading.
                raise NotLeaderError(f"{name}-{index}: this broker is not its leader")
            leader_state = partition.leader_state
            if acks_all and leader_state is not None:
                check_min_insync(leader_state, name, index)
                epoch = partition.leader_epoch
                appended = partition.append_now(view)
                result = produce_result(index, appended)
                awaited.append(
                    AwaitedAppend(name, partition, epoch, appended.last_offset + 1, result)
                )
            else:
                result = produce_result(index, partition.append_now(view))
        except DistributaryError as error:
            result = produce_refused(broker, name, index, error)
        by_topic.setdefault(name, []).append(result)
    return produce_response(by_topic), replication_pending(broker, body, awaited, None)


def appendable_now(
    broker: Broker, parts: list[tuple[str, int, memoryview]]
) -> list[Partition] | None:
    """The partitions of ``parts`` if each exists, is led here and takes an append
    now (:meth:`Partition.can_append_now`), else None (the general path: an
    error, a topic to create, a wait for the append lock or the disk)."""
    partitions: list[Partition] = []
    leads = broker.metadata.leads
    for name, index, _view in parts:
        topic = broker.topics.get(name)
        if topic is None or name == OFFSETS_TOPIC or not 0 <= index < len(topic.partitions):
            return None
        partition = topic.partitions[index]
        if not partition.can_append_now() or not leads(name, index):
            return None
        partitions.append(partition)
    return partitions


def replication_pending(
    broker: Broker, body: ProduceRequest, awaited: list[AwaitedAppend], started: float | None
) -> PendingReplication | None:
    """What the acks=all appends in ``awaited`` wait for (None: nothing), until the
    request's ``timeout_ms`` from ``started`` (trio time; None: now), capped below
    the broker's request timeout."""
    if not awaited:
        return None
    if started is None:
        started = trio.current_time()
    wait_s = (
        min(
            body.timeout_ms,
            broker.limits.request_timeout_ms * REPLICATION_WAIT_SHARE_OF_REQUEST_TIMEOUT,
        )
        / 1000
    )
    return PendingReplication(broker, awaited, started + wait_s)


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
    # The log start offset tells an idempotent producer refused UNKNOWN_PRODUCER_ID
    # whether retention removed its records (KIP-360).
    topic = broker.topics.get(name)
    log_start_offset = (
        topic.partitions[index].log_start_offset
        if topic is not None and 0 <= index < len(topic.partitions)
        else -1
    )
    return ProducePartitionResponse(
        index, int(error.code), error.message, log_start_offset=log_start_offset
    )


def produce_response(by_topic: dict[str, list[ProducePartitionResponse]]) -> ProduceResponse:
    return ProduceResponse(
        [ProduceTopicResponse(name, results) for name, results in by_topic.items()]
    )


def check_not_internal(name: str) -> None:
    """Clients may read __consumer_offsets but never write or delete it (the group
    coordinator owns it).  Raises InvalidTopicError."""
    if name == OFFSETS_TOPIC:
        raise InvalidTopicError(f"{name} is internal: only the group coordinator writes it")


def check_min_insync(leader_state: LeaderState, topic: str, index: int) -> None:
    """Refuse an acks=all append while the partition has fewer in-sync replicas
    than its min ISR (nothing is appended).

    Raises NotEnoughReplicasError."""
    if leader_state.acks_all_refusal() is not None:
        raise NotEnoughReplicasError(
            f"{topic}-{index}: {len(leader_state.isr)} in-sync replicas, "
            f"min.insync.replicas is {leader_state.min_insync_replicas}"
        )


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
