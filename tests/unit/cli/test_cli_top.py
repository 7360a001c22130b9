"""``distributary top`` without a broker: parsing a scrape, rates and quantiles between two
scrapes, the screen as a pure function, and the down/reconnect path of a session."""

from __future__ import annotations

import io

import httpx
import pytest
from rich.console import Console

from client.cli.top import TopSession, metrics_address
from client.cli.top_snapshot import (
    bucket_delta,
    compute_view,
    parse_scrape,
    quantile,
    rate,
)
from client.cli.top_view import render

BOUNDS = ("0.001", "0.01", "0.1", "+Inf")


def scrape_text(
    *,
    produced: int,
    fetched: int,
    lag: int,
    produce_buckets: tuple[int, int, int, int],
    cpu_seconds: float = 1.0,
    opened: int = 3,
    under_replicated: int = 0,
) -> str:
    """A scrape as the broker writes it (docs/monitoring.md names), two partitions of
    topic "orders", one group "billing" reading it."""
    lines = [
        "# TYPE distributary_build_info gauge",
        'distributary_build_info{version="0.1.0",python_version="3.11.7"} 1.0',
        "# TYPE distributary_produced_records_total counter",
        f'distributary_produced_records_total{{topic="orders"}} {produced}',
        "# TYPE distributary_produced_bytes_total counter",
        f'distributary_produced_bytes_total{{topic="orders"}} {produced * 100}',
        "# TYPE distributary_fetched_records_total counter",
        f'distributary_fetched_records_total{{topic="orders"}} {fetched}',
        "# TYPE distributary_fetched_bytes_total counter",
        f'distributary_fetched_bytes_total{{topic="orders"}} {fetched * 100}',
        "# TYPE distributary_partition_high_watermark gauge",
        'distributary_partition_high_watermark{topic="orders",partition="0"} 10.0',
        'distributary_partition_high_watermark{topic="orders",partition="1"} 10.0',
        "# TYPE distributary_log_size_bytes gauge",
        'distributary_log_size_bytes{topic="orders",partition="0"} 1024.0',
        'distributary_log_size_bytes{topic="orders",partition="1"} 1024.0',
        "# TYPE distributary_consumer_group_members gauge",
        'distributary_consumer_group_members{group="billing"} 2.0',
        "# TYPE distributary_consumer_group_state gauge",
        'distributary_consumer_group_state{group="billing",state="stable"} 1.0',
        'distributary_consumer_group_state{group="billing",state="empty"} 0.0',
        "# TYPE distributary_consumer_group_lag gauge",
        f'distributary_consumer_group_lag{{group="billing",topic="orders",partition="0"}} {lag}',
        'distributary_consumer_group_lag{group="billing",topic="orders",partition="1"} 0.0',
        "# TYPE distributary_consumer_group_lag_seconds gauge",
        'distributary_consumer_group_lag_seconds{group="billing",topic="orders",partition="0"} 4.5',
        'distributary_consumer_group_lag_seconds{group="billing",topic="orders",partition="1"} 0.0',
        "# TYPE distributary_requests_total counter",
        f'distributary_requests_total{{api="produce",outcome="ok"}} {produce_buckets[-1]}',
        "# TYPE distributary_request_duration_seconds histogram",
    ]
    for bound, count in zip(BOUNDS, produce_buckets, strict=True):
        lines.append(
            f'distributary_request_duration_seconds_bucket{{api="produce",le="{bound}"}} {count}'
        )
    lines += [
        f'distributary_request_duration_seconds_count{{api="produce"}} {produce_buckets[-1]}',
        'distributary_request_duration_seconds_sum{api="produce"} 0.5',
        "# TYPE distributary_connections gauge",
        "distributary_connections 2.0",
        "# TYPE distributary_connections_opened_total counter",
        f"distributary_connections_opened_total {opened}",
        "# TYPE process_cpu_seconds_total counter",
        f"process_cpu_seconds_total {cpu_seconds}",
        "# TYPE process_resident_memory_bytes gauge",
        "process_resident_memory_bytes 5e+07",
        "# TYPE process_open_fds gauge",
        "process_open_fds 12.0",
        "# TYPE distributary_under_replicated_partitions gauge",
        f"distributary_under_replicated_partitions {under_replicated}",
        "# TYPE distributary_offline_partitions gauge",
        "distributary_offline_partitions 0.0",
        "# EOF",
    ]
    return "\n".join(lines) + "\n"


FIRST = scrape_text(produced=1_000, fetched=900, lag=100, produce_buckets=(10, 90, 100, 100))
SECOND = scrape_text(
    produced=3_000,
    fetched=2_900,
    lag=300,
    produce_buckets=(10, 90, 200, 200),
    cpu_seconds=1.5,
    opened=5,
    under_replicated=3,
)


def test_a_scrape_is_parsed_per_topic_group_and_api() -> None:
    """Proves parse_scrape sums a topic's counters and partitions, a group's lag over its
    partitions (lag seconds: the oldest), and keeps the histogram's buckets per API."""
    scrape = parse_scrape(FIRST, time_s=10.0)
    assert scrape.version == "0.1.0"
    assert (scrape.produced_records["orders"], scrape.fetched_bytes["orders"]) == (1_000, 90_000)
    assert (scrape.partitions["orders"], scrape.log_bytes["orders"]) == (2, 2048)
    assert (scrape.group_members["billing"], scrape.group_state["billing"]) == (2, "stable")
    assert (scrape.group_lag["billing"], scrape.group_lag_seconds["billing"]) == (100, 4.5)
    assert scrape.request_buckets["produce"][-1] == (float("inf"), 100)
    assert (scrape.connections, scrape.cpu_seconds, scrape.open_fds) == (2, 1.0, 12)
    assert (scrape.under_replicated_partitions, scrape.offline_partitions) == (0, 0)
    assert parse_scrape("# EOF\n", time_s=1.0).under_replicated_partitions is None


def test_rates_lag_trend_and_latency_come_from_the_two_scrapes() -> None:
    """Proves the view divides counter deltas by the time between scrapes, gives the lag's
    change per second, and takes p50/p99 from the buckets of the requests in between
    only (all 100 new produce requests took 10-100 ms)."""
    view = compute_view(parse_scrape(FIRST, 10.0), parse_scrape(SECOND, 12.0))
    assert view.up and view.interval_s == 2.0
    (topic,) = view.topics
    assert (topic.in_records_per_s, topic.in_bytes_per_s) == (1_000, 100_000)
    assert topic.out_records_per_s == 1_000 and topic.partitions == 2
    (group,) = view.groups
    assert (group.members, group.lag_records, group.lag_trend_per_s) == (2, 300, 100)
    (api,) = view.apis
    assert api.requests_per_s == 50
    assert api.p50_seconds == pytest.approx(0.055)
    assert api.p99_seconds == pytest.approx(0.0991)
    assert view.cpu_percent == pytest.approx(25.0)
    assert view.connections_opened_per_s == 1.0
    assert (view.under_replicated_partitions, view.offline_partitions) == (3, 0)


def test_first_scrape_and_a_restart_give_no_rates() -> None:
    """Proves the first view has no rates and that counters going down (the broker
    restarted between scrapes) give "unknown" rather than a negative rate."""
    first = compute_view(None, parse_scrape(SECOND, 1.0))
    assert first.topics[0].in_records_per_s is None and first.groups[0].lag_trend_per_s is None
    restarted = compute_view(parse_scrape(SECOND, 1.0), parse_scrape(FIRST, 2.0))
    assert restarted.topics[0].in_records_per_s is None
    assert restarted.apis[0].p99_seconds is None and restarted.apis[0].requests_per_s is None
    assert rate(5, 3, 1.0) is None and rate(3, 5, 2.0) == 1.0


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    """Proves quantile follows histogram_quantile: linear inside the bucket, the largest
    finite bound in the +Inf bucket, None when empty; bucket_delta refuses a reset."""
    buckets = [(0.001, 0.0), (0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.25, buckets) == pytest.approx(0.0055)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 4.0)]) == 0.1
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert bucket_delta(buckets, [(b, c / 2) for b, c in buckets]) is None


def test_render_is_a_pure_function_of_two_scrapes() -> None:
    """Proves the screen shows the topic, group (with its trend) and API rows for two
    scrapes, and DOWN with the reason when the endpoint failed."""
    output = io.StringIO()
    console = Console(file=output, width=140, color_system=None)
    console.print(render(parse_scrape(FIRST, 10.0), parse_scrape(SECOND, 12.0), "h:1"))
    text = output.getvalue()
    assert "orders" in text and "billing" in text and "produce" in text
    assert "▲ +100/s" in text and "1,000" in text
    assert "under-replicated 3" in text and "offline 0" in text
    output.truncate(0)
    console.print(render(None, "connection refused", "h:1"))
    assert "DOWN" in output.getvalue() and "connection refused" in output.getvalue()


def test_metrics_address_is_the_brokers_port_plus_one_unless_given() -> None:
    """Proves --bootstrap maps to the first broker's port + 1 and --metrics wins."""
    assert metrics_address("127.0.0.5:9392,127.0.0.6:9392", None) == "127.0.0.5:9393"
    assert metrics_address("127.0.0.1:9392", "10.0.0.1:9100") == "10.0.0.1:9100"
    assert metrics_address("[::1]:7000", None) == "[::1]:7001"


async def test_a_session_shows_the_broker_down_and_reconnects() -> None:
    """Proves a failed scrape yields a DOWN view with the reason (top keeps going), and
    the next answer brings the view back with rates starting afresh."""
    answers = [FIRST, None, FIRST, SECOND]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        text = answers.pop(0)
        if text is None:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, text=text)

    clock = iter([1.0, 2.0, 3.0, 4.0])
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        session = TopSession(client, "127.0.0.1:9393", clock=lambda: next(clock))
        views = [await session.view() for _ in range(4)]
    assert [view.up for view in views] == [True, False, True, True]
    assert views[1].error == "connection refused"
    assert views[2].topics[0].in_records_per_s is None  # nothing to compare with after DOWN
    assert views[3].topics[0].in_records_per_s == 2_000
