"""Scrape every pipeline process's /metrics once a second into ``metrics.jsonl``.

Each line is one tick: ``{"t": seconds since the run started, "time": epoch
seconds, "faults": [faults in progress], "targets": {name: samples | null}}``,
where ``samples`` maps a series (``name{label="value",...}``, labels sorted) to
its value and ``null`` means the target did not answer (stopped, restarting).
Only the series the live view, the report and the reconciler read are kept
(``iot_*`` and the broker's group lag, record counts and membership), so a
two-minute run writes a few MB.  :class:`MetricsLog` also keeps the ticks in
memory for the live view.

The helpers at the bottom read samples back: :func:`series_sum` adds every
series of a metric that carries the given labels, :func:`histogram_quantile`
estimates a quantile from cumulative ``_bucket`` series as Prometheus does.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, float]
SCRAPE_INTERVAL_S: Final = 1.0
# A scrape slower than this counts as "did not answer" for that tick.
SCRAPE_TIMEOUT_S: Final = 0.8
KEPT_PREFIXES: Final = (
    "iot_",
    "distributary_consumer_group_lag",
    "distributary_consumer_group_members",
    "distributary_produced_records_total",
    "distributary_fetched_records_total",
    "distributary_group_rebalances_total",
)
TICKS_KEPT_MAX: Final = 3600  # in memory, for the live view (an hour at 1 Hz)


def series_name(name: str, labels: Mapping[str, str]) -> str:
    """``name{a="x",b="y"}`` with the labels sorted (``name`` alone without labels)."""
    if not labels:
        return name
    inner = ",".join(f'{key}="{labels[key]}"' for key in sorted(labels))
    return f"{name}{{{inner}}}"


def parse_labels(series: str) -> tuple[str, dict[str, str]]:
    """The inverse of :func:`series_name` (label values never hold ``",``)."""
    name, brace, rest = series.partition("{")
    if not brace:
        return name, {}
    labels: dict[str, str] = {}
    for pair in rest.rstrip("}").split('",'):
        key, _eq, value = pair.partition('="')
        labels[key] = value.rstrip('"')
    return name, labels


def parse_metrics(text: str) -> Samples:
    """The kept series of a Prometheus text exposition.

    Raises ValueError when the text does not parse.
    """
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created") or not sample.name.startswith(KEPT_PREFIXES):
                continue
            samples[series_name(sample.name, sample.labels)] = float(sample.value)
    return samples


class MetricsLog:
    """Scrapes named /metrics URLs every second, appends each tick to a JSONL
    file and keeps the recent ticks for the live view."""

    def __init__(
        self,
        path: Path,
        targets: Mapping[str, str],
        *,
        faults_now: Callable[[], list[str]] = list,
        start_time: float | None = None,
    ) -> None:
        self.path = path
        self.targets = dict(targets)  # name -> URL
        self.faults_now = faults_now
        self.start_time = time.time() if start_time is None else start_time
        self.ticks: list[dict[str, Any]] = []
        self.tick_event = trio.Event()  # replaced after each tick

    def add_target(self, name: str, url: str) -> None:
        """Scrape one more target from the next tick on (a replacement process)."""
        self.targets[name] = url

    async def scrape_once(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """Scrape every target concurrently; the tick (also appended and kept)."""
        results: dict[str, Samples | None] = {}

        async def scrape(name: str, url: str) -> None:
            try:
                response = await client.get(url, timeout=SCRAPE_TIMEOUT_S)
                response.raise_for_status()
                results[name] = parse_metrics(response.text)
            except (httpx.HTTPError, ValueError):
                results[name] = None

        async with trio.open_nursery() as nursery:
            for name, url in self.targets.items():
                nursery.start_soon(scrape, name, url)
        now = time.time()
        tick = {
            "t": round(now - self.start_time, 3),
            "time": now,
            "faults": self.faults_now(),
            "targets": {name: results.get(name) for name in sorted(self.targets)},
        }
        with self.path.open("a") as out:
            out.write(json.dumps(tick, separators=(",", ":")) + "\n")
        self.ticks.append(tick)
        del self.ticks[:-TICKS_KEPT_MAX]
        event, self.tick_event = self.tick_event, trio.Event()
        event.set()
        return tick

    async def run(self) -> None:
        """Scrape every SCRAPE_INTERVAL_S until cancelled."""
        async with httpx.AsyncClient() as client:
            next_tick = trio.current_time()
            while True:
                await self.scrape_once(client)
                next_tick += SCRAPE_INTERVAL_S
                await trio.sleep_until(max(next_tick, trio.current_time()))

    def latest(self) -> dict[str, Any] | None:
        return self.ticks[-1] if self.ticks else None


def read_ticks(path: Path) -> list[dict[str, Any]]:
    """Every tick of a metrics.jsonl (a torn last line is skipped)."""
    ticks: list[dict[str, Any]] = []
    with path.open() as lines:
        for line in lines:
            try:
                ticks.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return ticks


def series_sum(samples: Samples | None, name: str, **labels: str) -> float:
    """The sum of every series of ``name`` whose labels include ``labels``."""
    if not samples:
        return 0.0
    total = 0.0
    for series, value in samples.items():
        if not series.startswith(name):
            continue
        series_metric, series_labels = parse_labels(series)
        if series_metric == name and all(series_labels.get(k) == v for k, v in labels.items()):
            total += value
    return total


def targets_sum(
    tick: Mapping[str, Any], targets: Iterable[str], name: str, **labels: str
) -> float | None:
    """:func:`series_sum` over several targets of one tick; None if none answered."""
    answered = [tick["targets"].get(target) for target in targets]
    if all(samples is None for samples in answered):
        return None
    return sum(series_sum(samples, name, **labels) for samples in answered)


def histogram_buckets(samples: Samples | None, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of ``name_bucket``, sorted by bound."""
    buckets: dict[float, float] = {}
    for series, value in (samples or {}).items():
        metric, labels = parse_labels(series)
        if metric == f"{name}_bucket" and "le" in labels:
            bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return sorted(buckets.items())


def histogram_quantile(quantile: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``quantile`` (0..1) of cumulative ``buckets``, linearly interpolated
    inside a bucket as Prometheus's histogram_quantile does; None when empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = quantile * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_delta(
    newer: list[tuple[float, float]], older: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The observations between two cumulative bucket lists (a counter reset,
    i.e. a restarted process, counts from zero)."""
    old = dict(older)
    delta = [(bound, count - old.get(bound, 0.0)) for bound, count in newer]
    if any(count < 0 for _bound, count in delta):
        return newer
    return delta
