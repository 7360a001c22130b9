"""The SDK's metrics as a prometheus-client collector (``register_metrics``).

Imported only by ``Producer.register_metrics`` / ``Consumer.register_metrics``:
the SDK itself never needs prometheus-client.  The collector holds the client
and, at each scrape, turns one ``metrics()`` snapshot (client/metrics.py) into
metric families -- nothing is updated on the client's hot path.  Names follow
Prometheus practice (base units, ``_total`` counters) under
``distributary_client_``; every series carries the constant ``labels`` given to
``register_metrics`` (e.g. ``{"client": "ingest"}``), so two clients can share
one registry.  The scrape runs on whatever thread serves the registry: a
snapshot is a handful of integer reads and dictionary copies (atomic under
the GIL), harmless mid-update: at worst one batch behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from client.metrics import ConsumerMetrics, LatencySnapshot, ProducerMetrics

PREFIX = "distributary_client_"


class _Families:
    """Builds metric families that all carry the same constant labels."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self.names = list(labels)
        self.values = [labels[name] for name in self.names]

    def counter(self, name: str, documentation: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, documentation, labels=self.names)
        family.add_metric(self.values, value)
        return family

    def gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(PREFIX + name, documentation, labels=self.names)
        family.add_metric(self.values, value)
        return family

    def errors(self, name: str, documentation: str, by_code: Mapping[str, int]) -> Metric:
        family = CounterMetricFamily(PREFIX + name, documentation, labels=[*self.names, "code"])
        for code, count in sorted(by_code.items()):
            family.add_metric([*self.values, code], count)
        return family

    def histogram(self, name: str, documentation: str, latency: LatencySnapshot) -> Metric:
        family = HistogramMetricFamily(PREFIX + name, documentation, labels=self.names)
        buckets = [
            (repr(bound), float(count))
            for bound, count in zip(latency.bounds_s, latency.cumulative_counts, strict=True)
        ]
        buckets.append(("+Inf", float(latency.count)))
        family.add_metric(self.values, buckets, latency.sum_s)
        return family


class ProducerCollector(Collector):
    """A producer's snapshot as metric families, taken at each scrape."""

    def __init__(self, metrics: Callable[[], ProducerMetrics], labels: Mapping[str, str]) -> None:
        self._metrics = metrics
        self._families = _Families(labels)

    def collect(self) -> Iterator[Metric]:
        snapshot = self._metrics()
        families = self._families
        yield families.counter(
            "producer_records_sent", "Records acknowledged by the broker.", snapshot.records_sent
        )
        yield families.counter(
            "producer_batches_sent", "Batches acknowledged by the broker.", snapshot.batches_sent
        )
        yield families.counter(
            "producer_sent_bytes", "Batch bytes acknowledged by the broker.", snapshot.bytes_sent
        )
        yield families.counter(
            "producer_requests",
            "Produce requests written, retries included.",
            snapshot.requests_sent,
        )
        yield families.counter(
            "producer_retries", "Batches sent again after a retriable error.", snapshot.retries
        )
        yield families.counter(
            "producer_records_failed", "Records failed for good.", snapshot.records_failed
        )
        yield families.errors(
            "producer_errors", "Errors met by batches, by wire code.", snapshot.errors_by_code
        )
        yield families.histogram(
            "producer_request_duration_seconds",
            "Produce request to response.",
            snapshot.request_latency,
        )
        yield families.gauge(
            "producer_buffer_used_bytes",
            "Bytes of unacknowledged records held.",
            snapshot.buffer_bytes_used,
        )
        yield families.gauge(
            "producer_buffer_limit_bytes",
            "The producer's buffer_bytes_max.",
            snapshot.buffer_bytes_max,
        )


class ConsumerCollector(Collector):
    """A consumer's snapshot as metric families, taken at each scrape."""

    def __init__(self, metrics: Callable[[], ConsumerMetrics], labels: Mapping[str, str]) -> None:
        self._metrics = metrics
        self._families = _Families(labels)

    def collect(self) -> Iterator[Metric]:
        snapshot = self._metrics()
        families = self._families
        yield families.counter(
            "consumer_records_fetched", "Records fetched and decoded.", snapshot.records_fetched
        )
        yield families.counter(
            "consumer_fetched_bytes", "Record-batch bytes fetched.", snapshot.bytes_fetched
        )
        yield families.counter(
            "consumer_fetch_responses", "Fetch answers applied.", snapshot.fetch_responses
        )
        yield families.errors(
            "consumer_errors",
            "Partition errors in fetch answers, by wire code.",
            snapshot.errors_by_code,
        )
        names = [*families.names, "topic", "partition"]
        lag = GaugeMetricFamily(
            PREFIX + "consumer_lag",
            "High watermark minus position, per assigned partition (records).",
            labels=names,
        )
        for row in snapshot.partitions:
            if row.lag >= 0:
                lag.add_metric([*families.values, row.topic, str(row.partition)], row.lag)
        yield lag
