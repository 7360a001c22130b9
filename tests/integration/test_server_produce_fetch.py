"""A real broker process driven over the wire: topics, produce, fetch, offsets."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from client.errors import ErrorCode
from client.protocol.messages import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    Acks,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    ErrorResponse,
    MetadataRequest,
    MetadataResponse,
    ProduceResponse,
)
from client.records.builder import build_batch
from client.records.header import CRC_AT, BatchHeader, iter_batches

RawFactory = Callable[..., Any]


def batch(count: int, tag: str, size: int = 10, timestamp_ms: int | None = None) -> bytearray:
    return build_batch(
        [f"{tag}-{i}".encode().ljust(size, b".") for i in range(count)],
        timestamp_ms=timestamp_ms,
    )


def offsets_of(response: ProduceResponse | None) -> dict[int, tuple[int, int, int]]:
    assert response is not None
    return {
        p.partition: (p.error_code, p.base_offset, p.last_offset)
        for t in response.topics
        for p in t.partitions
    }


def assert_same_batches(fetched: bytes, sent: list[bytearray], first_offset: int) -> None:
    """Fetched bytes are the sent batches, byte for byte after the stamped fields."""
    headers = iter_batches(fetched)
    assert len(headers) == len(sent)
    offset = first_offset
    for header, original in zip(headers, sent, strict=True):
        assert header.base_offset == offset
        raw = fetched[header.position : header.end]
        assert raw[CRC_AT:] == original[CRC_AT:]
        assert raw[8:12] == original[8:12]
        offset = header.next_offset


def test_produce_and_fetch_several_partitions(broker: Any, raw_client: RawFactory) -> None:
    """Batches produced to three partitions in one request come back byte-identical with
    consecutive offsets per partition, and a second produce continues the offsets."""
    client = raw_client(broker.address)
    assert client.create_topic("orders", 3).topics[0].error_code == 0
    first = {p: [batch(3, f"a{p}"), batch(2, f"b{p}")] for p in range(3)}
    assert offsets_of(client.produce("orders", first)) == {p: (0, 0, 4) for p in range(3)}
    second = {p: [batch(4, f"c{p}")] for p in range(3)}
    assert offsets_of(client.produce("orders", second)) == {p: (0, 5, 8) for p in range(3)}

    body, data = client.fetch("orders", {0: 0, 1: 0, 2: 0})
    for part in body.topics[0].partitions:
        assert part.error_code == 0
        assert part.high_watermark == 9
        assert_same_batches(data[part.partition], first[part.partition] + second[part.partition], 0)
    # From the middle: the batch holding offset 5 onward.
    _, data = client.fetch("orders", {1: 5})
    assert_same_batches(data[1], second[1], 5)


def test_list_offsets_earliest_latest_and_by_time(broker: Any, raw_client: RawFactory) -> None:
    """ListOffsets answers -2 with the log start, -1 with the log end and a time with the
    first batch at or after it (-1 past the newest)."""
    client = raw_client(broker.address)
    client.create_topic("clicks", 1)
    for index, stamp in enumerate([1_000, 2_000, 3_000]):
        client.produce("clicks", {0: [batch(2, f"t{index}", timestamp_ms=stamp)]})
    assert client.list_offsets("clicks", {0: EARLIEST_TIMESTAMP}) == {0: 0}
    assert client.list_offsets("clicks", {0: LATEST_TIMESTAMP}) == {0: 6}
    assert client.list_offsets("clicks", {0: 1_500}) == {0: 2}
    assert client.list_offsets("clicks", {0: 3_000}) == {0: 4}
    assert client.list_offsets("clicks", {0: 99_000}) == {0: -1}


def test_describe_reports_configs_offsets_and_size(broker: Any, raw_client: RawFactory) -> None:
    """DescribeTopics shows the per-topic config overrides, offsets and bytes on disk."""
    client = raw_client(broker.address)
    client.create_topic("metrics", 2, {"retention.ms": "60000", "segment_bytes": "1048576"})
    client.produce("metrics", {1: [batch(5, "m")]})
    described = client.describe("metrics").topics[0]
    assert described.error_code == 0
    assert described.configs["retention_ms"] == "60000"
    assert described.configs["segment_bytes"] == "1048576"
    partitions = {p.partition: p for p in described.partitions}
    assert (partitions[0].log_end_offset, partitions[0].size_bytes) == (0, 0)
    assert partitions[1].log_start_offset == 0
    assert partitions[1].log_end_offset == 5
    assert partitions[1].size_bytes == len(batch(5, "m"))
    assert client.describe("nope").topics[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_long_poll_fetch_returns_when_a_record_arrives(broker: Any, raw_client: RawFactory) -> None:
    """A fetch waiting at the log end answers as soon as another connection produces,
    and an empty long poll answers after max_wait_ms."""
    consumer = raw_client(broker.address)
    producer = raw_client(broker.address)
    consumer.create_topic("events", 1)
    started = time.monotonic()
    body, data = consumer.fetch("events", {0: 0}, max_wait_ms=300)
    assert 0.25 <= time.monotonic() - started < 5
    assert data[0] == b"" and body.topics[0].partitions[0].error_code == 0

    correlation_id = consumer.send_fetch("events", {0: 0}, max_wait_ms=20_000)
    time.sleep(0.3)
    produced_at = time.monotonic()
    sent = batch(3, "late")
    assert offsets_of(producer.produce("events", {0: [sent]})) == {0: (0, 0, 2)}
    _, data = consumer.receive_fetch(correlation_id)
    assert time.monotonic() - produced_at < 5
    assert_same_batches(data[0], [sent], 0)


def test_fetch_sizes(broker: Any, raw_client: RawFactory) -> None:
    """partition_max_bytes caps a partition's share in whole batches, yet a batch bigger
    than every limit still comes back whole so a consumer makes progress."""
    client = raw_client(broker.address)
    client.create_topic("sizes", 1)
    small = [batch(1, f"s{i}", size=900) for i in range(10)]
    client.produce("sizes", {0: small})
    _, data = client.fetch("sizes", {0: 0}, partition_max_bytes=3 * len(small[0]) + 10)
    assert_same_batches(data[0], small[:3], 0)
    big = batch(1, "big", size=200_000)
    client.produce("sizes", {0: [big]})
    _, data = client.fetch("sizes", {0: 10}, max_bytes=1_000, partition_max_bytes=1_000)
    assert_same_batches(data[0], [big], 10)


def test_produce_auto_creates_topic_and_metadata_lists_it(
    broker: Any, raw_client: RawFactory
) -> None:
    """With the default auto_create_topics, producing to an unknown topic creates it with
    one partition; Metadata then lists it with this node as leader."""
    client = raw_client(broker.address)
    assert offsets_of(client.produce("fresh", {0: [batch(1, "x")]})) == {0: (0, 0, 0)}
    body = client.call(MetadataRequest(["fresh"])).body
    assert isinstance(body, MetadataResponse)
    assert body.brokers[0].port == broker.port
    [topic] = body.topics
    assert topic.error_code == 0 and [p.leader for p in topic.partitions] == [0]
    response = client.produce("fresh", {1: [batch(1, "x")]})
    assert offsets_of(response)[1][0] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_auto_create_can_be_turned_off(broker_factory: Any, raw_client: RawFactory) -> None:
    """DISTRIBUTARY_AUTO_CREATE_TOPICS=false makes produce and metadata refuse unknown topics."""
    broker = broker_factory(env={"DISTRIBUTARY_AUTO_CREATE_TOPICS": "false"})
    client = raw_client(broker.address)
    response = client.produce("ghost", {0: [batch(1, "x")]})
    assert offsets_of(response)[0][0] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    body = client.call(MetadataRequest(["ghost"], allow_auto_create=True)).body
    assert isinstance(body, MetadataResponse)
    assert body.topics[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_create_topic_validation(broker: Any, raw_client: RawFactory) -> None:
    """Bad names, partition counts, config keys and duplicates get their own error codes."""
    client = raw_client(broker.address)
    assert client.create_topic("bad/name").topics[0].error_code == ErrorCode.INVALID_TOPIC
    assert client.create_topic("x" * 250).topics[0].error_code == ErrorCode.INVALID_TOPIC
    assert client.create_topic("zero", 0).topics[0].error_code == ErrorCode.INVALID_PARTITIONS
    result = client.create_topic("cfg", 1, {"retention.mss": "1"}).topics[0]
    assert result.error_code == ErrorCode.INVALID_CONFIG and "retention.mss" in result.error_message
    assert client.create_topic("dup").topics[0].error_code == 0
    assert client.create_topic("dup").topics[0].error_code == ErrorCode.TOPIC_ALREADY_EXISTS


def test_delete_topic_removes_its_data(broker: Any, raw_client: RawFactory) -> None:
    """DeleteTopics forgets the topic and removes its partition directories."""
    client = raw_client(broker.address)
    client.create_topic("doomed", 2)
    client.produce("doomed", {0: [batch(2, "d")]})
    assert (broker.data_dir / "doomed-1").is_dir()
    body = client.call(DeleteTopicsRequest(["doomed", "never"])).body
    assert isinstance(body, DeleteTopicsResponse)
    assert [t.error_code for t in body.topics] == [0, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION]
    assert not (broker.data_dir / "doomed-0").exists()
    assert not (broker.data_dir / "doomed-1").exists()
    assert client.describe("doomed").topics[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_corrupt_batch_is_refused_and_not_appended(broker: Any, raw_client: RawFactory) -> None:
    """A batch whose CRC does not match is refused with CORRUPT_BATCH; nothing is appended."""
    client = raw_client(broker.address)
    client.create_topic("crc", 1)
    damaged = batch(2, "x")
    damaged[-1] ^= 0xFF
    assert offsets_of(client.produce("crc", {0: [damaged]}))[0][0] == ErrorCode.CORRUPT_BATCH
    assert client.list_offsets("crc", {0: LATEST_TIMESTAMP}) == {0: 0}
    header = BatchHeader.parse(batch(1, "ok"))
    assert header.record_count == 1


def test_acks_zero_gets_no_response_but_is_appended(broker: Any, raw_client: RawFactory) -> None:
    """A produce with acks=0 is appended and answered with nothing; the next request's
    response is the next frame on the connection."""
    client = raw_client(broker.address)
    client.create_topic("fire", 1)
    client.produce("fire", {0: [batch(2, "f")]}, acks=Acks.NONE)
    hello = client.hello()
    assert not isinstance(hello.body, ErrorResponse)
    assert client.list_offsets("fire", {0: LATEST_TIMESTAMP}) == {0: 2}


def test_retention_runs_in_the_background(broker: Any, raw_client: RawFactory) -> None:
    """The maintenance task enforces a topic's retention on its check interval: old
    sealed segments go and the log start offset moves forward."""
    client = raw_client(broker.address)
    configs = {"segment_bytes": "1024", "retention_ms": "1", "retention_check_interval_ms": "100"}
    client.create_topic("short", 1, configs)
    for index in range(6):
        client.produce("short", {0: [batch(1, f"r{index}", size=600, timestamp_ms=1_000)]})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if client.list_offsets("short", {0: EARLIEST_TIMESTAMP})[0] > 0:
            break
        time.sleep(0.05)
    start = client.list_offsets("short", {0: EARLIEST_TIMESTAMP})[0]
    assert 0 < start <= 6
    assert client.list_offsets("short", {0: LATEST_TIMESTAMP}) == {0: 6}
    broker.wait_for_log("retention")
