"""Numbers for ``perf produce`` / ``perf consume``: a latency histogram, pacing, summaries.

:class:`LatencyHistogram` keeps bounded memory however many records run: a
latency in microseconds goes into a log-scaled bucket (64 buckets per power of
two, so a reported percentile is within about 1.1 % of the true value); the
maximum is kept exactly.  :func:`pacing_delay_s` is the ``--rate`` limiter: how
long to sleep before sending more so that ``sent`` records never run ahead of
``rate * elapsed``.  Everything here is pure (no clock, no I/O).
"""

from __future__ import annotations

import math
from typing import Final

import msgspec

BUCKETS_PER_DOUBLING: Final = 64
BUCKET_COUNT_MAX: Final = 64 * BUCKETS_PER_DOUBLING  # up to 2**64 µs: no overflow


class LatencyHistogram:
    """Latencies in microseconds; percentiles from log-scaled buckets."""

    __slots__ = ("_counts", "count", "max_us", "total_us")

    def __init__(self) -> None:
        self._counts = [0] * BUCKET_COUNT_MAX
        self.count = 0
        self.max_us = 0.0
        self.total_us = 0.0

    @staticmethod
    def bucket_of(latency_us: float) -> int:
        if latency_us < 1.0:
            return 0
        return min(BUCKET_COUNT_MAX - 1, int(math.log2(latency_us) * BUCKETS_PER_DOUBLING) + 1)

    @staticmethod
    def upper_bound_us(bucket: int) -> float:
        """The largest latency that lands in ``bucket``."""
        return 1.0 if bucket == 0 else 2.0 ** (bucket / BUCKETS_PER_DOUBLING)

    def record(self, latency_us: float, count: int = 1) -> None:
        """Add ``count`` observations of ``latency_us`` (negative values count as 0)."""
        assert count >= 0
        latency_us = max(0.0, latency_us)
        self._counts[self.bucket_of(latency_us)] += count
        self.count += count
        self.total_us += latency_us * count
        if latency_us > self.max_us:
            self.max_us = latency_us

    def percentile_us(self, fraction: float) -> float:
        """The latency at or below which ``fraction`` (0 < f <= 1) of observations lie.

        Never more than the exact maximum; 0 when nothing was recorded."""
        assert 0.0 < fraction <= 1.0, fraction
        if self.count == 0:
            return 0.0
        rank = math.ceil(fraction * self.count)
        seen = 0
        for bucket, bucket_count in enumerate(self._counts):
            seen += bucket_count
            if seen >= rank:
                if bucket == BUCKET_COUNT_MAX - 1:  # the overflow bucket: no upper bound
                    return self.max_us
                return min(self.upper_bound_us(bucket), self.max_us)
        raise AssertionError("rank beyond count")


def pacing_delay_s(sent: int, elapsed_s: float, rate_per_s: float | None) -> float:
    """Seconds to wait so that ``sent`` records do not exceed ``rate_per_s`` * elapsed."""
    if rate_per_s is None or rate_per_s <= 0:
        return 0.0
    ahead_s = sent / rate_per_s - elapsed_s
    return ahead_s if ahead_s > 0 else 0.0


class Summary(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The machine-readable result of a perf run (``--json``)."""

    mode: str
    topic: str
    records: int
    bytes: int
    elapsed_s: float
    records_per_s: float
    mb_per_s: float
    errors: int
    latency_ms: dict[str, float] | None = None


def summarize(
    *,
    mode: str,
    topic: str,
    records: int,
    total_bytes: int,
    elapsed_s: float,
    latency: LatencyHistogram | None = None,
    errors: int = 0,
) -> Summary:
    """Rates from counts and time; latency percentiles in ms when a histogram is given."""
    elapsed = max(elapsed_s, 1e-9)
    latency_ms: dict[str, float] | None = None
    if latency is not None:
        latency_ms = {
            "p50": round(latency.percentile_us(0.50) / 1000, 3),
            "p95": round(latency.percentile_us(0.95) / 1000, 3),
            "p99": round(latency.percentile_us(0.99) / 1000, 3),
            "max": round(latency.max_us / 1000, 3),
        }
    return Summary(
        mode=mode,
        topic=topic,
        records=records,
        bytes=total_bytes,
        elapsed_s=round(elapsed_s, 3),
        records_per_s=round(records / elapsed, 1),
        mb_per_s=round(total_bytes / elapsed / 1_000_000, 3),
        latency_ms=latency_ms,
        errors=errors,
    )


def summary_line(summary: Summary) -> str:
    """The human-readable one-line summary."""
    text = (
        f"{summary.records:,} records, {summary.bytes / 1_000_000:,.1f} MB in "
        f"{summary.elapsed_s:.2f} s: {summary.records_per_s:,.0f} records/s, "
        f"{summary.mb_per_s:,.2f} MB/s"
    )
    if summary.latency_ms is not None:
        latency = summary.latency_ms
        text += (
            f"; latency ms p50 {latency['p50']:.2f}, p95 {latency['p95']:.2f}, "
            f"p99 {latency['p99']:.2f}, max {latency['max']:.2f}"
        )
    if summary.errors:
        text += f"; {summary.errors:,} errors"
    return text
