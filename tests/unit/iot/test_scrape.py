"""examples/iot/scrape.py: the kept series of an exposition, series names and sums,
histogram quantiles as Prometheus computes them, and bucket deltas across restarts."""

from __future__ import annotations

import math

import pytest

from examples.iot.scrape import (
    bucket_delta,
    histogram_buckets,
    histogram_quantile,
    parse_labels,
    parse_metrics,
    series_name,
    series_sum,
)

EXPOSITION = """\
# HELP iot_dlq_records_total Dead letters.
# TYPE iot_dlq_records_total counter
iot_dlq_records_total{reason="malformed"} 3.0
iot_dlq_records_total{reason="out_of_range"} 4.0
iot_dlq_records_created{reason="malformed"} 1.7e9
# HELP iot_e2e_latency_seconds Latency.
# TYPE iot_e2e_latency_seconds histogram
iot_e2e_latency_seconds_bucket{le="0.1"} 50.0
iot_e2e_latency_seconds_bucket{le="1.0"} 90.0
iot_e2e_latency_seconds_bucket{le="+Inf"} 100.0
iot_e2e_latency_seconds_count 100.0
iot_e2e_latency_seconds_sum 20.0
# HELP process_cpu_seconds_total CPU.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.5
# HELP distributary_consumer_group_lag Lag.
# TYPE distributary_consumer_group_lag gauge
distributary_consumer_group_lag{group="iot-sink",partition="0",topic="iot.valid"} 7.0
distributary_consumer_group_lag{group="iot-sink",partition="1",topic="iot.valid"} 5.0
distributary_consumer_group_lag{group="other",partition="0",topic="x"} 100.0
"""


def test_parse_keeps_pipeline_and_lag_series_only() -> None:
    """Proves the parser keeps iot_* and group lag series (not _created, not process_*)."""
    samples = parse_metrics(EXPOSITION)
    assert samples['iot_dlq_records_total{reason="malformed"}'] == 3.0
    assert not any("created" in name or name.startswith("process_") for name in samples)
    assert 'iot_e2e_latency_seconds_bucket{le="+Inf"}' in samples


def test_series_names_round_trip() -> None:
    """Proves series_name sorts labels and parse_labels reverses it."""
    name = series_name("x_total", {"b": "2", "a": "1"})
    assert name == 'x_total{a="1",b="2"}'
    assert parse_labels(name) == ("x_total", {"a": "1", "b": "2"})
    assert parse_labels("y") == ("y", {})


def test_series_sum_filters_by_labels() -> None:
    """Proves series_sum adds the series carrying the given labels and no others."""
    samples = parse_metrics(EXPOSITION)
    assert series_sum(samples, "iot_dlq_records_total") == 7.0
    assert series_sum(samples, "iot_dlq_records_total", reason="out_of_range") == 4.0
    assert series_sum(samples, "distributary_consumer_group_lag", group="iot-sink") == 12.0
    assert series_sum(None, "iot_dlq_records_total") == 0.0


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    """Proves quantiles interpolate linearly inside the bucket holding the rank, and
    a rank in the +Inf bucket answers the highest finite bound."""
    buckets = histogram_buckets(parse_metrics(EXPOSITION), "iot_e2e_latency_seconds")
    assert buckets == [(0.1, 50.0), (1.0, 90.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.1 + 0.9 * 20 / 40)
    assert histogram_quantile(0.99, buckets) == 1.0
    assert histogram_quantile(0.5, []) is None


def test_bucket_delta_counts_from_zero_after_a_restart() -> None:
    """Proves the observations between two scrapes are the difference, and a
    process that restarted (counts went down) counts from zero."""
    older = [(0.1, 10.0), (math.inf, 20.0)]
    newer = [(0.1, 15.0), (math.inf, 30.0)]
    assert bucket_delta(newer, older) == [(0.1, 5.0), (math.inf, 10.0)]
    restarted = [(0.1, 1.0), (math.inf, 2.0)]
    assert bucket_delta(restarted, older) == restarted
