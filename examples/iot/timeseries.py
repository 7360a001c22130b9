"""Time series of a run, derived from its metrics ticks (scrape.py): the live
view and the report read the same figures.

A stage may run as several processes (the validate members, a replacement)
and a process may restart (Distributary, mosquitto), so a counter is followed
per target: the increase between two answered ticks, or the new value when it
went down (the process restarted and counts from zero); the increases of every
target of a stage are added up.  Ticks where nothing answered give no point.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from examples.iot.names import AGGREGATE_GROUP, ALERTS_GROUP, SINK_GROUP, VALIDATE_GROUP
from examples.iot.scrape import (
    bucket_delta,
    histogram_buckets,
    histogram_quantile,
    series_sum,
)

Tick = dict[str, Any]


class StageCounter(NamedTuple):
    """The counter that stands for a stage's throughput."""

    label: str
    target_prefix: str
    metric: str
    labels: dict[str, str]


STAGE_COUNTERS: Final = (
    StageCounter("sim published", "sim", "iot_sim_published_total", {}),
    StageCounter("bridge produced", "bridge", "iot_bridge_produced_total", {}),
    StageCounter("validate in", "validate", "iot_validate_records_total", {}),
    StageCounter("sink readings", "sink", "iot_sink_rows_written_total", {"table": "readings"}),
)
GROUPS: Final = (VALIDATE_GROUP, AGGREGATE_GROUP, SINK_GROUP, ALERTS_GROUP)
# Windows over which end-to-end latency quantiles are computed, in ticks (seconds).
LATENCY_WINDOW_TICKS: Final = 5


def _matches(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + "-")


def counter_increases(
    ticks: Sequence[Tick], prefix: str, metric: str, labels: dict[str, str]
) -> list[tuple[float, float]]:
    """(t, increase since the previous tick) summed over a stage's targets."""
    last: dict[str, float] = {}
    points: list[tuple[float, float]] = []
    for tick in ticks:
        increase = 0.0
        answered = False
        for target, samples in tick["targets"].items():
            if samples is None or not _matches(target, prefix):
                continue
            answered = True
            value = series_sum(samples, metric, **labels)
            previous = last.get(target)
            if previous is not None:
                increase += value - previous if value >= previous else value
            last[target] = value
        if answered:
            points.append((tick["t"], increase))
    return points


def counter_rates(
    ticks: Sequence[Tick], prefix: str, metric: str, labels: dict[str, str]
) -> list[tuple[float, float]]:
    """(t, per-second rate) of a stage's counter (from consecutive ticks)."""
    increases = counter_increases(ticks, prefix, metric, labels)
    rates = []
    for (t0, _), (t1, increase) in itertools.pairwise(increases):
        if t1 > t0:
            rates.append((t1, increase / (t1 - t0)))
    return rates


def counter_totals(
    ticks: Sequence[Tick], prefix: str, metric: str, labels: dict[str, str]
) -> list[tuple[float, float]]:
    """(t, running total) of a stage's counter, restarts included."""
    total = 0.0
    points = []
    for t, increase in counter_increases(ticks, prefix, metric, labels):
        total += increase
        points.append((t, total))
    return points


def group_lag(tick: Tick, group: str) -> float | None:
    """A group's total lag in records at a tick (None: the broker did not answer)."""
    samples = tick["targets"].get("broker")
    if samples is None:
        return None
    return series_sum(samples, "distributary_consumer_group_lag", group=group)


def group_lags(ticks: Sequence[Tick], group: str) -> list[tuple[float, float]]:
    points = []
    for tick in ticks:
        lag = group_lag(tick, group)
        if lag is not None:
            points.append((tick["t"], lag))
    return points


def latency_quantiles(
    ticks: Sequence[Tick], quantiles: Sequence[float], window_ticks: int = LATENCY_WINDOW_TICKS
) -> list[tuple[float, list[float | None]]]:
    """(t, [quantile...]) of the sink's end-to-end latency over the last
    ``window_ticks`` ticks (None where it observed nothing)."""
    answered = [
        (tick["t"], histogram_buckets(tick["targets"].get("sink"), "iot_e2e_latency_seconds"))
        for tick in ticks
        if tick["targets"].get("sink") is not None
    ]
    points = []
    for index in range(window_ticks, len(answered)):
        t, newer = answered[index]
        delta = bucket_delta(newer, answered[index - window_ticks][1])
        points.append((t, [histogram_quantile(q, delta) for q in quantiles]))
    return points


def latest_rate(ticks: Sequence[Tick], counter: StageCounter, window_ticks: int = 3) -> float:
    """A stage's rate over the last few ticks (for the live view)."""
    rates = counter_rates(
        ticks[-(window_ticks + 1) :], counter.target_prefix, counter.metric, counter.labels
    )
    return sum(rate for _t, rate in rates) / len(rates) if rates else 0.0
