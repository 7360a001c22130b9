"""The plain counters (broker/metrics/counters.py): histogram buckets, request
outcomes, label values."""

from __future__ import annotations

import pytest

from broker.metrics.counters import (
    DURATION_BUCKETS_S,
    ELECTION_KINDS,
    UNKNOWN_API,
    BucketCounts,
    ConnectionCounters,
    PartitionTraffic,
    ReplicationCounters,
    RequestCounters,
    api_label,
    outcome_label,
)
from client.errors import ErrorCode
from client.protocol.messages import ApiKey


def test_bucket_bounds_are_inclusive_and_cumulative() -> None:
    """A value equal to a bound falls in that bound's bucket (Prometheus's "le"),
    one above it in the next; cumulative counts end with +Inf = count."""
    counts = BucketCounts((0.001, 0.01))
    for value in (0.0005, 0.001, 0.0011, 0.01, 5.0):
        counts.observe(value)
    assert counts.cumulative() == [("0.001", 2), ("0.01", 4), ("+Inf", 5)]
    assert counts.count == 5
    assert counts.sum == pytest.approx(0.0005 + 0.001 + 0.0011 + 0.01 + 5.0)


def test_duration_buckets_resolve_a_tenth_of_a_millisecond_to_ten_seconds() -> None:
    """The request histogram spans 0.1 ms to 10 s, sorted."""
    assert DURATION_BUCKETS_S[0] == 0.0001
    assert DURATION_BUCKETS_S[-1] == 10.0
    assert list(DURATION_BUCKETS_S) == sorted(DURATION_BUCKETS_S)


def test_requests_count_outcomes_per_api() -> None:
    """Each finished request adds one to its API's outcome and one observation."""
    requests = RequestCounters()
    requests.finished(ApiKey.PRODUCE, ErrorCode.NONE, 0.0002)
    requests.finished(ApiKey.PRODUCE, ErrorCode.NONE, 0.0003)
    requests.finished(ApiKey.PRODUCE, ErrorCode.NOT_LEADER, 0.0001)
    requests.finished(ApiKey.FETCH, ErrorCode.NONE, 0.4)
    requests.check_invariants()
    answered = dict(requests.answered())
    assert list(answered) == [ApiKey.PRODUCE, ApiKey.FETCH]
    produce = answered[ApiKey.PRODUCE]
    assert produce.outcome_counts() == {ErrorCode.NONE: 2, ErrorCode.NOT_LEADER: 1}
    assert produce.durations.count == 3
    assert produce.durations.cumulative()[2] == ("0.0005", 3)
    assert answered[ApiKey.FETCH].durations.cumulative()[-1] == ("+Inf", 1)


def test_unknown_api_keys_share_one_label() -> None:
    """API keys a client invents are counted under one "unknown" API: a label
    value per key would be an unbounded label."""
    requests = RequestCounters()
    for key in (12, 999, 1000, 31_337):  # 12: between two APIs' keys
        requests.finished(key, ErrorCode.UNSUPPORTED_API, 0.0)
    requests.check_invariants()
    answered = requests.answered()
    assert [api_key for api_key, _ in answered] == [UNKNOWN_API]
    assert answered[0][1].outcome_counts() == {ErrorCode.UNSUPPORTED_API: 4}
    assert api_label(UNKNOWN_API) == "unknown"


def test_label_values_are_lower_case_names() -> None:
    """api and outcome labels are the enum names in lower case; success is "ok"."""
    assert api_label(ApiKey.CONSUMER_GROUP_HEARTBEAT) == "consumer_group_heartbeat"
    assert outcome_label(ErrorCode.NONE) == "ok"
    assert outcome_label(ErrorCode.REQUEST_TIMED_OUT) == "request_timed_out"


def test_traffic_and_limits_add_up() -> None:
    """Partition traffic adds records and bytes; a limit hit counts under its key."""
    traffic = PartitionTraffic()
    traffic.produced(10, 1000)
    traffic.produced(5, 400)
    traffic.fetched(15, 1400)
    assert (traffic.produced_records, traffic.produced_bytes) == (15, 1400)
    assert (traffic.fetched_records, traffic.fetched_bytes) == (15, 1400)
    connections = ConnectionCounters()
    connections.limit_hit("frame_bytes_max")
    assert connections.limit_hits["frame_bytes_max"] == 1
    with pytest.raises(AssertionError):
        connections.limit_hit("no_such_limit")


def test_replication_counters_tell_shrinks_from_expansions() -> None:
    """Proves an ISR change counts by its direction (an unchanged size counts as
    neither) and elections count by kind, every kind present from the start."""
    counters = ReplicationCounters()
    assert counters.leader_elections == dict.fromkeys(ELECTION_KINDS, 0)
    counters.isr_changed(3, 2)
    counters.isr_changed(2, 1)
    counters.isr_changed(1, 3)
    counters.isr_changed(2, 2)
    assert (counters.isr_shrinks, counters.isr_expands) == (2, 1)
    counters.elected("clean")
    counters.elected("clean")
    counters.elected("elr")
    assert counters.leader_elections["clean"] == 2 and counters.leader_elections["elr"] == 1
    with pytest.raises(AssertionError):
        counters.elected("sideways")
