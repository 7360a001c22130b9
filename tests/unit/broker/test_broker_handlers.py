"""Request handlers over a real Broker state in a temp dir, without sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.config import load_config
from broker.fetch import caught_up, fetch_now
from broker.groups.config import OFFSETS_TOPIC
from broker.groups.records import partition_for_group
from broker.handlers import Reply, handle
from broker.metadata_view import LocalMetadataView, PartitionLeadership
from broker.partition import Partition
from broker.state import Broker
from client.errors import ErrorCode, InvalidRequestError
from client.protocol.connection import IncomingRequest
from client.protocol.messages import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    Acks,
    ApiKey,
    ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
    CreatableTopic,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    FetchPartition,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    HelloRequest,
    HelloResponse,
    ListGroupsRequest,
    ListGroupsResponse,
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsetsTopic,
    MetadataRequest,
    MetadataResponse,
    ProducePartition,
    ProduceRequest,
    ProduceResponse,
    ProduceTopic,
    Request,
)
from client.records.builder import BatchBuilder, build_batch
from client.records.header import CRC_AT, iter_batches


def request(body: Request, payload: bytes = b"", *, wants_response: bool = True) -> IncomingRequest:
    api_key = ApiKey(type(body).__struct_config__.tag)  # type: ignore[arg-type]
    return IncomingRequest(api_key, 0, 1, wants_response, body, memoryview(bytearray(payload)))


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    config = load_config(
        flags={"data_dir": str(tmp_path / "data")},
        environ={"DISTRIBUTARY_LIMITS__FETCH_BYTES_MAX": "100000"},
    ).config
    state = await Broker.open(config, clock_ms=lambda: 1_000_000)
    yield state
    await state.close()


async def call(broker: Broker, body: Request, payload: bytes = b"") -> Reply:
    reply = await handle(broker, request(body, payload))
    assert reply is not None
    return reply


async def produce(broker: Broker, topic: str, parts: dict[int, bytes]) -> ProduceResponse:
    body = ProduceRequest(
        topics=[ProduceTopic(topic, [ProducePartition(p, len(d)) for p, d in parts.items()])]
    )
    reply = await call(broker, body, b"".join(parts.values()))
    assert isinstance(reply.body, ProduceResponse)
    return reply.body


def fetch_request(topic: str, offsets: dict[int, int], **options: int) -> FetchRequest:
    partition_max_bytes = options.pop("partition_max_bytes", 1 << 20)
    partitions = [FetchPartition(p, o, partition_max_bytes) for p, o in offsets.items()]
    return FetchRequest(topics=[FetchTopic(topic, partitions)], **options)


async def test_hello_advertises_limits(broker: Broker) -> None:
    """Hello tells the client the frame and in-flight limits it must respect."""
    reply = await call(broker, HelloRequest("t"))
    assert isinstance(reply.body, HelloResponse)
    assert reply.body.frame_bytes_max == broker.limits.frame_bytes_max
    assert reply.body.inflight_requests_max == broker.limits.inflight_requests_max
    assert {v.api_key for v in reply.body.api_versions} == {int(k) for k in ApiKey}


async def test_produce_then_fetch_regions(broker: Broker) -> None:
    """Produce assigns consecutive offsets; Fetch returns file regions covering them."""
    await call(broker, CreateTopicsRequest([CreatableTopic("t", 2)]))
    first, second = build_batch([b"a", b"b"]), build_batch([b"c"])
    response = await produce(broker, "t", {0: bytes(first + second), 1: bytes(first)})
    offsets = {p.partition: (p.base_offset, p.last_offset) for p in response.topics[0].partitions}
    assert offsets == {0: (0, 2), 1: (0, 1)}
    reply = await call(broker, fetch_request("t", {0: 0, 1: 2}))
    assert isinstance(reply.body, FetchResponse)
    parts = reply.body.topics[0].partitions
    assert [p.records_bytes for p in parts] == [len(first) + len(second), 0]
    assert [p.high_watermark for p in parts] == [3, 2]
    assert reply.payload_length == len(first) + len(second)
    data = reply.regions[0].read_bytes()
    headers = iter_batches(data)
    assert [h.base_offset for h in headers] == [0, 2]
    assert data[CRC_AT : len(first)] == first[CRC_AT:]
    assert data[len(first) + CRC_AT :] == second[CRC_AT:]
    reply.release()


async def test_fetch_first_batch_whole_then_budget(broker: Broker) -> None:
    """The first batch comes back whole even past max_bytes; a later partition that would
    overflow the budget is left for the next fetch."""
    await call(broker, CreateTopicsRequest([CreatableTopic("big", 2)]))
    large = build_batch([bytes(5_000)])
    await produce(broker, "big", {0: bytes(large), 1: bytes(large)})
    reply = await call(broker, fetch_request("big", {0: 0, 1: 0}, max_bytes=100))
    assert isinstance(reply.body, FetchResponse)
    assert [p.records_bytes for p in reply.body.topics[0].partitions] == [len(large), 0]
    reply.release()


async def test_fetch_bytes_max_caps_max_bytes(broker: Broker) -> None:
    """limits.fetch_bytes_max (100000 here) wins over a bigger max_bytes."""
    await call(broker, CreateTopicsRequest([CreatableTopic("cap", 1)]))
    batch = bytes(build_batch([bytes(10_000)]))
    await produce(broker, "cap", {0: batch * 20})
    reply = await call(broker, fetch_request("cap", {0: 0}, max_bytes=50 << 20))
    assert len(batch) * 9 <= reply.payload_length <= 100_000
    reply.release()


async def test_long_poll_wakes_on_append(broker: Broker) -> None:
    """A fetch at the log end sleeps until an append, not until max_wait_ms."""
    await call(broker, CreateTopicsRequest([CreatableTopic("poll", 1)]))
    results: list[Reply] = []

    async def poll() -> None:
        results.append(await call(broker, fetch_request("poll", {0: 0}, max_wait_ms=60_000)))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.testing.wait_all_tasks_blocked()  # parked
            assert results == []
            await produce(broker, "poll", {0: bytes(build_batch([b"x"]))})
    assert results[0].payload_length > 0
    results[0].release()


async def test_long_poll_times_out_empty_and_shutdown_ends_it(broker: Broker) -> None:
    """An empty long poll answers after max_wait_ms; shutdown answers it at once."""
    await call(broker, CreateTopicsRequest([CreatableTopic("idle", 1)]))
    started = trio.current_time()
    reply = await call(broker, fetch_request("idle", {0: 0}, max_wait_ms=100))
    assert reply.payload_length == 0 and trio.current_time() - started >= 0.1
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, broker, fetch_request("idle", {0: 0}, max_wait_ms=60_000))
            await trio.testing.wait_all_tasks_blocked()  # parked
            broker.begin_shutdown()


async def test_fetch_errors_answer_immediately(broker: Broker) -> None:
    """Unknown partitions and offsets out of range are per-partition errors, no waiting."""
    await call(broker, CreateTopicsRequest([CreatableTopic("e", 1)]))
    with trio.fail_after(2):
        reply = await call(broker, fetch_request("e", {0: 7, 3: 0}, max_wait_ms=30_000))
    assert isinstance(reply.body, FetchResponse)
    codes = [p.error_code for p in reply.body.topics[0].partitions]
    assert codes == [ErrorCode.OFFSET_OUT_OF_RANGE, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION]


async def test_list_offsets(broker: Broker) -> None:
    """Earliest and latest track the log; a time finds the first batch reaching it,
    with its first record's timestamp; past the last record: -1 and -1; a negative
    non-special time is an error."""
    await produce(broker, "auto", {0: bytes(build_batch([b"1", b"2"], timestamp_ms=500))})
    await produce(broker, "auto", {0: bytes(build_batch([b"3"], timestamp_ms=900))})
    body = ListOffsetsRequest(
        [
            ListOffsetsTopic(
                "auto",
                [
                    ListOffsetsPartition(0, t)
                    for t in (EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, 400, 600, 5000, -7)
                ],
            )
        ]
    )
    reply = await call(broker, body)
    assert isinstance(reply.body, ListOffsetsResponse)
    parts = reply.body.topics[0].partitions
    assert [p.offset for p in parts[:5]] == [0, 3, 0, 2, -1]
    assert [p.timestamp_ms for p in parts[:5]] == [-1, -1, 500, 900, -1]
    assert parts[5].error_code == ErrorCode.INVALID_REQUEST


async def test_metadata_auto_create_only_when_allowed(broker: Broker) -> None:
    """Metadata creates a missing topic only if the request allows it."""
    reply = await call(broker, MetadataRequest(["m1"], allow_auto_create=False))
    assert isinstance(reply.body, MetadataResponse)
    assert reply.body.topics[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    reply = await call(broker, MetadataRequest(["m1"], allow_auto_create=True))
    assert isinstance(reply.body, MetadataResponse)
    assert reply.body.topics[0].error_code == 0
    assert len(reply.body.topics[0].partitions) == broker.config.default_partitions


async def test_create_topics_validate_only_and_default_partitions(broker: Broker) -> None:
    """validate_only checks without creating; partitions=-1 means the default count."""
    reply = await call(broker, CreateTopicsRequest([CreatableTopic("v", 2)], validate_only=True))
    assert isinstance(reply.body, CreateTopicsResponse) and reply.body.topics[0].error_code == 0
    assert broker.topics.get("v") is None
    await call(broker, CreateTopicsRequest([CreatableTopic("d", -1)]))
    topic = broker.topics.get("d")
    assert topic is not None and len(topic.partitions) == 1
    reply = await call(broker, CreateTopicsRequest([CreatableTopic("r", 1, replication_factor=3)]))
    assert isinstance(reply.body, CreateTopicsResponse)
    assert reply.body.topics[0].error_code == ErrorCode.INVALID_REPLICATION_FACTOR


async def test_acks_zero_returns_nothing(broker: Broker) -> None:
    """A fire-and-forget produce is appended and produces no reply."""
    data = bytes(build_batch([b"z"]))
    body = ProduceRequest(
        acks=Acks.NONE, topics=[ProduceTopic("f", [ProducePartition(0, len(data))])]
    )
    assert await handle(broker, request(body, data, wants_response=False)) is None
    assert broker.topics.partition("f", 0).log_end_offset == 1


async def test_payload_mismatch_is_a_whole_request_error(broker: Broker) -> None:
    """records_bytes that do not add up to the payload fail the whole request."""
    body = ProduceRequest(topics=[ProduceTopic("x", [ProducePartition(0, 999)])])
    with pytest.raises(InvalidRequestError):
        await handle(broker, request(body, b"short"))


async def test_group_requests_and_the_internal_offsets_topic(broker: Broker) -> None:
    """Group APIs are dispatched; __consumer_offsets is created on first use, reported
    internal, and refuses produce and delete from clients."""
    await call(broker, CreateTopicsRequest([CreatableTopic("t", 2)]))
    joined = (
        await call(broker, ConsumerGroupHeartbeatRequest("g", subscribed_topic_names=["t"]))
    ).body
    assert isinstance(joined, ConsumerGroupHeartbeatResponse) and joined.error_code == 0
    listed = (await call(broker, ListGroupsRequest())).body
    assert isinstance(listed, ListGroupsResponse)
    assert [(g.group_id, g.member_count) for g in listed.groups] == [("g", 1)]
    metadata = (await call(broker, MetadataRequest(["__consumer_offsets"]))).body
    assert isinstance(metadata, MetadataResponse) and metadata.topics[0].internal
    produced = await produce(broker, "__consumer_offsets", {0: bytes(build_batch([b"x"]))})
    assert produced.topics[0].partitions[0].error_code == ErrorCode.INVALID_TOPIC
    deleted = (await call(broker, DeleteTopicsRequest(["__consumer_offsets"]))).body
    assert isinstance(deleted, DeleteTopicsResponse)
    assert deleted.topics[0].error_code == ErrorCode.INVALID_TOPIC


def sequenced_batch(values: list[bytes], base_sequence: int, producer_id: int = 42) -> bytes:
    builder = BatchBuilder(producer_id=producer_id, producer_epoch=0, base_sequence=base_sequence)
    for value in values:
        builder.append(value, None, (), 1_000)
    return bytes(builder.build())


async def test_idempotent_produce_drops_duplicates_and_refuses_gaps(broker: Broker) -> None:
    """A resent batch answers its first offsets without a second copy; a gap is
    OUT_OF_ORDER_SEQUENCE; several batches in one payload are checked in order."""
    await call(broker, CreateTopicsRequest([CreatableTopic("t", 1)]))
    first, second = sequenced_batch([b"a", b"b"], 0), sequenced_batch([b"c"], 2)

    def offsets(response: ProduceResponse) -> tuple[int, int, int]:
        part = response.topics[0].partitions[0]
        return part.error_code, part.base_offset, part.last_offset

    assert offsets(await produce(broker, "t", {0: first})) == (0, 0, 1)
    assert offsets(await produce(broker, "t", {0: first})) == (0, 0, 1)
    gap = sequenced_batch([b"z"], 5)
    assert offsets(await produce(broker, "t", {0: gap}))[0] == ErrorCode.OUT_OF_ORDER_SEQUENCE
    assert offsets(await produce(broker, "t", {0: first + second})) == (0, 0, 2)
    third = sequenced_batch([b"d"], 3)
    assert offsets(await produce(broker, "t", {0: second + third})) == (0, 2, 3)
    plain = bytes(build_batch([b"e"]))
    assert offsets(await produce(broker, "t", {0: plain})) == (0, 4, 4)
    assert offsets(await produce(broker, "t", {0: plain})) == (0, 5, 5)  # no producer id
    reply = await call(broker, fetch_request("t", {0: 0}))
    data = reply.regions[0].read_bytes()
    assert [h.base_offset for h in iter_batches(data)] == [0, 2, 3, 4, 5]
    reply.release()


async def test_idempotent_state_survives_a_reopen(tmp_path: Path) -> None:
    """After a restart the broker rebuilds producer state from the log tail: a batch
    resent across it is still a duplicate, and a gap is still refused."""
    config = load_config(flags={"data_dir": str(tmp_path / "data")}, environ={}).config
    batch = sequenced_batch([b"a", b"b"], 0)
    state = await Broker.open(config, clock_ms=lambda: 1_000_000)
    try:
        await call(state, CreateTopicsRequest([CreatableTopic("t", 1)]))
        await produce(state, "t", {0: bytes(build_batch([b"x"]))})
        first = (await produce(state, "t", {0: batch})).topics[0].partitions[0]
        assert (first.error_code, first.base_offset) == (0, 1)
    finally:
        await state.close()
    state = await Broker.open(config, clock_ms=lambda: 1_000_000)
    try:
        again = (await produce(state, "t", {0: batch})).topics[0].partitions[0]
        assert (again.error_code, again.base_offset, again.last_offset) == (0, 1, 2)
        gap = (await produce(state, "t", {0: sequenced_batch([b"c"], 9)})).topics[0].partitions[0]
        assert gap.error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE
        after = (await produce(state, "t", {0: sequenced_batch([b"c"], 2)})).topics[0].partitions[0]
        assert (after.error_code, after.base_offset) == (0, 3)
    finally:
        await state.close()


async def test_a_partition_led_elsewhere_answers_not_leader(broker: Broker) -> None:
    """With the metadata view saying node 7 leads t/1, Produce, Fetch and
    ListOffsets of t/1 answer NOT_LEADER while t/0 works, and Metadata names
    node 7 with its epoch, replicas and ISR."""
    await call(broker, CreateTopicsRequest([CreatableTopic("t", 2)]))
    view = broker.metadata
    assert isinstance(view, LocalMetadataView)
    view.add_broker(7, "10.0.0.7", 9392)
    view.set_leadership("t", 1, PartitionLeadership(7, 3, (7, 0), (7,)))
    batch = bytes(build_batch([b"x"]))
    produced = await produce(broker, "t", {0: batch, 1: batch})
    codes = [p.error_code for p in produced.topics[0].partitions]
    assert codes == [0, ErrorCode.NOT_LEADER]
    reply = await call(broker, fetch_request("t", {0: 0, 1: 0}, max_wait_ms=0))
    assert isinstance(reply.body, FetchResponse)
    assert [p.error_code for p in reply.body.topics[0].partitions] == [0, ErrorCode.NOT_LEADER]
    reply.release()
    listed = await call(
        broker, ListOffsetsRequest([ListOffsetsTopic("t", [ListOffsetsPartition(1, -1)])])
    )
    assert isinstance(listed.body, ListOffsetsResponse)
    assert listed.body.topics[0].partitions[0].error_code == ErrorCode.NOT_LEADER
    metadata = await call(broker, MetadataRequest(["t"]))
    assert isinstance(metadata.body, MetadataResponse)
    assert [b.node_id for b in metadata.body.brokers] == [broker.config.node_id, 7]
    led = metadata.body.topics[0].partitions[1]
    assert (led.leader, led.leader_epoch, led.replicas, led.isr) == (7, 3, [7, 0], [7])


async def test_consumers_see_records_up_to_the_high_watermark(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fetch, its high_watermark field, the long-poll check and ListOffsets
    latest read the high watermark, not the log end: with the watermark held one
    batch behind, a fetch there finds nothing and latest is the watermark."""
    await produce(broker, "hw", {0: bytes(build_batch([b"a"]))})
    await produce(broker, "hw", {0: bytes(build_batch([b"b"]))})
    partition = broker.topics.partition("hw", 0)
    assert partition.log_end_offset == 2
    monkeypatch.setattr(Partition, "high_watermark", property(lambda self: 1))
    reply = await call(broker, fetch_request("hw", {0: 1}, max_wait_ms=0))
    assert isinstance(reply.body, FetchResponse)
    result = reply.body.topics[0].partitions[0]
    assert (result.error_code, result.records_bytes, result.high_watermark) == (0, 0, 1)
    body = fetch_request("hw", {0: 1}, max_wait_ms=60_000)
    assert caught_up(broker, body)
    assert fetch_now(broker, body) is None  # it would wait for the watermark
    listed = await call(
        broker,
        ListOffsetsRequest([ListOffsetsTopic("hw", [ListOffsetsPartition(0, LATEST_TIMESTAMP)])]),
    )
    assert isinstance(listed.body, ListOffsetsResponse)
    assert listed.body.topics[0].partitions[0].offset == 1


async def test_find_coordinator_names_the_offsets_partition_leader(broker: Broker) -> None:
    """FindCoordinator answers with the leader of the group's __consumer_offsets
    partition, as the metadata view has it."""
    view = broker.metadata
    assert isinstance(view, LocalMetadataView)
    reply = await call(broker, FindCoordinatorRequest("g"))
    assert isinstance(reply.body, FindCoordinatorResponse)
    assert reply.body.node_id == broker.config.node_id
    view.add_broker(9, "10.0.0.9", 9000)
    index = partition_for_group("g", broker.config.groups.offsets_topic_partitions)
    view.set_leadership(OFFSETS_TOPIC, index, PartitionLeadership(9, 1, (9,), (9,)))
    reply = await call(broker, FindCoordinatorRequest("g"))
    assert isinstance(reply.body, FindCoordinatorResponse)
    assert (reply.body.node_id, reply.body.host, reply.body.port) == (9, "10.0.0.9", 9000)
