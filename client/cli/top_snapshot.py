"""``distributary top``'s numbers: one scrape of /metrics in, rates between two out.

Pure functions, no I/O and no terminal.  :func:`parse_scrape` turns the text of
one scrape of a broker's metrics endpoint (docs/monitoring.md lists the names)
into a :class:`Scrape`: cumulative counters, gauges and histogram buckets keyed
by topic, group and API.  :func:`compute_view` turns two scrapes (the one before
may be None, or from before the broker restarted) into a :class:`TopView`:
per-topic records/s and bytes/s, the under-replicated and offline partition
counts, each group's lag and its trend, each API's requests/s and latency p50/p99 from the histogram's bucket deltas (linear
interpolation inside a bucket, as Prometheus's ``histogram_quantile`` does).

A counter that went down (the broker restarted between the scrapes) gives no
rate for that tick (None), rather than a negative or a made-up one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import msgspec
from prometheus_client.parser import text_string_to_metric_families

# Buckets of one histogram: (upper bound in seconds, cumulative count), sorted,
# the last bound being +inf.
Buckets = list[tuple[float, float]]


class Scrape(msgspec.Struct, frozen=True, kw_only=True):
    """The numbers of one scrape that top shows (cumulative ones as scraped)."""

    time_s: float  # when it was taken (the caller's monotonic clock)
    version: str = ""
    produced_records: dict[str, float] = {}  # per topic
    produced_bytes: dict[str, float] = {}
    fetched_records: dict[str, float] = {}
    fetched_bytes: dict[str, float] = {}
    partitions: dict[str, int] = {}  # per topic
    log_bytes: dict[str, float] = {}  # per topic
    group_members: dict[str, float] = {}
    group_state: dict[str, str] = {}
    group_lag: dict[str, float] = {}  # per group, summed over its partitions
    group_lag_seconds: dict[str, float] = {}  # per group, the oldest partition's
    requests: dict[str, float] = {}  # per API, every outcome
    request_buckets: dict[str, Buckets] = {}  # per API
    connections: float = 0.0
    connections_opened: float = 0.0
    cpu_seconds: float | None = None
    resident_bytes: float | None = None
    open_fds: float | None = None
    # Partitions led by the broker with a shrunk ISR; partitions with no leader
    # (counted by the controller only).  None: the broker does not export them.
    under_replicated_partitions: float | None = None
    offline_partitions: float | None = None


class TopicRow(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    partitions: int
    log_bytes: float
    in_records_per_s: float | None
    in_bytes_per_s: float | None
    out_records_per_s: float | None
    out_bytes_per_s: float | None


class GroupRow(msgspec.Struct, frozen=True, kw_only=True):
    group: str
    state: str
    members: int
    lag_records: float
    lag_seconds: float
    # Lag change per second since the scrape before (None: no scrape before).
    lag_trend_per_s: float | None


class ApiRow(msgspec.Struct, frozen=True, kw_only=True):
    api: str
    requests_per_s: float | None
    p50_seconds: float | None
    p99_seconds: float | None


class TopView(msgspec.Struct, frozen=True, kw_only=True):
    """What one refresh shows (and ``top --once --json`` prints)."""

    up: bool
    error: str = ""  # why the broker is shown as down
    version: str = ""
    interval_s: float | None = None  # between the two scrapes compared
    topics: list[TopicRow] = []
    groups: list[GroupRow] = []
    apis: list[ApiRow] = []
    connections: int = 0
    connections_opened_per_s: float | None = None
    cpu_percent: float | None = None
    resident_bytes: float | None = None
    open_fds: int | None = None
    under_replicated_partitions: int | None = None
    offline_partitions: int | None = None


def parse_scrape(text: str, time_s: float) -> Scrape:
    """The numbers top needs from one scrape's text (Prometheus text format).
    Raises ValueError when the text is not in that format."""
    per_topic: dict[str, dict[str, float]] = {
        name: {}
        for name in ("produced_records", "produced_bytes", "fetched_records", "fetched_bytes")
    }
    partitions: dict[str, int] = {}
    log_bytes: dict[str, float] = {}
    members: dict[str, float] = {}
    states: dict[str, str] = {}
    lag: dict[str, float] = {}
    lag_seconds: dict[str, float] = {}
    requests: dict[str, float] = {}
    buckets: dict[str, Buckets] = {}
    single: dict[str, float] = {}
    version = ""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if not name.startswith("distributary_"):
                single[name] = value
                continue
            short = name[len("distributary_") :]
            key = short.removesuffix("_total")
            if key in per_topic and "topic" in labels:
                _add(per_topic[key], labels["topic"], value)
            elif short == "partition_high_watermark":
                _add_int(partitions, labels["topic"])
            elif short == "log_size_bytes":
                _add(log_bytes, labels["topic"], value)
            elif short == "consumer_group_members":
                members[labels["group"]] = value
            elif short == "consumer_group_state" and value == 1:
                states[labels["group"]] = labels["state"]
            elif short == "consumer_group_lag" and value >= 0:
                _add(lag, labels["group"], value)
            elif short == "consumer_group_lag_seconds":
                group = labels["group"]
                lag_seconds[group] = max(lag_seconds.get(group, 0.0), value)
            elif short == "requests_total":
                _add(requests, labels["api"], value)
            elif short == "request_duration_seconds_bucket":
                buckets.setdefault(labels["api"], []).append((float(labels["le"]), value))
            elif short == "build_info":
                version = labels.get("version", "")
            elif short in (
                "connections",
                "connections_opened_total",
                "under_replicated_partitions",
                "offline_partitions",
            ):
                single[short] = value
    return Scrape(
        time_s=time_s,
        version=version,
        produced_records=per_topic["produced_records"],
        produced_bytes=per_topic["produced_bytes"],
        fetched_records=per_topic["fetched_records"],
        fetched_bytes=per_topic["fetched_bytes"],
        partitions=partitions,
        log_bytes=log_bytes,
        group_members=members,
        group_state=states,
        group_lag=lag,
        group_lag_seconds=lag_seconds,
        requests=requests,
        request_buckets={api: sorted(rows) for api, rows in buckets.items()},
        connections=single.get("connections", 0.0),
        connections_opened=single.get("connections_opened_total", 0.0),
        cpu_seconds=single.get("process_cpu_seconds_total"),
        resident_bytes=single.get("process_resident_memory_bytes"),
        open_fds=single.get("process_open_fds"),
        under_replicated_partitions=single.get("under_replicated_partitions"),
        offline_partitions=single.get("offline_partitions"),
    )


def _add(table: dict[str, float], key: str, value: float) -> None:
    table[key] = table.get(key, 0.0) + value


def _add_int(table: dict[str, int], key: str) -> None:
    table[key] = table.get(key, 0) + 1


def rate(before: float | None, after: float | None, interval_s: float | None) -> float | None:
    """Per-second change of a counter; None without a before, or when it went
    down (the broker restarted)."""
    if before is None or after is None or not interval_s or after < before:
        return None
    return (after - before) / interval_s


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile (0 < q < 1) of a histogram given as cumulative buckets,
    interpolated linearly inside its bucket (as ``histogram_quantile``); the
    largest finite bound when it falls in the +Inf bucket; None when empty."""
    assert 0.0 < q < 1.0, q
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
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


def bucket_delta(before: Buckets | None, after: Buckets) -> Buckets | None:
    """The buckets of the requests between two scrapes; None when the bounds
    differ or a count went down (the broker restarted)."""
    if before is None:
        return after
    if [bound for bound, _ in before] != [bound for bound, _ in after]:
        return None
    delta = [(bound, now - then) for (bound, now), (_, then) in zip(after, before, strict=True)]
    return None if any(count < 0 for _, count in delta) else delta


def compute_view(previous: Scrape | None, current: Scrape) -> TopView:
    """What to show for ``current``, with rates since ``previous`` (None: the
    first scrape, or the first since the broker came back)."""
    interval_s = current.time_s - previous.time_s if previous is not None else None
    if interval_s is not None and interval_s <= 0:
        interval_s = None

    def per_s(field: str, key: str) -> float | None:
        after: Mapping[str, float] = getattr(current, field)
        if previous is None:
            return None
        before: Mapping[str, float] = getattr(previous, field)
        return rate(before.get(key, 0.0), after.get(key, 0.0), interval_s)

    before = previous
    topic_names = sorted(
        set(current.partitions) | set(current.produced_records) | set(current.fetched_records)
    )
    topics = [
        TopicRow(
            topic=topic,
            partitions=current.partitions.get(topic, 0),
            log_bytes=current.log_bytes.get(topic, 0.0),
            in_records_per_s=per_s("produced_records", topic),
            in_bytes_per_s=per_s("produced_bytes", topic),
            out_records_per_s=per_s("fetched_records", topic),
            out_bytes_per_s=per_s("fetched_bytes", topic),
        )
        for topic in topic_names
    ]
    groups = []
    for group in sorted(set(current.group_members) | set(current.group_lag)):
        lag = current.group_lag.get(group, 0.0)
        trend = None
        if before is not None and interval_s and group in before.group_lag:
            trend = (lag - before.group_lag[group]) / interval_s
        groups.append(
            GroupRow(
                group=group,
                state=current.group_state.get(group, ""),
                members=int(current.group_members.get(group, 0)),
                lag_records=lag,
                lag_seconds=current.group_lag_seconds.get(group, 0.0),
                lag_trend_per_s=trend,
            )
        )
    return TopView(
        up=True,
        version=current.version,
        interval_s=interval_s,
        topics=topics,
        groups=groups,
        apis=_api_rows(before, current, interval_s),
        connections=int(current.connections),
        connections_opened_per_s=rate(
            before.connections_opened if before else None, current.connections_opened, interval_s
        ),
        cpu_percent=_percent(
            rate(before.cpu_seconds if before else None, current.cpu_seconds, interval_s)
        ),
        resident_bytes=current.resident_bytes,
        open_fds=None if current.open_fds is None else int(current.open_fds),
        under_replicated_partitions=_count(current.under_replicated_partitions),
        offline_partitions=_count(current.offline_partitions),
    )


def _api_rows(before: Scrape | None, current: Scrape, interval_s: float | None) -> list[ApiRow]:
    rows = []
    apis: Iterable[str] = sorted(set(current.requests) | set(current.request_buckets))
    for api in apis:
        buckets = current.request_buckets.get(api, [])
        delta = bucket_delta(before.request_buckets.get(api) if before else None, buckets)
        if before is not None and delta is not None and delta and delta[-1][1] == 0:
            delta = None  # no request since the last scrape: nothing to measure
        rows.append(
            ApiRow(
                api=api,
                requests_per_s=rate(
                    before.requests.get(api, 0.0) if before else None,
                    current.requests.get(api, 0.0),
                    interval_s,
                ),
                p50_seconds=quantile(0.5, delta) if delta else None,
                p99_seconds=quantile(0.99, delta) if delta else None,
            )
        )
    return rows


def _count(value: float | None) -> int | None:
    return None if value is None else int(value)


def _percent(cpu_seconds_per_s: float | None) -> float | None:
    return None if cpu_seconds_per_s is None else 100.0 * cpu_seconds_per_s


def down_view(error: str) -> TopView:
    """What to show while the metrics endpoint does not answer."""
    return TopView(up=False, error=error)
