"""The SDK's metrics: counters per batch and per answer, snapshots, the prometheus collector."""

from __future__ import annotations

import random

import msgspec
import pytest

from client.accumulator import RecordAccumulator
from client.consumer import Consumer
from client.errors import NotLeaderError, RequestTimedOutError
from client.fetcher import Fetcher
from client.metrics import (
    LATENCY_BUCKETS_S,
    ConsumerMetrics,
    LatencyHistogram,
    ProducerMetrics,
    consumer_metrics,
    producer_metrics,
)
from client.producer import Producer
from client.protocol.connection import IncomingResponse
from client.protocol.messages import FetchPartitionResponse, FetchResponse, FetchTopicResponse
from client.records.builder import build_batch
from client.records.decoder import RecordDecoder
from client.records.header import BatchHeader, byte_view
from client.sender import Sender
from client.types import OffsetReset, TopicPartition

TP = TopicPartition("orders", 0)
TP1 = TopicPartition("orders", 1)


def make_sender(clock: list[int]) -> tuple[RecordAccumulator, Sender]:
    accumulator = RecordAccumulator(batch_bytes_max=10_000, linger_ms=0, buffer_bytes_max=1 << 20)
    sender = Sender(
        accumulator,
        acks=1,
        request_timeout_ms=1_000,
        request_bytes_max=1 << 20,
        retries_max=5,
        delivery_timeout_ms=60_000,
        retry_backoff_ms=10,
        retry_backoff_max_ms=100,
        clock_ms=lambda: clock[0],
        rng=random.Random(1),
        on_woken=lambda: None,
    )
    return accumulator, sender


def make_fetcher() -> Fetcher:
    return Fetcher(
        RecordDecoder(),
        max_wait_ms=500,
        min_bytes=1,
        max_bytes=1 << 24,
        partition_bytes_max=1 << 20,
        auto_offset_reset=OffsetReset.EARLIEST,
    )


def batch_at(base_offset: int, count: int) -> bytes:
    data = build_batch([b"v" * 10 for _ in range(count)], timestamp_ms=1_000)
    BatchHeader.parse(byte_view(data), 0).stamp(base_offset)
    return bytes(data)


def answer(parts: dict[TopicPartition, bytes | int], high_watermark: int) -> IncomingResponse:
    results: list[FetchPartitionResponse] = []
    payload = bytearray()
    for tp, part in parts.items():
        if isinstance(part, int):
            results.append(FetchPartitionResponse(tp.partition, error_code=part))
        else:
            results.append(
                FetchPartitionResponse(
                    tp.partition, high_watermark=high_watermark, records_bytes=len(part)
                )
            )
            payload += part
    body = FetchResponse([FetchTopicResponse("orders", results)])
    return IncomingResponse(1, 1, body, memoryview(payload))


def test_latency_histogram_buckets_are_upper_bounds_and_cumulative() -> None:
    """Proves an observation lands in the first bucket whose bound is at or above it
    (Prometheus's ``le``), the snapshot is cumulative, and quantile picks the bound."""
    histogram = LatencyHistogram()
    for seconds in (0.0005, 0.0007, 0.002, 0.002, 30.0):
        histogram.observe(seconds)
    histogram.check_invariants()
    snapshot = histogram.snapshot()
    assert snapshot.bounds_s == list(LATENCY_BUCKETS_S)
    assert snapshot.cumulative_counts[:3] == [1, 2, 4]  # 0.5 ms, 1 ms, 2.5 ms
    assert snapshot.cumulative_counts[-1] == 4  # 30 s is only in +Inf
    assert (snapshot.count, snapshot.sum_s) == (5, pytest.approx(30.0052))
    assert snapshot.quantile(0.5) == 0.0025
    assert snapshot.quantile(0.99) == float("inf")
    assert LatencyHistogram().snapshot().quantile(0.5) is None


def test_completed_batches_count_records_batches_and_bytes() -> None:
    """Proves an acknowledged batch adds its records, itself and its built bytes to the
    producer's counters once, and the snapshot shows the buffer in use."""
    accumulator = RecordAccumulator(batch_bytes_max=10_000, linger_ms=0, buffer_bytes_max=1 << 20)
    for index in range(7):
        accumulator.append("t", 0, b"x" * 20, None, (), 1_000, now_ms=1_000 + index)
    (batch,) = accumulator.drain(2_000)
    size = len(accumulator.build(batch))
    accumulator.append("t", 1, b"y", None, (), 1_000, now_ms=2_000)
    accumulator.complete(batch, base_offset=0)
    snapshot = producer_metrics(accumulator)
    assert (snapshot.records_sent, snapshot.batches_sent, snapshot.bytes_sent) == (7, 1, size)
    assert snapshot.batches_pending == 1  # the batch of partition 1
    assert 0 < snapshot.buffer_bytes_used < snapshot.buffer_bytes_max == 1 << 20
    accumulator.check_invariants()


def test_retries_errors_and_failures_are_counted_per_batch() -> None:
    """Proves a retriable error counts a retry and its code, and an error that fails a
    batch for good counts its code, the batch and its records as failed."""
    clock = [1_000]
    accumulator, sender = make_sender(clock)
    for _ in range(3):
        accumulator.append("t", 0, b"x", None, (), 1_000, now_ms=1_000)
    (batch,) = accumulator.drain(1_000)
    sender._handle_error(batch, NotLeaderError("moved"))
    assert sender._stale_topics == {"t"}
    clock[0] = 2_000
    (batch,) = accumulator.drain(2_000)
    sender._handle_error(batch, RequestTimedOutError("no"))  # retriable: retried again
    (batch,) = accumulator.drain(3_000)
    clock[0] = 100_000  # past the delivery deadline: fails for good
    sender._handle_error(batch, NotLeaderError("moved"))
    snapshot = producer_metrics(accumulator)
    assert snapshot.retries == 2
    assert snapshot.errors_by_code == {"NOT_LEADER": 2, "REQUEST_TIMED_OUT": 1}
    assert (snapshot.batches_failed, snapshot.records_failed, snapshot.records_sent) == (1, 3, 0)
    accumulator.check_invariants()


def test_fetch_answers_count_records_bytes_errors_and_lag_per_partition() -> None:
    """Proves a fetch answer adds its decoded records, its bytes and its partition
    errors to the consumer's counters, and lag is high watermark minus position."""
    fetcher = make_fetcher()
    fetcher.assign([TP, TP1])
    fetcher.seek(TP, 10, offset=True)
    fetcher.seek(TP1, 0, offset=True)
    data = batch_at(10, 4)
    _, seek_counts = fetcher.fetch_request([TP, TP1])
    fetcher.apply(answer({TP: data, TP1: 26}, high_watermark=50), seek_counts)  # 26: NOT_LEADER
    snapshot = consumer_metrics(fetcher)
    assert (snapshot.records_fetched, snapshot.bytes_fetched, snapshot.fetch_responses) == (
        4,
        len(data),
        1,
    )
    assert snapshot.errors_by_code == {"NOT_LEADER": 1}
    by_partition = {(row.topic, row.partition): row for row in snapshot.partitions}
    row = by_partition[TP]
    assert (row.position, row.high_watermark, row.lag) == (10, 50, 40)
    assert by_partition[TP1].lag == -1  # no high watermark yet
    # The application takes two records: the position, and so the lag, moves.
    fetcher.states[TP].head = 2
    assert consumer_metrics(fetcher).partitions[0].lag == 38
    fetcher.check_invariants()


def test_snapshots_are_frozen_and_encode_as_json() -> None:
    """Proves the snapshots are immutable and round-trip through msgspec JSON (for
    scripts that log them)."""
    producer = Producer("127.0.0.1:1")
    snapshot = producer.metrics()
    with pytest.raises(AttributeError):
        snapshot.records_sent = 5  # type: ignore[misc]
    decoded = msgspec.json.decode(msgspec.json.encode(snapshot), type=ProducerMetrics)
    assert decoded == snapshot
    consumer_snapshot = Consumer("127.0.0.1:1").metrics()
    assert msgspec.json.decode(msgspec.json.encode(consumer_snapshot), type=ConsumerMetrics) == (
        consumer_snapshot
    )


def test_register_metrics_exposes_the_snapshot_in_the_applications_registry() -> None:
    """Proves register_metrics adds a collector whose scrape shows the current counters
    under distributary_client_* with the given labels, two clients side by side."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    registry = prometheus_client.CollectorRegistry()
    producer = Producer("127.0.0.1:1")
    producer.register_metrics(registry, {"client": "ingest"})
    consumer = Consumer("127.0.0.1:1")
    consumer.register_metrics(registry, {"client": "reader"})
    counters = producer._accumulator.counters
    counters.records_sent = 12
    counters.count_error("NOT_LEADER")
    counters.request_latency.observe(0.003)
    consumer._fetcher.counters.records_fetched = 9
    text = prometheus_client.generate_latest(registry).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    ingest = (("client", "ingest"),)
    assert samples[("distributary_client_producer_records_sent_total", ingest)] == 12
    key = (
        "distributary_client_producer_errors_total",
        (("client", "ingest"), ("code", "NOT_LEADER")),
    )
    assert samples[key] == 1
    bucket = ("client", "ingest"), ("le", "0.005")
    assert samples[("distributary_client_producer_request_duration_seconds_bucket", bucket)] == 1
    assert samples[("distributary_client_producer_request_duration_seconds_count", ingest)] == 1
    reader = (("client", "reader"),)
    assert samples[("distributary_client_consumer_records_fetched_total", reader)] == 9


def test_a_snapshot_taken_mid_handout_falls_back_to_the_fetch_position() -> None:
    """Proves consumer_metrics does not raise when it reads a buffer the event loop is
    emptying at that moment (a scrape from prometheus-client's server thread): the
    partition's fetch position stands in for that sample."""
    fetcher = make_fetcher()
    fetcher.assign([TP])
    fetcher.seek(TP, 13, offset=True)
    state = fetcher.states[TP]
    state.high_watermark = 20
    state.chunks.append([])  # as seen half-way through taking the last records
    (row,) = consumer_metrics(fetcher).partitions
    assert (row.position, row.lag) == (13, 7)
