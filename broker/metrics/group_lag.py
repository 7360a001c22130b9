"""Consumer-group lag, computed by the coordinator when Prometheus scrapes.

For every committed offset of every group this broker coordinates:

- **lag in records**: the partition's high watermark minus the committed offset
  (as kafka_exporter's ``kafka_consumergroup_lag``; never below 0);
- **lag in seconds**: the age of the oldest record the group has not consumed --
  now minus the first timestamp of the batch holding the committed offset (the
  log start, if retention has deleted that far) -- 0 when caught up.  One batch
  header read per lagging partition (batch granularity: records are never
  decoded), so a batch's first record stands for the batch.

Both need the partition's log, so they are reported only for partitions this
broker has open and leads; the committed offset is reported for every
committed partition.  Nothing here awaits: it runs inside the collector, on
the event loop, between two scheduler steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from broker.groups.group import Group
from broker.partition import Partition
from broker.state import Broker
from client.errors import DistributaryError


class PartitionLag(NamedTuple):
    """One group's position on one partition; ``lag_records`` and ``lag_seconds``
    are None when this broker cannot compute them (see the module docstring)."""

    group: str
    topic: str
    partition: int
    committed_offset: int
    lag_records: int | None
    lag_seconds: float | None


def coordinated_groups(broker: Broker) -> list[Group]:
    """Every group this broker coordinates, by id."""
    coordinator = broker.groups.coordinator
    groups = (coordinator.group(listing.group_id) for listing in coordinator.list_groups())
    return [group for group in groups if group is not None]


def group_lags(broker: Broker, groups: list[Group], now_ms: int) -> Iterator[PartitionLag]:
    """The lag of every committed offset of ``groups``, at ``now_ms``."""
    topics = broker.topics
    leads = broker.metadata.leads
    for group in groups:
        for (topic, index), committed in sorted(group.offsets.items()):
            offset = committed.offset
            found = topics.get(topic)
            partition: Partition | None = None
            if found is not None and 0 <= index < len(found.partitions) and leads(topic, index):
                partition = found.partitions[index]
            if partition is None or partition.closed:
                yield PartitionLag(group.group_id, topic, index, offset, None, None)
                continue
            high_watermark = partition.high_watermark
            yield PartitionLag(
                group.group_id,
                topic,
                index,
                offset,
                max(0, high_watermark - offset),
                oldest_unconsumed_age_s(partition, offset, high_watermark, now_ms),
            )


def oldest_unconsumed_age_s(
    partition: Partition, committed: int, high_watermark: int, now_ms: int
) -> float | None:
    """Seconds since the oldest record at or after ``committed`` (below the high
    watermark) was written: 0.0 when there is none, None when the log cannot say
    (a truncation runs, a read failed).  A timestamp in the future counts as 0."""
    offset = max(committed, partition.log_start_offset)
    if offset >= high_watermark:
        return 0.0
    try:
        timestamp_ms = partition.batch_timestamp_ms(offset)
    except DistributaryError:
        return None
    if timestamp_ms is None:
        return None
    return max(0, now_ms - timestamp_ms) / 1000
