"""The SDK's own metrics: plain counters inside, frozen snapshots outside.

The producer and the consumer count what they do in plain integers, updated
once per batch or per response (never per record): :class:`ProducerCounters`
lives in the producer's accumulator and sender, :class:`ConsumerCounters` in
the consumer's fetcher, and a :class:`LatencyHistogram` takes one observation
per Produce response.  ``Producer.metrics()`` and ``Consumer.metrics()`` copy
them into the frozen structs below (:class:`ProducerMetrics`,
:class:`ConsumerMetrics`), so an application can read, log or JSON-encode them
(``msgspec.json.encode(producer.metrics())``) without holding a live object.

``register_metrics(registry)`` on either client adds a prometheus-client
collector to a registry the application owns; that collector takes a snapshot
at scrape time (client/metrics_prometheus.py, imported only then: the SDK does
not need prometheus-client otherwise).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Final

import msgspec

from client.errors import ErrorCode

if TYPE_CHECKING:
    from client.accumulator import RecordAccumulator
    from client.fetcher import Fetcher

# Upper bounds (seconds) of the request-latency buckets: 0.5 ms to 10 s on a
# x2 / x2.5 ladder, so a loopback produce (~1 ms) and a broker stall (seconds)
# both land in a bucket of their own.
LATENCY_BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    """Request durations in fixed buckets (plain ints; one ``observe`` per request)."""

    __slots__ = ("count", "counts", "sum_s")

    def __init__(self) -> None:
        # counts[i]: observations in (LATENCY_BUCKETS_S[i-1], LATENCY_BUCKETS_S[i]];
        # the last slot holds those above the largest bound.
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.count = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.count += 1
        self.sum_s += seconds

    def snapshot(self) -> LatencySnapshot:
        cumulative: list[int] = []
        total = 0
        for count in self.counts[:-1]:
            total += count
            cumulative.append(total)
        return LatencySnapshot(
            bounds_s=list(LATENCY_BUCKETS_S),
            cumulative_counts=cumulative,
            count=self.count,
            sum_s=self.sum_s,
        )

    def check_invariants(self) -> None:
        assert sum(self.counts) == self.count, (self.counts, self.count)
        assert self.sum_s >= 0.0


class LatencySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A histogram as Prometheus shows one: ``cumulative_counts[i]`` requests
    took at most ``bounds_s[i]`` seconds; ``count`` is every request (the
    ``+Inf`` bucket) and ``sum_s`` their total duration."""

    bounds_s: list[float]
    cumulative_counts: list[int]
    count: int
    sum_s: float

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (0 < q <= 1),
        the same coarse answer Prometheus's ``histogram_quantile`` gives before
        interpolating; None with no observation, ``inf`` above the last bound."""
        assert 0.0 < q <= 1.0, q
        if self.count == 0:
            return None
        rank = q * self.count
        for bound, cumulative in zip(self.bounds_s, self.cumulative_counts, strict=True):
            if cumulative >= rank:
                return bound
        return float("inf")


def error_code_name(code: int) -> str:
    """The name of a wire error code ("NOT_LEADER"), or its number when unknown."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


class ProducerCounters:
    """What a producer has done so far (plain ints, updated per batch/response)."""

    __slots__ = (
        "batches_failed",
        "batches_sent",
        "bytes_sent",
        "errors_by_code",
        "records_failed",
        "records_sent",
        "request_latency",
        "requests_sent",
        "retries",
    )

    def __init__(self) -> None:
        self.records_sent = 0  # acknowledged (acks=none: written)
        self.batches_sent = 0
        self.bytes_sent = 0  # batch bytes as sent (after compression)
        self.requests_sent = 0  # Produce requests written, retries included
        self.retries = 0  # batches put back to be sent again
        self.records_failed = 0
        self.batches_failed = 0
        self.errors_by_code: dict[str, int] = {}  # per batch that met the error
        self.request_latency = LatencyHistogram()

    def count_error(self, code_name: str) -> None:
        self.errors_by_code[code_name] = self.errors_by_code.get(code_name, 0) + 1


class ProducerMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """A producer's counters at one moment (``Producer.metrics()``).

    Counts since the producer was created: ``records_sent`` / ``batches_sent`` /
    ``bytes_sent`` acknowledged by the broker (with acks "none": written);
    ``requests_sent`` Produce requests written (retries included); ``retries``
    batches sent again after a retriable error; ``records_failed`` /
    ``batches_failed`` failed for good; ``errors_by_code`` the errors batches
    met (retried or not), by wire code name.  ``request_latency``: Produce
    request to response, in seconds.  Now: ``buffer_bytes_used`` of
    ``buffer_bytes_max`` held by unacknowledged records, ``batches_pending``
    not yet acknowledged or failed."""

    records_sent: int
    batches_sent: int
    bytes_sent: int
    requests_sent: int
    retries: int
    records_failed: int
    batches_failed: int
    errors_by_code: dict[str, int]
    request_latency: LatencySnapshot
    buffer_bytes_used: int
    buffer_bytes_max: int
    batches_pending: int


class ConsumerCounters:
    """What a consumer's fetcher has done so far (plain ints, updated per answer)."""

    __slots__ = ("bytes_fetched", "errors_by_code", "fetch_responses", "records_fetched")

    def __init__(self) -> None:
        self.records_fetched = 0  # decoded and buffered for the application
        self.bytes_fetched = 0  # record-batch bytes received
        self.fetch_responses = 0  # Fetch answers applied (stream answers included)
        self.errors_by_code: dict[str, int] = {}  # partition errors in answers

    def count_error(self, code_name: str) -> None:
        self.errors_by_code[code_name] = self.errors_by_code.get(code_name, 0) + 1


class PartitionMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One assigned partition as the consumer sees it: ``position`` the next
    offset it hands out (-1: not resolved yet), ``high_watermark`` from the
    last fetch answer (-1: none yet), and ``lag`` = high_watermark - position
    (-1 while either is unknown)."""

    topic: str
    partition: int
    position: int
    high_watermark: int
    lag: int


class ConsumerMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """A consumer's counters at one moment (``Consumer.metrics()``): counts
    since it was created, and its assigned partitions now (sorted)."""

    records_fetched: int
    bytes_fetched: int
    fetch_responses: int
    errors_by_code: dict[str, int]
    partitions: list[PartitionMetrics]


def producer_metrics(accumulator: RecordAccumulator) -> ProducerMetrics:
    """The snapshot of a producer's counters and its buffer now."""
    counters = accumulator.counters
    return ProducerMetrics(
        records_sent=counters.records_sent,
        batches_sent=counters.batches_sent,
        bytes_sent=counters.bytes_sent,
        requests_sent=counters.requests_sent,
        retries=counters.retries,
        records_failed=counters.records_failed,
        batches_failed=counters.batches_failed,
        errors_by_code=dict(counters.errors_by_code),
        request_latency=counters.request_latency.snapshot(),
        buffer_bytes_used=accumulator.buffer_bytes_used,
        buffer_bytes_max=accumulator.buffer_bytes_max,
        batches_pending=accumulator.pending_count,
    )


def consumer_metrics(fetcher: Fetcher) -> ConsumerMetrics:
    """The snapshot of a consumer's counters and of its assigned partitions."""
    counters = fetcher.counters
    rows = []
    for (topic, partition), state in sorted(fetcher.states.items()):
        high_watermark = state.high_watermark
        try:
            position = state.position()
        except IndexError:
            # A scrape on another thread (register_metrics under prometheus-client's
            # HTTP server) read the buffer while the event loop handed records out:
            # the fetch position is as good for one sample.
            position = state.fetch_offset
        known = position is not None and position >= 0 and high_watermark >= 0
        rows.append(
            PartitionMetrics(
                topic=topic,
                partition=partition,
                position=-1 if position is None else position,
                high_watermark=high_watermark,
                lag=max(0, high_watermark - position) if known and position is not None else -1,
            )
        )
    return ConsumerMetrics(
        records_fetched=counters.records_fetched,
        bytes_fetched=counters.bytes_fetched,
        fetch_responses=counters.fetch_responses,
        errors_by_code=dict(counters.errors_by_code),
        partitions=rows,
    )
