"""The validate stage: ``iot.raw`` -> ``iot.valid`` (decoded, upgraded, deduplicated)
or ``iot.dlq`` (the original bytes, with why).

Members of the consumer group ``iot-validate`` share ``iot.raw``'s partitions
(run two or more processes; a member killed with SIGKILL loses its partitions
to the others after the session timeout, and they re-read from its last
commit).  For each batch:

* every record's value is decoded by schema.decode_payload (one msgspec call);
* a valid reading whose (device, seq) was seen recently is a duplicate: counted,
  not forwarded.  The memory is per device and bounded
  (``seq_memory_per_device_max`` recent sequence numbers), so it covers
  re-sent readings, not ones repeated after many minutes;
* valid readings go to ``iot.valid`` as the JSON of schema.Reading, keyed by
  device; the others go to ``iot.dlq`` with the record's original bytes as the
  value and headers naming the reason, a one-line detail and the source topic,
  partition and offset.  The ``iot-received-ns`` header travels on both;
* once both outputs are acknowledged, the batch's offsets are committed
  (consume.py: at-least-once; a re-read batch may forward a reading again,
  which aggregate and sink absorb).

Invalid payloads are dead-lettered every time they arrive (a re-sent malformed
payload has no trustworthy (device, seq) to deduplicate on).
"""

from __future__ import annotations

from typing import Any, Final

import click
import structlog
import trio
from prometheus_client import CollectorRegistry, Counter

from client import Consumer, Producer, Record, TopicPartition
from examples.iot import names, stage
from examples.iot.consume import (
    BATCH_RECORDS_MAX_DEFAULT,
    Batch,
    commit_offsets,
    consume_loop,
    header_value,
    next_offsets,
    send,
    send_pending,
    wait_acknowledged,
)
from examples.iot.schema import Reading, Rejection, decode_payload, reading_encoder
from examples.iot.windows import RecentSeqs

log = structlog.get_logger("examples.iot.validate")

# Recent sequence numbers remembered per device for deduplication: at one reading a
# second, about a quarter of an hour (re-sends come within seconds).
SEQ_MEMORY_PER_DEVICE_MAX: Final = 1024


class ValidateMetrics:
    """The stage's counters (incremented once per batch)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        records = Counter(
            "iot_validate_records_total",
            "Raw readings validated, by result.",
            ["result"],
            registry=registry,
        )
        self.valid = records.labels(result="valid")
        self.invalid = records.labels(result="invalid")
        self.duplicate = records.labels(result="duplicate")
        dlq = Counter(
            "iot_dlq_records_total",
            "Records dead-lettered to iot.dlq, by reason.",
            ["reason"],
            registry=registry,
        )
        self.dlq = {reason: dlq.labels(reason=reason) for reason in names.DLQ_REASONS}


class Validator:
    """Sorts a batch of raw records into valid, duplicate and invalid ones, and
    enqueues the outputs (the stage's logic, apart from the group loop)."""

    def __init__(
        self, producer: Producer, seq_memory_per_device_max: int = SEQ_MEMORY_PER_DEVICE_MAX
    ) -> None:
        self.producer = producer
        self.seq_memory_per_device_max = seq_memory_per_device_max
        self.seen: dict[str, RecentSeqs] = {}  # device -> recent seqs forwarded
        self.valid = 0
        self.duplicates = 0
        self.invalid: dict[str, int] = dict.fromkeys(names.DLQ_REASONS, 0)

    async def process(self, tp: TopicPartition, records: list[Record[Any]]) -> None:
        """Enqueue the outputs of ``records`` (of ``tp``, in offset order)."""
        producer = self.producer
        seen = self.seen
        pending: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]] = []
        source_partition = str(tp.partition).encode()
        source_topic = tp.topic.encode()
        for record in records:
            key = record.key
            value = record.value if record.value is not None else b""
            key_device = key.decode("utf-8", "replace") if key is not None else None
            result = decode_payload(value, key_device)
            received = header_value(record, names.RECEIVED_NS_HEADER)
            if type(result) is Reading:
                recent = seen.get(result.device)
                if recent is None:
                    recent = seen[result.device] = RecentSeqs(self.seq_memory_per_device_max)
                if result.seq in recent:
                    self.duplicates += 1
                    continue
                recent.add(result.seq)
                self.valid += 1
                headers = None if received is None else [(names.RECEIVED_NS_HEADER, received)]
                send(
                    producer,
                    names.VALID_TOPIC,
                    reading_encoder.encode(result),
                    key,
                    headers,
                    pending,
                )
                continue
            assert type(result) is Rejection
            self.invalid[result.reason] += 1
            dlq_headers = [
                (names.DLQ_REASON_HEADER, result.reason.encode()),
                (names.DLQ_DETAIL_HEADER, result.detail.encode()),
                (names.SOURCE_TOPIC_HEADER, source_topic),
                (names.SOURCE_PARTITION_HEADER, source_partition),
                (names.SOURCE_OFFSET_HEADER, str(record.offset).encode()),
            ]
            if received is not None:
                dlq_headers.append((names.RECEIVED_NS_HEADER, received))
            send(producer, names.DLQ_TOPIC, value, key, dlq_headers, pending)
        if pending:
            await send_pending(producer, pending)


async def run(
    bootstrap: str,
    stop: trio.Event,
    *,
    registry: CollectorRegistry | None = None,
    member_name: str = "validate",
    session_timeout_ms: int | None = None,
    batch_records_max: int = BATCH_RECORDS_MAX_DEFAULT,
) -> None:
    """Validate until ``stop`` is set, then return after committing the batch in
    hand.  Raises OutputNotAcknowledgedError when outputs fail for good."""
    metrics = ValidateMetrics(registry if registry is not None else CollectorRegistry())
    async with (
        Producer(bootstrap, client_id=f"iot-{member_name}", linger_ms=2) as producer,
        Consumer(
            bootstrap,
            client_id=f"iot-{member_name}",
            group=names.VALIDATE_GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
        ) as consumer,
    ):
        if registry is not None:
            producer.register_metrics(registry, {"client": member_name})
            consumer.register_metrics(registry, {"client": member_name})
        await producer.partitions_for(names.VALID_TOPIC)
        await producer.partitions_for(names.DLQ_TOPIC)
        await consumer.subscribe([names.RAW_TOPIC])
        validator = Validator(producer)

        async def process(batch: Batch) -> None:
            if not batch:
                return
            before_valid, before_dup = validator.valid, validator.duplicates
            before_invalid = dict(validator.invalid)
            for tp, records in batch.items():
                await validator.process(tp, records)
            await wait_acknowledged(producer)
            await commit_offsets(consumer, next_offsets(batch))
            metrics.valid.inc(validator.valid - before_valid)
            metrics.duplicate.inc(validator.duplicates - before_dup)
            invalid = 0
            for reason, count in validator.invalid.items():
                if count != before_invalid[reason]:
                    metrics.dlq[reason].inc(count - before_invalid[reason])
                    invalid += count - before_invalid[reason]
            metrics.invalid.inc(invalid)

        log.info("validating", member=member_name, bootstrap=bootstrap)
        await consume_loop(consumer, process, stop, batch_records_max=batch_records_max)


@click.command("validate")
@stage.bootstrap_option
@click.option("--member-name", default="validate", show_default=True, help="This member's name.")
@click.option(
    "--session-timeout-ms",
    type=int,
    default=None,
    help="The group session timeout to ask for (default: the broker's, 10 s): how soon "
    "a killed member's partitions move to the others.",
)
@stage.metrics_port_option
def command(
    bootstrap: str, member_name: str, session_timeout_ms: int | None, metrics_port: int
) -> None:
    """iot.raw -> iot.valid (decoded, upgraded, deduplicated) or iot.dlq."""
    registry = CollectorRegistry()
    stage.serve_metrics(registry, port=metrics_port)
    stage.run_stage(
        lambda stop: run(
            bootstrap,
            stop,
            registry=registry,
            member_name=member_name,
            session_timeout_ms=session_timeout_ms,
        )
    )
