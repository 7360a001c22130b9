"""A live terminal view of the pipeline (rich), refreshed once a second.

During ``demo`` (unless ``--no-live``) :func:`run_live` redraws after each
metrics tick, from a trio task with ``auto_refresh=False`` (so rich starts no
refresh thread).  ``python -m examples.iot watch --run DIR`` shows the same
view of a demo running elsewhere by following its ``metrics.jsonl``.

Shown: per-stage rates (records/s over the last 3 s) and totals; each group's
lag and members (from the broker); end-to-end latency p50/p99 over the last
5 s; dead letters, duplicates and late drops; the bridge's in-flight window;
the faults in progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import click
import trio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from examples.iot.scrape import MetricsLog, read_ticks, series_sum
from examples.iot.timeseries import (
    GROUPS,
    STAGE_COUNTERS,
    counter_totals,
    group_lag,
    latency_quantiles,
    latest_rate,
)

REFRESH_S: Final = 1.0
TICKS_USED_MAX: Final = 30  # the view looks at the last 30 s only (totals at the tail)


def _total(ticks: Sequence[dict[str, Any]], prefix: str, metric: str, **labels: str) -> float:
    totals = counter_totals(ticks, prefix, metric, labels)
    return totals[-1][1] if totals else 0.0


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def render(
    ticks: Sequence[dict[str, Any]], totals: Sequence[dict[str, Any]], duration_s: float | None
) -> Group:
    """The view of the latest ticks (``ticks``: recent, for rates; ``totals``:
    every tick, for running totals)."""
    if not ticks:
        return Group(Text("waiting for the first metrics..."))
    tick = ticks[-1]
    header = Text(f"t = {tick['t']:.0f} s", style="bold")
    if duration_s:
        header.append(f" of {duration_s:g} s")
    faults = tick.get("faults") or []
    header.append("   fault in progress: ", style="dim")
    header.append(", ".join(faults) if faults else "none", style="bold red" if faults else "green")

    stages = Table(title="Stages", expand=False)
    stages.add_column("stage")
    stages.add_column("records/s", justify="right")
    stages.add_column("total", justify="right")
    for counter in STAGE_COUNTERS:
        stages.add_row(
            counter.label,
            f"{latest_rate(ticks, counter):,.0f}",
            f"{_total(totals, counter.target_prefix, counter.metric, **counter.labels):,.0f}",
        )

    groups = Table(title="Consumer groups", expand=False)
    groups.add_column("group")
    groups.add_column("lag", justify="right")
    groups.add_column("members", justify="right")
    broker = tick["targets"].get("broker")
    for group in GROUPS:
        lag = group_lag(tick, group)
        members = series_sum(broker, "distributary_consumer_group_members", group=group)
        groups.add_row(group, "broker down" if lag is None else f"{lag:,.0f}", f"{members:.0f}")

    quantiles = latency_quantiles(ticks, (0.5, 0.99))
    p50, p99 = quantiles[-1][1] if quantiles else (None, None)
    bridge = tick["targets"].get("bridge")
    counts = Table(title="Latency and counts", expand=False, show_header=False)
    counts.add_column("what")
    counts.add_column("value", justify="right")
    counts.add_row("end-to-end p50 / p99", f"{_ms(p50)} / {_ms(p99)}")
    counts.add_row("dead-lettered", f"{_total(totals, 'validate', 'iot_dlq_records_total'):,.0f}")
    counts.add_row(
        "duplicates dropped",
        f"{_total(totals, 'validate', 'iot_validate_records_total', result='duplicate'):,.0f}",
    )
    counts.add_row(
        "late readings dropped",
        f"{_total(totals, 'aggregate', 'iot_aggregate_late_dropped_total'):,.0f}",
    )
    counts.add_row(
        "bridge in flight",
        "down" if bridge is None else f"{series_sum(bridge, 'iot_bridge_inflight_messages'):,.0f}",
    )
    tables = Table.grid(padding=(0, 2))
    tables.add_row(stages, groups, counts)
    return Group(header, tables)


async def run_live(metrics: MetricsLog, duration_s: float | None = None) -> None:
    """Redraw after every tick of ``metrics`` until cancelled."""
    with Live(render([], [], duration_s), auto_refresh=False, console=Console()) as live:
        while True:
            await metrics.tick_event.wait()
            ticks = metrics.ticks
            live.update(render(ticks[-TICKS_USED_MAX:], ticks, duration_s), refresh=True)


async def follow(path: Path) -> None:
    """Redraw from a growing metrics.jsonl every REFRESH_S until cancelled."""
    with Live(render([], [], None), auto_refresh=False, console=Console()) as live:
        while True:
            ticks = read_ticks(path) if path.exists() else []
            live.update(render(ticks[-TICKS_USED_MAX:], ticks, None), refresh=True)
            await trio.sleep(REFRESH_S)


@click.command("watch")
@click.option(
    "--run", "run_dir", type=click.Path(path_type=Path), required=True, help="A demo's run folder."
)
def command(run_dir: Path) -> None:
    """A live view of a running demo (Ctrl-C to leave)."""
    try:
        trio.run(follow, run_dir / "metrics.jsonl")
    except KeyboardInterrupt:
        pass
