"""Fetch traffic: a Fetch answer's records and bytes, added to its partitions' counters.

Produce traffic is counted where a batch is appended (broker/partition.py); a
Fetch is counted when its answer is final (broker/connection.py), not when it
is collected, because a collected answer below ``min_bytes`` is dropped and
collected again later.  Per answered partition with records, never per record:
the records of a partition's answer are the offsets it moves the consumer on
(the region's next offset minus the fetch offset).  A follower's fetch is
replication, not consumer traffic: it is not counted.
"""

from __future__ import annotations

from broker.storage.file_handle import FileRegion
from broker.topics import TopicManager
from client.protocol.messages import FetchRequest, FetchResponse


def count_fetched(
    topics: TopicManager, body: FetchRequest, response: FetchResponse, regions: list[FileRegion]
) -> None:
    """Add ``response`` (the answer to ``body``, whose offsets are resolved; its
    partitions with records own ``regions``, in order) to the partitions' traffic."""
    if not regions or body.replica_id >= 0:
        return
    next_region = iter(regions)
    for wanted_topic, answered_topic in zip(body.topics, response.topics, strict=True):
        topic = None
        for wanted, answered in zip(
            wanted_topic.partitions, answered_topic.partitions, strict=True
        ):
            if not answered.records_bytes:
                continue
            region = next(next_region)
            if topic is None:
                topic = topics.get(answered_topic.name)
            if topic is None or not 0 <= wanted.partition < len(topic.partitions):
                continue  # deleted meanwhile
            records = region.next_offset - max(wanted.fetch_offset, region.base_offset)
            topic.partitions[wanted.partition].traffic.fetched(records, answered.records_bytes)
