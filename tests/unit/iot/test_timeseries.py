"""examples/iot/timeseries.py: counters followed per target through restarts and
summed per stage, group lag from the broker, windowed latency quantiles."""

from __future__ import annotations

import math
from typing import Any

import pytest

from examples.iot.timeseries import (
    counter_rates,
    counter_totals,
    group_lags,
    latency_quantiles,
)

METRIC = "iot_validate_records_total"


def tick(t: float, **targets: dict[str, float] | None) -> dict[str, Any]:
    return {"t": t, "faults": [], "targets": dict(targets)}


def valid(count: float) -> dict[str, float]:
    return {f'{METRIC}{{result="valid"}}': count}


def test_totals_add_members_and_survive_a_restart_and_a_gap() -> None:
    """Proves a stage's total adds its members' increases, carries over a tick where a
    member did not answer, and counts a restarted member from zero."""
    ticks = [
        tick(0, **{"validate-1": valid(0), "validate-2": valid(0)}),
        tick(1, **{"validate-1": valid(10), "validate-2": valid(5)}),
        tick(2, **{"validate-1": None, "validate-2": valid(8)}),
        tick(3, **{"validate-1": valid(2), "validate-2": valid(9)}),  # validate-1 restarted
        tick(4, **{"validate-1": valid(4), "validate-2": valid(9), "validate-3": valid(1)}),
    ]
    totals = counter_totals(ticks, "validate", METRIC, {"result": "valid"})
    assert totals == [(0, 0.0), (1, 15.0), (2, 18.0), (3, 21.0), (4, 23.0)]
    rates = counter_rates(ticks, "validate", METRIC, {})
    assert rates[0] == (1, 15.0)


def test_group_lag_is_summed_over_partitions_and_skips_broker_gaps() -> None:
    """Proves a group's lag sums its partitions and a tick without the broker gives no point."""
    lag = 'distributary_consumer_group_lag{{group="iot-sink",partition="{p}",topic="iot.valid"}}'
    ticks = [
        tick(0, broker={lag.format(p=0): 3.0, lag.format(p=1): 4.0}),
        tick(1, broker=None),
        tick(2, broker={lag.format(p=0): 0.0, lag.format(p=1): 0.0}),
    ]
    assert group_lags(ticks, "iot-sink") == [(0, 7.0), (2, 0.0)]


def test_latency_quantiles_use_only_the_window() -> None:
    """Proves the quantiles are of the observations inside the window, not since the start."""

    def sink(fast: float, slow: float) -> dict[str, float]:
        return {
            'iot_e2e_latency_seconds_bucket{le="0.1"}': fast,
            'iot_e2e_latency_seconds_bucket{le="10.0"}': fast + slow,
            'iot_e2e_latency_seconds_bucket{le="+Inf"}': fast + slow,
        }

    ticks = [tick(0, sink=sink(0, 0)), tick(1, sink=sink(0, 100)), tick(2, sink=sink(100, 100))]
    points = latency_quantiles(ticks, (0.5,), window_ticks=1)
    assert points[0][0] == 1 and points[0][1][0] == pytest.approx(5.05)
    assert points[1][0] == 2 and points[1][1][0] == pytest.approx(0.05)
    assert not math.isnan(points[1][1][0] or math.nan)
