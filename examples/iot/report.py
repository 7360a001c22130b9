"""``report.png`` of a run: four panels over the run's time axis, the scripted
faults shaded on each.

1. Throughput per stage (records/s): what the simulator published, the bridge
   produced to iot.raw, validate consumed and the sink inserted.
2. Lag per consumer group (records), from the broker's own
   ``distributary_consumer_group_lag``; iot-aggregate's on a second axis, since
   it commits only past readings whose windows closed and so stays high.
3. End-to-end latency p50/p99 (seconds, log scale), bridge receive to sink
   commit, over 5 s windows of the sink's histogram.
4. Dead letters by reason, duplicates dropped and late readings dropped, as
   running totals.

Rendered with matplotlib's Agg backend (no display needed) from
``metrics.jsonl`` and ``faults.jsonl``; ``python -m examples.iot report --run
DIR`` redraws it.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Final

import click
import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display needed
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from examples.iot.faults import FaultRecord, read_timeline
from examples.iot.names import AGGREGATE_GROUP, DLQ_REASONS
from examples.iot.scrape import read_ticks
from examples.iot.timeseries import (
    GROUPS,
    STAGE_COUNTERS,
    counter_rates,
    counter_totals,
    group_lags,
    latency_quantiles,
)

FIGURE_SIZE_IN: Final = (11.0, 11.0)
FIGURE_DPI: Final = 80
FAULT_COLOURS: Final = {
    "mqtt_restart": "tab:blue",
    "mqtt_kill": "tab:red",
    "validate_kill": "tab:orange",
    "broker_restart": "tab:purple",
    "sink_stall": "tab:brown",
}
# A fault that lasted (almost) no time is drawn this wide, so it stays visible.
FAULT_MIN_WIDTH_S: Final = 1.0
# Points further apart than this (seconds) are not joined: the target was down.
GAP_S: Final = 2.5


def _shade_faults(axes: Axes, timeline: list[FaultRecord], *, label: bool) -> None:
    for record in timeline:
        end = record.end_t if record.end_t is not None else record.start_t
        end = max(end, record.start_t + FAULT_MIN_WIDTH_S)
        colour = FAULT_COLOURS.get(record.name, "grey")
        axes.axvspan(record.start_t, end, color=colour, alpha=0.18, lw=0)
        if label:
            axes.annotate(
                record.name,
                xy=(record.start_t, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -2),
                textcoords="offset points",
                va="top",
                fontsize=8,
                rotation=90,
                color=colour,
            )


def _plot(axes: Axes, points: list[tuple[float, float]], label: str, **style: Any) -> None:
    """Plot ``points``, leaving a gap where a target did not answer for a while
    (a restarting process) instead of drawing a line across it."""
    if not points:
        return
    xs: list[float] = [points[0][0]]
    ys: list[float] = [points[0][1]]
    for (t0, _), (t1, y1) in itertools.pairwise(points):
        if t1 - t0 > GAP_S:
            xs.append((t0 + t1) / 2)
            ys.append(math.nan)
        xs.append(t1)
        ys.append(y1)
    axes.plot(xs, ys, label=label, lw=1.2, **style)


def draw(ticks: list[dict[str, Any]], timeline: list[FaultRecord], out: Path, title: str) -> int:
    """Draw the four panels into ``out``; the number of axes drawn.  Raises
    OSError when it cannot be written."""
    figure, (throughput, lag, latency, errors) = plt.subplots(
        4, 1, figsize=FIGURE_SIZE_IN, sharex=True, constrained_layout=True
    )
    figure.suptitle(title, fontsize=11)

    for counter in STAGE_COUNTERS:
        _plot(
            throughput,
            counter_rates(ticks, counter.target_prefix, counter.metric, counter.labels),
            counter.label,
        )
    throughput.set_ylabel("records/s")
    throughput.set_title("Throughput per stage", fontsize=10, loc="left")

    for group in GROUPS:
        if group != AGGREGATE_GROUP:
            _plot(lag, group_lags(ticks, group), group)
    lag.set_ylabel("records")
    lag.set_title(
        "Consumer group lag (iot-aggregate on the right: it commits only past closed windows)",
        fontsize=10,
        loc="left",
    )
    held = lag.twinx()
    _plot(held, group_lags(ticks, AGGREGATE_GROUP), AGGREGATE_GROUP, color="grey", ls="--")
    held.set_ylabel(f"{AGGREGATE_GROUP} (records)", color="grey")
    held.tick_params(axis="y", colors="grey")
    if held.lines:
        held.legend(fontsize=8, loc="upper left")

    quantiles = latency_quantiles(ticks, (0.5, 0.99))
    for index, name in enumerate(("p50", "p99")):
        points = [(t, q) for t, qs in quantiles if (q := qs[index]) is not None]
        _plot(latency, points, name)
    latency.set_yscale("log")
    latency.set_ylabel("seconds")
    latency.set_title(
        "End-to-end latency (bridge receive to sink commit, 5 s windows)", fontsize=10, loc="left"
    )

    for reason in DLQ_REASONS:
        points = counter_totals(ticks, "validate", "iot_dlq_records_total", {"reason": reason})
        if points and points[-1][1] > 0:
            _plot(errors, points, f"dead-lettered: {reason}")
    _plot(
        errors,
        counter_totals(ticks, "validate", "iot_validate_records_total", {"result": "duplicate"}),
        "duplicates dropped",
        ls="--",
    )
    _plot(
        errors,
        counter_totals(ticks, "aggregate", "iot_aggregate_late_dropped_total", {}),
        "late readings dropped",
        ls=":",
    )
    errors.set_ylabel("records (total)")
    errors.set_xlabel("seconds since the simulator started")
    errors.set_title("Dead letters, duplicates and late drops", fontsize=10, loc="left")

    for index, axes in enumerate((throughput, lag, latency, errors)):
        _shade_faults(axes, timeline, label=index == 0)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8, loc="upper right")
    figure.savefig(out, dpi=FIGURE_DPI)
    axes_drawn = len(figure.axes)
    plt.close(figure)
    return axes_drawn


def write_report(run_dir: Path) -> tuple[Path, int]:
    """Draw ``run_dir/report.png`` from the run's metrics and faults; its path
    and how many axes (panels) it has."""
    ticks = read_ticks(run_dir / "metrics.jsonl")
    timeline = read_timeline(run_dir / "faults.jsonl")
    out = run_dir / "report.png"
    title = f"IoT pipeline run {run_dir.name}"
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        import json

        summary = json.loads(summary_path.read_text())
        config = summary.get("config", {})
        title = (
            f"IoT pipeline: {config.get('devices')} devices x {config.get('rate')}/s for "
            f"{config.get('duration_s')} s ({config.get('mqtt_broker')}); "
            f"checks {'passed' if summary.get('ok') else 'FAILED'}"
        )
    return out, draw(ticks, timeline, out, title)


@click.command("report")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, exists=True), required=True)
def command(run_dir: Path) -> None:
    """Draw a run folder's report.png from its metrics.jsonl."""
    path, axes = write_report(run_dir)
    print(f"{path} ({axes} axes)")
