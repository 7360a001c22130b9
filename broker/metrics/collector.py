"""The broker's prometheus-client Collector: counters and state into metric families.

:class:`BrokerCollector` is registered in the broker's own registry
(broker/metrics/registry.py).  ``collect`` runs when Prometheus scrapes, on the
event loop (the endpoint calls it between two scheduler steps, never from a
thread), so it reads the broker's dicts and partitions without locks.  It reads:

- the plain counters of broker/metrics/counters.py (requests, connections,
  limits, storage) and each partition's traffic, summed per topic;
- each open partition's offsets, size and segments;
- each coordinated group's members, state, epoch, committed offsets and lag
  (broker/metrics/group_lag.py);
- the free space of the data dir's file system (statvfs);
- the replication state: partitions led here and their ISR, offline partitions on
  the controller, each followed partition's lag (broker/metrics/replication.py),
  and the ISR changes and elections this broker wrote.

Its cost is one pass over the partitions and one over the committed offsets
(plus a batch-header read per lagging partition): see docs/benchmarks.md for
the scrape time with 1,000 partitions.  docs/monitoring.md lists every metric.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from broker.groups.group import GroupState
from broker.metrics.counters import STORAGE, BucketCounts, api_label, outcome_label
from broker.metrics.group_lag import coordinated_groups, group_lags
from broker.metrics.replication import replication_view
from broker.partition import Partition, PartitionStats
from broker.state import Broker

# Group states reported by distributary_consumer_group_state (a deleted group is
# no longer listed).
GROUP_STATES = tuple(state for state in GroupState if state is not GroupState.DEAD)

# The per-partition gauges: name, help, value from (stats, high watermark).
PARTITION_GAUGES: tuple[tuple[str, str, Callable[[PartitionStats, int], int]], ...] = (
    (
        "distributary_partition_log_end_offset",
        "The offset the partition's next appended record gets.",
        lambda stats, _: stats.log_end_offset,
    ),
    (
        "distributary_partition_log_start_offset",
        "The first offset still in the partition's log.",
        lambda stats, _: stats.log_start_offset,
    ),
    (
        "distributary_partition_high_watermark",
        "The end of the partition's committed records (what consumers may read).",
        lambda _, high_watermark: high_watermark,
    ),
    (
        "distributary_log_size_bytes",
        "Bytes of the partition's segment files.",
        lambda stats, _: stats.size_bytes,
    ),
    (
        "distributary_log_segments",
        "Segments of the partition's log.",
        lambda stats, _: stats.segment_count,
    ),
)


class BrokerCollector(Collector):
    """See the module docstring.  ``connections_open`` says how many client
    connections are open (the server knows)."""

    def __init__(self, broker: Broker, connections_open: Callable[[], int]) -> None:
        self.broker = broker
        self.connections_open = connections_open

    def describe(self) -> Iterable[Metric]:
        # Nothing to describe ahead: the registry must not call collect() when the
        # collector is registered (before the broker serves).
        return ()

    def collect(self) -> Iterator[Metric]:
        yield from self._build_info()
        partitions = [p for p in self.broker.topics.all_partitions() if p.failure is None]
        yield from self._traffic(partitions)
        yield from self._requests()
        yield from self._partitions(partitions)
        yield from self._connections()
        yield from self._groups()
        yield from self._storage()
        yield from self._replication()

    def _build_info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "distributary_build_info",
            "Always 1; the labels say which Distributary and Python this broker runs.",
            labels=["version", "python_version"],
        )
        info.add_metric([self.broker.version, platform.python_version()], 1)
        yield info

    def _traffic(self, partitions: list[Partition]) -> Iterator[Metric]:
        by_topic: dict[str, list[int]] = {}
        for partition in partitions:
            traffic = partition.traffic
            sums = by_topic.get(partition.topic)
            if sums is None:
                sums = by_topic[partition.topic] = [0, 0, 0, 0]
            sums[0] += traffic.produced_records
            sums[1] += traffic.produced_bytes
            sums[2] += traffic.fetched_records
            sums[3] += traffic.fetched_bytes
        families = [
            CounterMetricFamily(
                "distributary_produced_records_total",
                "Records appended to the topic on this broker.",
                labels=["topic"],
            ),
            CounterMetricFamily(
                "distributary_produced_bytes_total",
                "Bytes of the record batches appended to the topic on this broker.",
                labels=["topic"],
            ),
            CounterMetricFamily(
                "distributary_fetched_records_total",
                "Offsets handed to consumers in Fetch responses.",
                labels=["topic"],
            ),
            CounterMetricFamily(
                "distributary_fetched_bytes_total",
                "Bytes of the record batches sent in Fetch responses.",
                labels=["topic"],
            ),
        ]
        for topic, sums in sorted(by_topic.items()):
            for family, value in zip(families, sums, strict=True):
                family.add_metric([topic], value)
        yield from families

    def _requests(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "distributary_requests_total",
            "Requests answered or refused, by API and outcome (ok or the error code).",
            labels=["api", "outcome"],
        )
        durations = HistogramMetricFamily(
            "distributary_request_duration_seconds",
            "Time from a request's arrival to its answer being ready "
            "(a long-polling Fetch includes its wait).",
            labels=["api"],
        )
        for api_key, counters in self.broker.metrics.requests.answered():
            api = api_label(api_key)
            for code, count in counters.outcome_counts().items():
                requests.add_metric([api, outcome_label(code)], count)
            _add_histogram(durations, [api], counters.durations)
        yield requests
        yield durations

    def _partitions(self, partitions: list[Partition]) -> Iterator[Metric]:
        # One pass reads every partition; each family is then built (and, by a
        # caller rendering in steps, formatted) before the next one.
        rows = [
            ([partition.topic, str(partition.index)], partition.stats(), partition.high_watermark)
            for partition in partitions
            if not partition.closed
        ]
        labels = ["topic", "partition"]
        for name, documentation, pick in PARTITION_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=labels)
            for values, stats, high_watermark in rows:
                family.add_metric(values, pick(stats, high_watermark))
            yield family

    def _connections(self) -> Iterator[Metric]:
        counters = self.broker.metrics.connections
        yield GaugeMetricFamily(
            "distributary_connections",
            "Client connections open now.",
            value=self.connections_open(),
        )
        yield CounterMetricFamily(
            "distributary_connections_opened",
            "Client connections accepted.",
            value=counters.opened,
        )
        hits = CounterMetricFamily(
            "distributary_limit_hits_total",
            "Times a limit (named by its config key) refused or closed something.",
            labels=["limit"],
        )
        for limit, count in counters.limit_hits.items():
            hits.add_metric([limit], count)
        yield hits

    def _groups(self) -> Iterator[Metric]:
        groups = coordinated_groups(self.broker)
        members = GaugeMetricFamily(
            "distributary_consumer_group_members",
            "Members of the consumer group now.",
            labels=["group"],
        )
        state = GaugeMetricFamily(
            "distributary_consumer_group_state",
            "1 for the consumer group's state, 0 for the others.",
            labels=["group", "state"],
        )
        rebalances = CounterMetricFamily(
            "distributary_group_rebalances_total",
            "Times the group's target assignment was recomputed (its group epoch).",
            labels=["group"],
        )
        for group in groups:
            members.add_metric([group.group_id], len(group.members))
            current = group.state
            for each in GROUP_STATES:
                state.add_metric([group.group_id, each.value], 1 if each is current else 0)
            rebalances.add_metric([group.group_id], group.group_epoch)
        yield from (members, state, rebalances)
        # One pass computes every position (a batch-header read per lagging
        # partition); each family is then built before the next one.
        rows = [
            ([position.group, position.topic, str(position.partition)], position)
            for position in group_lags(self.broker, groups, self.broker.clock_ms())
        ]
        labels = ["group", "topic", "partition"]
        committed = GaugeMetricFamily(
            "distributary_consumer_group_committed_offset",
            "The consumer group's committed offset.",
            labels=labels,
        )
        for values, position in rows:
            committed.add_metric(values, position.committed_offset)
        yield committed
        lag = GaugeMetricFamily(
            "distributary_consumer_group_lag",
            "High watermark minus the group's committed offset, in records.",
            labels=labels,
        )
        for values, position in rows:
            if position.lag_records is not None:
                lag.add_metric(values, position.lag_records)
        yield lag
        lag_seconds = GaugeMetricFamily(
            "distributary_consumer_group_lag_seconds",
            "Age of the oldest record the group has not consumed (0 when caught up).",
            labels=labels,
        )
        for values, position in rows:
            if position.lag_seconds is not None:
                lag_seconds.add_metric(values, position.lag_seconds)
        yield lag_seconds

    def _storage(self) -> Iterator[Metric]:
        flushes = STORAGE.flush_durations
        yield CounterMetricFamily(
            "distributary_log_flushes", "Fsyncs of partition logs.", value=flushes.count
        )
        durations = HistogramMetricFamily(
            "distributary_log_flush_duration_seconds",
            "Duration of each log flush (fsync and checkpoint).",
        )
        _add_histogram(durations, [], flushes)
        yield durations
        yield CounterMetricFamily(
            "distributary_retention_deleted_segments",
            "Segments deleted by retention.",
            value=STORAGE.retention_deleted_segments,
        )
        yield CounterMetricFamily(
            "distributary_retention_deleted_bytes",
            "Bytes of the segments deleted by retention.",
            value=STORAGE.retention_deleted_bytes,
        )
        yield CounterMetricFamily(
            "distributary_compaction_runs",
            "Compaction passes over compacted logs.",
            value=STORAGE.compaction_runs,
        )
        yield from self._disk()
        recovery_s = self.broker.metrics.recovery_duration_s
        if recovery_s is not None:
            yield GaugeMetricFamily(
                "distributary_recovery_duration_seconds",
                "Time the broker took at start to open and recover its logs and groups.",
                value=recovery_s,
            )

    def _disk(self) -> Iterator[Metric]:
        """Free and total bytes of the data dir's file system (one statvfs call;
        nothing when it fails)."""
        try:
            disk = os.statvfs(self.broker.config.data_path)
        except OSError:
            return
        yield GaugeMetricFamily(
            "distributary_data_dir_free_bytes",
            "Bytes of the data dir's file system available to the broker.",
            value=disk.f_bavail * disk.f_frsize,
        )
        yield GaugeMetricFamily(
            "distributary_data_dir_capacity_bytes",
            "Size of the data dir's file system in bytes.",
            value=disk.f_blocks * disk.f_frsize,
        )

    def _replication(self) -> Iterator[Metric]:
        view = replication_view(self.broker)
        counters = self.broker.metrics.replication
        yield GaugeMetricFamily(
            "distributary_under_replicated_partitions",
            "Partitions led by this broker whose ISR is smaller than their replicas.",
            value=sum(1 for led in view.led if led.under_replicated),
        )
        labels = ["topic", "partition"]
        replicas = GaugeMetricFamily(
            "distributary_partition_replicas",
            "Replicas assigned to a partition led by this broker.",
            labels=labels,
        )
        isr_size = GaugeMetricFamily(
            "distributary_partition_isr_size",
            "In-sync replicas (the leader included) of a partition led by this broker.",
            labels=labels,
        )
        for led in view.led:
            values = [led.topic, str(led.partition)]
            replicas.add_metric(values, led.replicas)
            isr_size.add_metric(values, led.isr)
        yield replicas
        yield isr_size
        lag = GaugeMetricFamily(
            "distributary_replica_lag",
            "Records a partition followed by this broker is behind: the leader's high "
            "watermark as last fetched minus this replica's log end.",
            labels=labels,
        )
        for followed in view.followed:
            lag.add_metric([followed.topic, str(followed.partition)], followed.lag_records)
        yield lag
        yield GaugeMetricFamily(
            "distributary_active_controller",
            "1 when this broker is the cluster's controller (a single node is its own).",
            value=1 if view.controller else 0,
        )
        yield GaugeMetricFamily(
            "distributary_offline_partitions",
            "Partitions with no leader, as the controller sees them (0 on other brokers).",
            value=view.offline,
        )
        yield CounterMetricFamily(
            "distributary_isr_shrinks",
            "ISR shrinks this broker wrote as a partition's leader.",
            value=counters.isr_shrinks,
        )
        yield CounterMetricFamily(
            "distributary_isr_expands",
            "ISR expansions this broker wrote as a partition's leader.",
            value=counters.isr_expands,
        )
        elections = CounterMetricFamily(
            "distributary_leader_elections",
            "Leader elections this broker wrote as controller, by how the leader was "
            "chosen (clean: from the ISR; elr: from the eligible leader replicas; "
            "preferred; unclean; unclean_recovery: from the last known ELR).",
            labels=["kind"],
        )
        for kind, count in counters.leader_elections.items():
            elections.add_metric([kind], count)
        yield elections


def _add_histogram(family: HistogramMetricFamily, labels: list[str], counts: BucketCounts) -> None:
    family.add_metric(labels, counts.cumulative(), counts.sum)
