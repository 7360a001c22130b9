"""The consume -> process -> produce -> commit loop the log-side stages share.

validate, aggregate, sink and alerts each read a consumer group's batches and
write what they derive somewhere (topics, or SQLite).  They are at-least-once
the same way:

1. ``getmany`` a batch (bounded by ``batch_records_max``);
2. the stage processes it and enqueues its outputs;
3. the outputs are acknowledged (:func:`wait_acknowledged`; the sink commits its
   database transaction instead);
4. only then the group's offsets are committed (:func:`commit_offsets`).

A crash anywhere before 4 re-delivers the batch to whoever owns the partition
next; the stages downstream are idempotent.  Auto-commit is off (it would commit
positions before the outputs are acknowledged), so a rebalance that takes a
partition away commits nothing more: the last commit is the one after step 4.

A commit the coordinator refuses because the partitions moved meanwhile (this
member was expelled, say after a long pause) is logged and dropped: the new
owner re-reads from the last commit.  So is a commit that fails while the broker
is unreachable: the next batch's commit covers its offsets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog
import trio

from client import (
    BrokerUnavailableError,
    Consumer,
    DistributaryError,
    FencedMemberEpochError,
    Producer,
    Record,
    RecordHandle,
    TooManyRequestsError,
    TopicPartition,
    UnknownMemberError,
)

log = structlog.get_logger("examples.iot.consume")

# Records handed to a stage per batch: big enough to amortise the per-batch
# acknowledgement and commit round trips, small enough that a batch is processed
# well within a second (so a stop or a revocation waits little).
BATCH_RECORDS_MAX_DEFAULT: Final = 2_000
# How long one getmany waits for records before the loop checks ``stop``.
POLL_TIMEOUT_MS: Final = 200

Batch = dict[TopicPartition, list[Record[Any]]]


class OutputNotAcknowledgedError(DistributaryError):
    """A stage's output records failed for good (the delivery timeout passed): the
    stage stops without committing, so its input is re-read after a restart."""

    retriable = False


def header_value(record: Record[Any], name: str) -> bytes | None:
    """The value of the record's first header called ``name`` (None: absent)."""
    for header_name, value in record.headers:
        if header_name == name:
            return value
    return None


def next_offsets(batch: Batch) -> dict[TopicPartition, int]:
    """Per partition of ``batch``: the offset after its last record (what to commit)."""
    return {tp: records[-1].offset + 1 for tp, records in batch.items() if records}


def send(
    producer: Producer,
    topic: str,
    value: bytes,
    key: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    pending: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]],
) -> RecordHandle | None:
    """Enqueue a record without waiting; a record that finds the buffer full goes to
    ``pending`` for :func:`send_pending` (the order of a partition is kept: once one
    record is pending, the rest of the batch is pending too)."""
    if not pending:
        try:
            return producer.send_nowait(topic, value, key, headers)
        except TooManyRequestsError:
            pass
    pending.append((topic, value, key, headers))
    return None


async def send_pending(
    producer: Producer,
    pending: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]],
) -> None:
    """Enqueue what :func:`send` could not, waiting for buffer space as needed."""
    for topic, value, key, headers in pending:
        await producer.enqueue(topic, value, key, headers)
    pending.clear()


async def wait_acknowledged(producer: Producer) -> None:
    """Until everything enqueued so far is acknowledged.  Raises
    OutputNotAcknowledgedError when a batch failed for good."""
    failed_before = producer.failed_batches
    await producer.flush()
    if producer.failed_batches != failed_before:
        raise OutputNotAcknowledgedError(
            f"{producer.failed_batches - failed_before} output batches failed for good"
        )


async def commit_offsets(
    consumer: Consumer, offsets: Mapping[TopicPartition, int], metadata: str = ""
) -> bool:
    """Commit ``offsets`` for the consumer's group; False (logged) when the
    coordinator refused them because the partitions moved, or could not be reached
    (a retriable error after the SDK's own retries: the next batch's commit covers
    these offsets too, since each commit is a position).  Raises errors that are
    not retriable."""
    if not offsets:
        return True
    try:
        await consumer.commit(offsets, metadata=metadata)
    except (FencedMemberEpochError, UnknownMemberError) as error:
        log.warning("commit refused: partitions moved", group=consumer.group, error=str(error))
        return False
    except DistributaryError as error:
        if not error.retriable:
            raise
        log.warning("commit failed, the next one covers it", group=consumer.group, error=str(error))
        return False
    return True


async def consume_loop(
    consumer: Consumer,
    process: Callable[[Batch], Awaitable[None]],
    stop: trio.Event,
    *,
    batch_records_max: int = BATCH_RECORDS_MAX_DEFAULT,
    poll_timeout_ms: int = POLL_TIMEOUT_MS,
) -> None:
    """Hand batches to ``process`` until ``stop`` is set (``process`` does steps 2-4
    and is also called with an empty batch when nothing came within
    ``poll_timeout_ms``, for work driven by time).  Rides out an unreachable broker;
    raises what ``process`` raises."""
    assert batch_records_max > 0
    while not stop.is_set():
        try:
            batch = await consumer.getmany(
                timeout_ms=poll_timeout_ms, max_records=batch_records_max
            )
        except BrokerUnavailableError as error:
            log.warning("broker unreachable, still trying", group=consumer.group, error=str(error))
            continue
        await process(batch)
