"""The broker's counters: plain integers bumped on the hot path, read at scrape time.

Every ``prometheus_client`` value is a lock-guarded float (~0.4 µs an
increment); these are ``__slots__`` integers (~0.05 µs).  They are updated
once per request, per answered partition or per flush -- never per record --
and :mod:`broker.metrics.collector` turns them into metric families when
Prometheus scrapes.  Everything here runs on the event loop (the storage
counters are also bumped after a worker thread returns, on the loop), so no
locks.

- :class:`BucketCounts`: a histogram as a list of per-bucket counts and a sum.
- :class:`RequestCounters`: per API, answers by error code and a duration
  histogram.
- :class:`PartitionTraffic`: records and bytes produced to and fetched from one
  partition (summed per topic at scrape time).
- :class:`ConnectionCounters`: connections accepted and limits hit.
- :class:`StorageActivity`: flushes, retention and compaction of every log in the
  process (:data:`STORAGE`, one per process: the storage layer has no broker to
  hang it on).
- :class:`ReplicationCounters`: ISR shrinks and expansions this broker wrote as
  leader, leader elections it wrote as controller (by kind).
- :class:`BrokerMetrics`: what one broker holds (``Broker.metrics``).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

from client.errors import ErrorCode
from client.protocol.messages import ApiKey

# Upper bounds (seconds, inclusive) of the duration histograms: 0.1 ms to 10 s on a
# 1-2.5-5 ladder, so p99 resolves a produce acknowledgement (~1 ms) as well as a
# long poll (0.5 s) or a request that hits request_timeout_ms (30 s: +Inf).
DURATION_BUCKETS_S: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# The API key a request with an unknown key is counted under: a label value per
# key a client can send would be an unbounded label.
UNKNOWN_API: Final = -1
# Room in the per-request lists: every API key and every error code is below.
API_KEY_SLOTS: Final = max(ApiKey) + 1
ERROR_CODE_SLOTS: Final = max(ErrorCode) + 1

# The limits counted by ConnectionCounters.limit_hits, by config key.
LIMITS_COUNTED: Final = (
    "frame_bytes_max",
    "connections_max",
    "connections_per_address_max",
    "request_timeout_ms",
    "inflight_requests_max",
    "frame_receive_timeout_ms",
)


class BucketCounts:
    """A histogram over fixed ``bounds``: ``counts[i]`` values fell in bucket ``i``
    (the last one is +Inf); ``sum`` of every value observed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS_S) -> None:
        assert list(bounds) == sorted(set(bounds)), bounds
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: Prometheus buckets are "less than or equal".
        # (RequestCounters.finished does the same inline.)
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of values <= le)`` for every bound, then ``+Inf``."""
        running = 0
        buckets: list[tuple[str, int]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets


class ApiCounters:
    """One API's answers: ``outcomes[error code]`` (a list indexed by the code) and
    the duration histogram."""

    __slots__ = ("durations", "outcomes")

    def __init__(self) -> None:
        self.outcomes = [0] * ERROR_CODE_SLOTS
        self.durations = BucketCounts()

    def outcome_counts(self) -> dict[int, int]:
        """Answers by error code, for the codes that occurred."""
        return {code: count for code, count in enumerate(self.outcomes) if count}


class RequestCounters:
    """Requests answered, per API key (see :meth:`finished`).

    Lists indexed by the API key and the error code (small integers), made
    whole up front: per request, two index operations and no allocation."""

    def __init__(self) -> None:
        self.by_api: list[ApiCounters | None] = [None] * API_KEY_SLOTS
        for api_key in ApiKey:
            self.by_api[api_key] = ApiCounters()
        self.unknown_api = ApiCounters()  # keys no API has (a client's invention)

    def finished(self, api_key: int, code: int, duration_s: float) -> None:
        """A request of ``api_key`` was answered with ``code`` (ErrorCode.NONE: ok)
        ``duration_s`` after it arrived.  Once per request."""
        try:
            counters = self.by_api[api_key]
        except IndexError:  # a key from the wire beyond every API's
            counters = None
        if counters is None:
            counters = self.unknown_api
        counters.outcomes[code] += 1
        durations = counters.durations
        durations.counts[bisect_left(DURATION_BUCKETS_S, duration_s)] += 1
        durations.sum += duration_s

    def answered(self) -> list[tuple[int, ApiCounters]]:
        """``(api key, counters)`` of every API with answers, in key order;
        UNKNOWN_API last."""
        found = [
            (api_key, counters)
            for api_key, counters in enumerate(self.by_api)
            if counters is not None and counters.durations.count
        ]
        if self.unknown_api.durations.count:
            found.append((UNKNOWN_API, self.unknown_api))
        return found

    def check_invariants(self) -> None:
        for api_key, counters in self.answered():
            assert api_key == UNKNOWN_API or api_key in ApiKey._value2member_map_, api_key
            assert sum(counters.outcomes) == counters.durations.count, api_key
            for code in counters.outcome_counts():
                assert code in ErrorCode._value2member_map_, code


def api_label(api_key: int) -> str:
    """The ``api`` label value: the API's name in lower case (``produce``)."""
    if api_key == UNKNOWN_API:
        return "unknown"
    return ApiKey(api_key).name.lower()


def outcome_label(code: int) -> str:
    """The ``outcome`` label value: ``ok`` or the error code's name in lower case."""
    if code == ErrorCode.NONE:
        return "ok"
    return ErrorCode(code).name.lower()


class PartitionTraffic:
    """Records and bytes produced to and fetched from one partition."""

    __slots__ = ("fetched_bytes", "fetched_records", "produced_bytes", "produced_records")

    def __init__(self) -> None:
        self.produced_records = 0
        self.produced_bytes = 0
        self.fetched_records = 0
        self.fetched_bytes = 0

    def produced(self, records: int, size_bytes: int) -> None:
        self.produced_records += records
        self.produced_bytes += size_bytes

    def fetched(self, records: int, size_bytes: int) -> None:
        self.fetched_records += records
        self.fetched_bytes += size_bytes


class ConnectionCounters:
    """Connections accepted, and how often each limit refused or closed something."""

    def __init__(self) -> None:
        self.opened = 0
        self.limit_hits: dict[str, int] = dict.fromkeys(LIMITS_COUNTED, 0)

    def limit_hit(self, limit: str) -> None:
        assert limit in self.limit_hits, limit
        self.limit_hits[limit] += 1


class StorageActivity:
    """Flushes, retention deletions and compaction passes of every log."""

    __slots__ = (
        "compaction_runs",
        "flush_durations",
        "retention_deleted_bytes",
        "retention_deleted_segments",
    )

    def __init__(self) -> None:
        self.flush_durations = BucketCounts()
        self.retention_deleted_segments = 0
        self.retention_deleted_bytes = 0
        self.compaction_runs = 0

    def flushed(self, duration_s: float) -> None:
        self.flush_durations.observe(duration_s)

    def retention_deleted(self, segments: int, size_bytes: int) -> None:
        self.retention_deleted_segments += segments
        self.retention_deleted_bytes += size_bytes


# The ``kind`` label values of distributary_leader_elections_total, every one
# exported (0 until it happens) so a query over a kind always has a series.
ELECTION_KINDS: Final = ("clean", "elr", "preferred", "unclean", "unclean_recovery")


class ReplicationCounters:
    """ISR changes written by this broker as a partition's leader, and leader
    elections written by this broker as controller.  Bumped once per committed
    metadata write, never per record."""

    __slots__ = ("isr_expands", "isr_shrinks", "leader_elections")

    def __init__(self) -> None:
        self.isr_shrinks = 0
        self.isr_expands = 0
        self.leader_elections: dict[str, int] = dict.fromkeys(ELECTION_KINDS, 0)

    def isr_changed(self, before: int, after: int) -> None:
        """A committed ISR change from ``before`` to ``after`` members."""
        if after < before:
            self.isr_shrinks += 1
        elif after > before:
            self.isr_expands += 1

    def elected(self, kind: str) -> None:
        """A leader election of ``kind`` (one of ELECTION_KINDS) was written."""
        assert kind in self.leader_elections, kind
        self.leader_elections[kind] += 1


# Bumped by broker/storage/async_log.py for every log of this process.
STORAGE: Final = StorageActivity()


class BrokerMetrics:
    """One broker's counters (``Broker.metrics``); partitions hold their own
    :class:`PartitionTraffic`."""

    def __init__(self) -> None:
        self.requests = RequestCounters()
        self.connections = ConnectionCounters()
        self.replication = ReplicationCounters()
        # Seconds Broker.open took (open and recover the logs, rebuild the groups);
        # None until the server has measured it.
        self.recovery_duration_s: float | None = None
