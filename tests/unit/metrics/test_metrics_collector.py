"""The collector (broker/metrics/collector.py, group_lag.py, traffic.py,
replication.py) over a real Broker state in a temp dir, scraped through the
broker's registry and parsed back with prometheus-client's parser."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.cluster.schema import NO_LEADER, PartitionState, TopicAssignment
from broker.cluster.snapshot import ClusterMetadata
from broker.config import load_config
from broker.fetch import collect_fetch
from broker.handlers import handle
from broker.metrics.counters import ELECTION_KINDS, STORAGE
from broker.metrics.registry import MetricsRegistry
from broker.metrics.replication import FollowedPartition, LedPartition, cluster_view
from broker.metrics.traffic import count_fetched
from broker.state import Broker
from client.errors import ErrorCode
from client.protocol.connection import IncomingRequest
from client.protocol.messages import (
    ApiKey,
    FetchPartition,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetCommitTopic,
    ProducePartition,
    ProduceRequest,
    ProduceResponse,
    ProduceTopic,
    Request,
)
from client.records.builder import build_batch

START_MS = 1_700_000_000_000

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Clock:
    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def broker(tmp_path: Path, clock: Clock) -> AsyncIterator[Broker]:
    config = load_config(flags={"data_dir": str(tmp_path / "data")}).config
    state = await Broker.open(config, clock_ms=clock)
    await state.topics.create("t", 2, {})
    yield state
    await state.close()


def scrape(broker: Broker, connections: int = 0) -> Samples:
    """Every sample of a scrape, by name and labels, parsed from the text format."""
    body, content_type = MetricsRegistry(broker, lambda: connections).render("")
    assert content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def call(broker: Broker, body: Request, payload: bytes = b"") -> Request | object:
    api_key = ApiKey(type(body).__struct_config__.tag)  # type: ignore[arg-type]
    request = IncomingRequest(api_key, 0, 1, True, body, memoryview(bytearray(payload)))
    reply = await handle(broker, request)
    assert reply is not None
    return reply.body


async def produce(
    broker: Broker, partition: int, values: list[bytes], timestamp_ms: int, topic: str = "t"
) -> int:
    """Produce one batch; returns its size in bytes."""
    batch = bytes(build_batch(values, timestamp_ms=timestamp_ms))
    body = ProduceRequest(topics=[ProduceTopic(topic, [ProducePartition(partition, len(batch))])])
    response = await call(broker, body, batch)
    assert isinstance(response, ProduceResponse)
    assert response.topics[0].partitions[0].error_code == 0
    return len(batch)


async def commit(broker: Broker, group: str, partition: int, offset: int, topic: str = "t") -> None:
    body = OffsetCommitRequest(
        group, topics=[OffsetCommitTopic(topic, [OffsetCommitPartition(partition, offset)])]
    )
    response = await call(broker, body)
    assert isinstance(response, OffsetCommitResponse)
    assert response.topics[0].partitions[0].error_code == 0


async def test_produced_counts_equal_what_was_appended(broker: Broker) -> None:
    """Produced records and bytes per topic are exactly the batches appended."""
    size = await produce(broker, 0, [b"a", b"b", b"c"], START_MS)
    size += await produce(broker, 1, [b"d", b"e"], START_MS)
    samples = scrape(broker)
    assert value(samples, "distributary_produced_records_total", topic="t") == 5
    assert value(samples, "distributary_produced_bytes_total", topic="t") == size
    assert value(samples, "distributary_fetched_records_total", topic="t") == 0


async def test_fetched_counts_the_offsets_moved_on(broker: Broker) -> None:
    """A Fetch answer counts, per partition, its bytes and the offsets from the
    fetch offset to the region's end (a fetch from inside a batch counts only the
    records at and after it)."""
    size = await produce(broker, 0, [b"a", b"b", b"c", b"d"], START_MS)
    for fetch_offset in (0, 1):
        body = FetchRequest(
            max_wait_ms=0, topics=[FetchTopic("t", [FetchPartition(0, fetch_offset)])]
        )
        reply = collect_fetch(broker, body)
        assert isinstance(reply.body, FetchResponse)
        count_fetched(broker.topics, body, reply.body, reply.regions)
        reply.release()
    samples = scrape(broker)
    assert value(samples, "distributary_fetched_records_total", topic="t") == 4 + 3
    assert value(samples, "distributary_fetched_bytes_total", topic="t") == 2 * size


async def test_partition_gauges_follow_the_log(broker: Broker) -> None:
    """Log end, log start, high watermark, size and segments per partition."""
    size = await produce(broker, 1, [b"x"] * 7, START_MS)
    samples = scrape(broker)
    labels = {"topic": "t", "partition": "1"}
    assert value(samples, "distributary_partition_log_end_offset", **labels) == 7
    assert value(samples, "distributary_partition_high_watermark", **labels) == 7
    assert value(samples, "distributary_partition_log_start_offset", **labels) == 0
    assert value(samples, "distributary_log_size_bytes", **labels) == size
    assert value(samples, "distributary_log_segments", **labels) == 1
    assert value(samples, "distributary_partition_log_end_offset", topic="t", partition="0") == 0


async def test_lag_in_records_and_seconds(broker: Broker, clock: Clock) -> None:
    """Lag is the high watermark minus the committed offset; its age is now minus
    the timestamp of the batch holding the committed offset; both 0 once the
    group has committed the high watermark."""
    await produce(broker, 0, [b"a", b"b"], START_MS - 30_000)
    await produce(broker, 0, [b"c", b"d", b"e"], START_MS - 10_000)
    await commit(broker, "g", 0, 2)  # consumed the first batch
    clock.now_ms = START_MS + 5_000
    samples = scrape(broker)
    labels = {"group": "g", "topic": "t", "partition": "0"}
    assert value(samples, "distributary_consumer_group_committed_offset", **labels) == 2
    assert value(samples, "distributary_consumer_group_lag", **labels) == 3
    assert value(samples, "distributary_consumer_group_lag_seconds", **labels) == 15.0
    assert value(samples, "distributary_consumer_group_members", group="g") == 0
    assert value(samples, "distributary_consumer_group_state", group="g", state="empty") == 1
    assert value(samples, "distributary_consumer_group_state", group="g", state="stable") == 0

    await commit(broker, "g", 0, 5)
    samples = scrape(broker)
    assert value(samples, "distributary_consumer_group_lag", **labels) == 0
    assert value(samples, "distributary_consumer_group_lag_seconds", **labels) == 0


async def test_a_record_from_the_future_ages_zero_seconds(broker: Broker) -> None:
    """A record stamped after now (a producer's clock ahead) counts as 0 s old."""
    await produce(broker, 0, [b"a"], START_MS + 60_000)
    await commit(broker, "g", 0, 0)
    samples = scrape(broker)
    labels = {"group": "g", "topic": "t", "partition": "0"}
    assert value(samples, "distributary_consumer_group_lag", **labels) == 1
    assert value(samples, "distributary_consumer_group_lag_seconds", **labels) == 0


async def test_lag_seconds_reads_the_log_start_after_retention(
    broker: Broker, clock: Clock
) -> None:
    """A committed offset below the log start (retention deleted it) ages from the
    oldest record still there; retention's deletions are counted."""
    await broker.topics.create("r", 1, {"segment_bytes": "1024", "retention_ms": "600000"})
    hour_ago = START_MS - 3_600_000
    for _ in range(4):  # each batch ~600 bytes: a segment each, the last shared
        await produce(broker, 0, [b"x" * 500], hour_ago, topic="r")
    await produce(broker, 0, [b"recent"], START_MS - 20_000, topic="r")
    await commit(broker, "g", 0, 0, topic="r")
    before = scrape(broker)
    clock.now_ms += broker.topics.partition("r", 0).config.retention_check_interval_ms
    await broker.topics.partition("r", 0).maintain()
    # Three segments expired; the fourth holds the recent batch too.
    assert broker.topics.partition("r", 0).log_start_offset == 3
    samples = scrape(broker)
    labels = {"group": "g", "topic": "r", "partition": "0"}
    assert value(samples, "distributary_consumer_group_lag", **labels) == 5
    age_s = (clock.now_ms - hour_ago) / 1000
    assert value(samples, "distributary_consumer_group_lag_seconds", **labels) == age_s
    deleted = "distributary_retention_deleted_segments_total"
    assert value(samples, deleted) == value(before, deleted) + 3


async def test_requests_connections_and_build_info(broker: Broker) -> None:
    """Request outcomes and durations, connections and build info come out of the
    broker's counters as they are."""
    broker.metrics.requests.finished(ApiKey.PRODUCE, ErrorCode.NONE, 0.0003)
    broker.metrics.requests.finished(ApiKey.PRODUCE, ErrorCode.NOT_LEADER, 0.02)
    broker.metrics.connections.opened = 4
    broker.metrics.connections.limit_hit("connections_max")
    samples = scrape(broker, connections=3)
    assert value(samples, "distributary_requests_total", api="produce", outcome="ok") == 1
    assert value(samples, "distributary_requests_total", api="produce", outcome="not_leader") == 1
    name = "distributary_request_duration_seconds"
    assert value(samples, f"{name}_count", api="produce") == 2
    assert value(samples, f"{name}_bucket", api="produce", le="0.0005") == 1
    assert value(samples, f"{name}_bucket", api="produce", le="0.025") == 2
    assert value(samples, "distributary_connections") == 3
    assert value(samples, "distributary_connections_opened_total") == 4
    assert value(samples, "distributary_limit_hits_total", limit="connections_max") == 1
    assert value(samples, "distributary_limit_hits_total", limit="frame_bytes_max") == 0
    info = [key for key in samples if key[0] == "distributary_build_info"]
    assert len(info) == 1 and dict(info[0][1])["version"] == broker.version


async def test_storage_counters_count_flushes(broker: Broker) -> None:
    """A flush of a log adds one to the process's flush count and histogram."""
    before = scrape(broker)
    await produce(broker, 0, [b"a"], START_MS)
    await broker.topics.partition("t", 0).storage_log.flush()
    after = scrape(broker)
    for name in ("distributary_log_flushes_total", "distributary_log_flush_duration_seconds_count"):
        assert value(after, name) == value(before, name) + 1
    assert STORAGE.flush_durations.count == value(after, "distributary_log_flushes_total")


async def test_data_dir_space(broker: Broker) -> None:
    """Free and total bytes of the data dir's file system, as statvfs says."""
    samples = scrape(broker)
    free = value(samples, "distributary_data_dir_free_bytes")
    capacity = value(samples, "distributary_data_dir_capacity_bytes")
    assert 0 < free <= capacity


async def test_recovery_duration_once_measured(broker: Broker) -> None:
    """The recovery gauge is exported once the server has measured Broker.open."""
    assert not any(key[0] == "distributary_recovery_duration_seconds" for key in scrape(broker))
    broker.metrics.recovery_duration_s = 0.25
    assert value(scrape(broker), "distributary_recovery_duration_seconds") == 0.25


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
async def test_rendering_in_steps_equals_rendering_at_once(broker: Broker, accept: str) -> None:
    """The endpoint's step-by-step rendering gives the same text as the library's
    whole-registry rendering, in both formats (OpenMetrics ends with one # EOF)."""
    await produce(broker, 0, [b"a", b"b"], START_MS)
    await commit(broker, "g", 0, 1)
    registry = MetricsRegistry(broker, lambda: 2)
    whole, whole_type = registry.render(accept)
    stepped, stepped_type = await registry.render_in_steps(accept)
    assert stepped_type == whole_type

    def steady(text: bytes) -> list[bytes]:
        # Process figures (CPU time, memory) and the disk's free bytes move between
        # two renderings.
        return [
            line
            for line in text.splitlines()
            if b"process_" not in line and b"data_dir_free_bytes " not in line
        ]

    assert steady(stepped) == steady(whole)
    assert stepped.count(b"# EOF") == (1 if accept else 0)


async def test_single_node_replication_gauges_are_zero(broker: Broker) -> None:
    """Proves a broker without a cluster exports every replication metric: each open
    partition led with one replica in sync, nothing under-replicated or offline, the
    ISR and election counters at 0 (every election kind present)."""
    samples = scrape(broker)
    assert value(samples, "distributary_under_replicated_partitions") == 0
    assert value(samples, "distributary_offline_partitions") == 0
    assert value(samples, "distributary_active_controller") == 1
    for partition in ("0", "1"):
        labels = {"topic": "t", "partition": partition}
        assert value(samples, "distributary_partition_replicas", **labels) == 1
        assert value(samples, "distributary_partition_isr_size", **labels) == 1
    assert value(samples, "distributary_isr_shrinks_total") == 0
    assert value(samples, "distributary_isr_expands_total") == 0
    for kind in ELECTION_KINDS:
        assert value(samples, "distributary_leader_elections_total", kind=kind) == 0


async def test_replication_counters_are_exported(broker: Broker) -> None:
    """Proves the ISR change and election counters reach the scrape as counted."""
    counters = broker.metrics.replication
    counters.isr_changed(3, 2)
    counters.isr_changed(2, 3)
    counters.isr_changed(3, 2)
    counters.elected("unclean")
    samples = scrape(broker)
    assert value(samples, "distributary_isr_shrinks_total") == 2
    assert value(samples, "distributary_isr_expands_total") == 1
    assert value(samples, "distributary_leader_elections_total", kind="unclean") == 1
    assert value(samples, "distributary_leader_elections_total", kind="clean") == 0


def test_cluster_view_counts_led_under_replicated_and_offline() -> None:
    """Proves the cluster view lists the partitions this node leads with their replica
    and ISR counts, counts leaderless partitions only on the controller, and skips a
    state whose topic is gone."""
    metadata = ClusterMetadata(
        topics={"a": TopicAssignment([[1, 2, 3], [2, 3, 1], [3, 1, 2]])},
        states={
            ("a", 0): PartitionState(1, 3, [1, 2]),
            ("a", 1): PartitionState(1, 5, [1, 2, 3]),
            ("a", 2): PartitionState(NO_LEADER, 7, []),
            ("gone", 0): PartitionState(1, 1, [1]),
        },
    )
    lag = [FollowedPartition("b", 0, 4)]
    view = cluster_view(metadata, 1, lag, controller=True)
    assert view.led == [LedPartition("a", 0, 3, 2), LedPartition("a", 1, 3, 3)]
    assert [led.under_replicated for led in view.led] == [True, False]
    assert view.offline == 1 and view.followed == lag
    assert cluster_view(metadata, 1, [], controller=False).offline == 0
    assert cluster_view(metadata, 2, [], controller=True).led == []
