"""Unit tests for client/cli/perf_stats.py: histogram accuracy, pacing and summaries."""

from __future__ import annotations

import json
import random

import msgspec
import pytest

from client.cli.perf_stats import (
    LatencyHistogram,
    pacing_delay_s,
    summarize,
    summary_line,
)


def test_empty_histogram_reports_zero() -> None:
    """Proves percentiles of an empty histogram are 0 rather than an error."""
    assert LatencyHistogram().percentile_us(0.99) == 0.0


def test_percentiles_within_bucket_precision() -> None:
    """Proves each percentile is within ~1.1 % of the exact value on random data."""
    rng = random.Random(7)
    values = [rng.lognormvariate(7, 1.5) for _ in range(20_000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    ordered = sorted(values)
    for fraction in (0.5, 0.95, 0.99):
        exact = ordered[int(fraction * len(ordered)) - 1]
        assert histogram.percentile_us(fraction) == pytest.approx(exact, rel=0.012)
    assert histogram.percentile_us(1.0) == max(values) == histogram.max_us


def test_weighted_records_and_clamping() -> None:
    """Proves count= weights observations and negative latencies count as zero."""
    histogram = LatencyHistogram()
    histogram.record(100.0, count=99)
    histogram.record(10_000.0)
    histogram.record(-5.0)
    assert histogram.count == 101
    assert histogram.percentile_us(0.5) == pytest.approx(100.0, rel=0.012)
    assert histogram.percentile_us(1.0) == 10_000.0


def test_huge_latencies_do_not_overflow_buckets() -> None:
    """Proves absurd values land in the last bucket without an IndexError."""
    histogram = LatencyHistogram()
    histogram.record(1e30)
    assert histogram.percentile_us(0.5) == 1e30


def test_pacing() -> None:
    """Proves the limiter waits exactly long enough and never without a rate."""
    assert pacing_delay_s(100, 0.5, None) == 0.0
    assert pacing_delay_s(100, 0.5, 100.0) == pytest.approx(0.5)
    assert pacing_delay_s(100, 2.0, 100.0) == 0.0


def test_summary_numbers_and_json() -> None:
    """Proves rates, MB/s and latency fields in the JSON summary and the line."""
    histogram = LatencyHistogram()
    histogram.record(2_000.0, count=10)
    summary = summarize(
        mode="produce",
        topic="t",
        records=10_000,
        total_bytes=5_000_000,
        elapsed_s=2.0,
        latency=histogram,
    )
    document = json.loads(msgspec.json.encode(summary))
    assert document["records_per_s"] == 5000.0
    assert document["mb_per_s"] == 2.5
    assert document["latency_ms"]["max"] == 2.0
    assert set(document["latency_ms"]) == {"p50", "p95", "p99", "max"}
    line = summary_line(summary)
    assert "5,000 records/s" in line and "2.50 MB/s" in line and "p99" in line
    assert "\n" not in line
