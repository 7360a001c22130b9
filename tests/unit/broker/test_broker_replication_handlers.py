"""The leader's side of replication through the request handlers: replica fetches
(epochs, membership, divergence, range, progress), OffsetsForLeaderEpoch and
acks=all, on one broker whose metadata names a follower (node 2) and whose
partition leads with a LeaderState driven through those requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.config import load_config
from broker.fetch import collect_fetch, fetch_now
from broker.handlers import Reply, handle
from broker.metadata_view import LocalMetadataView, PartitionLeadership
from broker.partition import Partition
from broker.produce import append_produce_now, produce_now
from broker.replication.leader_state import LeaderState
from broker.state import Broker
from broker.storage.async_log import AsyncLog
from broker.storage.config import LogConfig
from broker.waiting import WakeReason
from client.errors import ErrorCode
from client.protocol.connection import IncomingRequest
from client.protocol.messages import (
    Acks,
    ApiKey,
    CreatableTopic,
    CreateTopicsRequest,
    FetchPartition,
    FetchPartitionResponse,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsetsTopic,
    OffsetForLeaderEpochPartition,
    OffsetForLeaderEpochPartitionResponse,
    OffsetForLeaderEpochTopic,
    OffsetsForLeaderEpochRequest,
    OffsetsForLeaderEpochResponse,
    ProducePartition,
    ProducePartitionResponse,
    ProduceRequest,
    ProduceResponse,
    ProduceTopic,
    Request,
)
from client.records.builder import build_batch

NODE, FOLLOWER, STRANGER = 0, 2, 7
TOPIC = "r"


def request(body: Request, payload: bytes = b"") -> IncomingRequest:
    api_key = ApiKey(type(body).__struct_config__.tag)  # type: ignore[arg-type]
    return IncomingRequest(api_key, 0, 1, True, body, memoryview(bytearray(payload)))


async def call(broker: Broker, body: Request, payload: bytes = b"") -> Reply:
    reply = await handle(broker, request(body, payload))
    assert reply is not None
    return reply


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    config = load_config(flags={"data_dir": str(tmp_path / "data")}, environ={}).config
    state = await Broker.open(config, clock_ms=lambda: 1_000_000)
    await call(state, CreateTopicsRequest([CreatableTopic(TOPIC, 1)]))
    yield state
    await state.close()


async def lead(
    broker: Broker, *, epoch: int = 1, isr: tuple[int, ...] = (NODE, FOLLOWER), min_isr: int = 2
) -> Partition:
    """Make this broker lead TOPIC/0 in ``epoch`` with FOLLOWER as the other replica."""
    view = broker.metadata
    assert isinstance(view, LocalMetadataView)
    view.set_leadership(TOPIC, 0, PartitionLeadership(NODE, epoch, (NODE, FOLLOWER), isr))
    partition = broker.topics.partition(TOPIC, 0)
    state = LeaderState(
        node_id=NODE,
        leader_epoch=epoch,
        replicas=(NODE, FOLLOWER),
        isr=isr,
        log_end_offset=partition.log_end_offset,
        high_watermark=partition.high_watermark,
        epoch_start_offset=partition.log_end_offset,
        now_ms=1_000_000,
        min_insync_replicas=min_isr,
    )
    await partition.become_leader(epoch, state)
    return partition


def produce_body(acks: int, payload: bytes, timeout_ms: int = 30_000) -> ProduceRequest:
    return ProduceRequest(
        acks=acks,
        timeout_ms=timeout_ms,
        topics=[ProduceTopic(TOPIC, [ProducePartition(0, len(payload))])],
    )


async def produce(broker: Broker, count: int, acks: int = Acks.LEADER) -> ProducePartitionResponse:
    payload = bytes(build_batch([b"x%d" % n for n in range(count)]))
    reply = await call(broker, produce_body(acks, payload), payload)
    assert isinstance(reply.body, ProduceResponse)
    return reply.body.topics[0].partitions[0]


def replica_fetch(
    offset: int,
    *,
    replica_id: int = FOLLOWER,
    current_leader_epoch: int = 1,
    last_fetched_epoch: int = -1,
    max_wait_ms: int = 0,
) -> FetchRequest:
    wanted = FetchPartition(0, offset, 1 << 20, current_leader_epoch, last_fetched_epoch)
    return FetchRequest(
        max_wait_ms=max_wait_ms, topics=[FetchTopic(TOPIC, [wanted])], replica_id=replica_id
    )


async def fetched(broker: Broker, body: FetchRequest) -> tuple[FetchPartitionResponse, int]:
    """The partition's answer and how many payload bytes came with it."""
    reply = await call(broker, body)
    assert isinstance(reply.body, FetchResponse)
    length = reply.payload_length
    reply.release()
    return reply.body.topics[0].partitions[0], length


async def test_replica_fetch_reads_past_the_high_watermark_and_reports_progress(
    broker: Broker,
) -> None:
    """Proves a follower reads up to the log end while consumers see only the high
    watermark, and its next fetch (at the end it appended to) advances the HW."""
    partition = await lead(broker)
    await produce(broker, 3)
    assert (partition.log_end_offset, partition.high_watermark) == (3, 0)
    consumer, consumer_bytes = await fetched(broker, replica_fetch(0, replica_id=-1))
    assert consumer.error_code == 0 and consumer_bytes == 0
    answer, length = await fetched(broker, replica_fetch(0))
    assert answer.error_code == 0 and length == answer.records_bytes > 0
    assert answer.high_watermark == 0
    answer, length = await fetched(broker, replica_fetch(3))
    assert length == 0 and answer.high_watermark == 3 == partition.high_watermark
    partition.check_invariants()


@pytest.mark.parametrize(
    ("epoch", "code"), [(0, ErrorCode.FENCED_LEADER_EPOCH), (2, ErrorCode.UNKNOWN_LEADER_EPOCH)]
)
@pytest.mark.parametrize("replica_id", [FOLLOWER, -1])
async def test_fetch_epoch_checks(broker: Broker, epoch: int, code: int, replica_id: int) -> None:
    """Proves a follower's or consumer's fetch naming another leader epoch is refused,
    naming the leader and its epoch."""
    await lead(broker)
    answer, _ = await fetched(
        broker, replica_fetch(0, replica_id=replica_id, current_leader_epoch=epoch)
    )
    assert (answer.error_code, answer.leader_id, answer.leader_epoch) == (code, NODE, 1)


async def test_fetch_from_a_broker_that_is_not_a_replica(broker: Broker) -> None:
    """Proves a replica fetch from a broker outside the replica set (or from a single
    node's partition, which has no followers) is NOT_REPLICA, never a crash -- also
    when a connection collects it after its wait (collect_fetch)."""
    answer, _ = await fetched(broker, replica_fetch(0, current_leader_epoch=-1))
    assert answer.error_code == ErrorCode.NOT_REPLICA
    collected = collect_fetch(broker, replica_fetch(0, current_leader_epoch=-1))
    assert isinstance(collected.body, FetchResponse)
    assert collected.body.topics[0].partitions[0].error_code == ErrorCode.NOT_REPLICA
    await lead(broker)
    answer, _ = await fetched(broker, replica_fetch(0, replica_id=STRANGER))
    assert answer.error_code == ErrorCode.NOT_REPLICA


async def test_diverging_follower_gets_the_divergence_point(broker: Broker) -> None:
    """Proves a follower whose last epoch ends earlier here than its fetch offset is
    told where (epoch 0 ends at 3), with no records and no progress recorded."""
    await produce(broker, 3)  # epoch 0, offsets 0-2
    partition = await lead(broker)
    await produce(broker, 2)  # epoch 1, offsets 3-4
    answer, length = await fetched(broker, replica_fetch(5, last_fetched_epoch=0))
    assert (answer.diverging_epoch, answer.diverging_end_offset, length) == (0, 3, 0)
    leader_state = partition.leader_state
    assert leader_state is not None and leader_state.follower_log_end_offset(FOLLOWER) == -1
    answer, length = await fetched(broker, replica_fetch(3, last_fetched_epoch=0))
    assert answer.diverging_end_offset == -1 and length > 0


async def test_replica_fetch_out_of_range(broker: Broker) -> None:
    """Proves an offset past the leader's log end is OFFSET_OUT_OF_RANGE, with the
    log start and HW filled in for the follower."""
    await lead(broker)
    await produce(broker, 2)
    answer, _ = await fetched(broker, replica_fetch(9))
    assert (answer.error_code, answer.log_start_offset) == (ErrorCode.OFFSET_OUT_OF_RANGE, 0)


async def test_replica_long_poll_reports_progress_and_waits_for_records(broker: Broker) -> None:
    """Proves a follower's long poll at the log end moves the HW at once, waits (even
    though the HW moved) until records arrive past its offset, then answers."""
    partition = await lead(broker)
    await produce(broker, 2)
    body = replica_fetch(2, max_wait_ms=60_000)
    assert fetch_now(broker, body) is None
    assert partition.high_watermark == 2
    await produce(broker, 1)
    reply = fetch_now(broker, body)
    assert reply is not None and reply.payload_length > 0
    reply.release()


async def offsets_for(
    broker: Broker, epoch: int, *, replica_id: int = FOLLOWER, current_leader_epoch: int = -1
) -> OffsetForLeaderEpochPartitionResponse:
    asked = OffsetForLeaderEpochPartition(0, epoch, current_leader_epoch)
    body = OffsetsForLeaderEpochRequest(
        [OffsetForLeaderEpochTopic(TOPIC, [asked])], replica_id=replica_id
    )
    reply = await call(broker, body)
    assert isinstance(reply.body, OffsetsForLeaderEpochResponse)
    return reply.body.topics[0].partitions[0]


async def test_offsets_for_leader_epoch(broker: Broker) -> None:
    """Proves the answer is where each epoch ends (the log end for the latest), a
    consumer's is capped at the HW, and a stranger or a stale epoch is refused."""
    await produce(broker, 3)
    await lead(broker)
    await produce(broker, 2)
    first = await offsets_for(broker, 0)
    assert (first.error_code, first.leader_epoch, first.end_offset) == (0, 0, 3)
    latest = await offsets_for(broker, 1)
    assert (latest.leader_epoch, latest.end_offset) == (1, 5)
    await fetched(broker, replica_fetch(3))  # the follower has 0-2: HW 3
    consumer = await offsets_for(broker, 1, replica_id=-1)
    assert (consumer.leader_epoch, consumer.end_offset) == (1, 3)
    beyond = await offsets_for(broker, 9)
    assert (beyond.leader_epoch, beyond.end_offset) == (-1, -1)
    assert (await offsets_for(broker, 1, replica_id=STRANGER)).error_code == ErrorCode.NOT_REPLICA
    stale = await offsets_for(broker, 1, current_leader_epoch=0)
    assert stale.error_code == ErrorCode.FENCED_LEADER_EPOCH


async def test_consumer_asks_a_leader_without_a_known_high_watermark(broker: Broker) -> None:
    """Proves a new leader whose HW is below its epoch's start answers a consumer's
    OffsetsForLeaderEpoch with OFFSET_NOT_AVAILABLE (a follower still gets it)."""
    partition = broker.topics.partition(TOPIC, 0)
    await produce(broker, 3)
    await partition.become_follower(0)
    partition.set_follower_high_watermark(1)
    await lead(broker)
    consumer = await offsets_for(broker, 0, replica_id=-1)
    assert consumer.error_code == ErrorCode.OFFSET_NOT_AVAILABLE
    assert (await offsets_for(broker, 0)).error_code == 0


async def test_acks_all_waits_for_the_follower(broker: Broker) -> None:
    """Proves an acks=all produce is appended at once but answered only when the
    follower's fetch moves the HW past it, and never takes the no-wait path."""
    partition = await lead(broker)
    payload = bytes(build_batch([b"a", b"b"]))
    assert produce_now(broker, produce_body(Acks.ALL, payload), memoryview(payload)) is None
    answers: list[ProducePartitionResponse] = []

    async def produce_all() -> None:
        answers.append(await produce(broker, 2, Acks.ALL))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce_all)
        await trio.testing.wait_all_tasks_blocked()
        assert partition.log_end_offset == 2 and not answers
        await fetched(broker, replica_fetch(2))
    assert [(a.error_code, a.base_offset, a.last_offset) for a in answers] == [(0, 0, 1)]


async def test_acks_all_is_appended_without_a_scheduler_pass(broker: Broker) -> None:
    """Proves an acks=all produce to a partition with followers is appended on the
    no-wait path (no checkpoint: the follower's parked fetch is woken at once) and
    its answer waits for the fetch that acknowledges it: the HW moves on that
    fetch, not later."""
    partition = await lead(broker)
    woken: list[WakeReason] = []

    class Parked:
        def wake(self, reason: WakeReason) -> None:
            woken.append(reason)

    partition.add_waiter(Parked())
    payload = bytearray(build_batch([b"a", b"b"]))
    with trio.testing.assert_no_checkpoints():
        appended = append_produce_now(broker, produce_body(Acks.ALL, payload), memoryview(payload))
    assert appended is not None
    response, pending = appended
    assert pending is not None and partition.log_end_offset == 2
    assert woken == [WakeReason.APPENDED] and partition.high_watermark == 0
    answer = response.topics[0].partitions[0]
    assert (answer.error_code, answer.base_offset, answer.last_offset) == (0, 0, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pending.wait)
        await trio.testing.wait_all_tasks_blocked()
        assert nursery.child_tasks  # still waiting for the follower
        await fetched(broker, replica_fetch(2))
        assert partition.high_watermark == 2
    assert answer.error_code == 0


async def test_acks_all_no_wait_path_refuses_and_defers(broker: Broker) -> None:
    """Proves the no-wait acks=all path refuses below min ISR without appending,
    answers at once without followers, and leaves a held append lock to the
    general path (None, nothing done)."""
    partition = await lead(broker, isr=(NODE,), min_isr=2)
    payload = bytearray(build_batch([b"a"]))
    appended = append_produce_now(broker, produce_body(Acks.ALL, payload), memoryview(payload))
    assert appended is not None and appended[1] is None
    assert appended[0].topics[0].partitions[0].error_code == ErrorCode.NOT_ENOUGH_REPLICAS
    assert partition.log_end_offset == 0
    await partition.become_leader(2, None)
    payload = bytearray(build_batch([b"a"]))
    appended = append_produce_now(broker, produce_body(Acks.ALL, payload), memoryview(payload))
    assert appended is not None and appended[1] is None
    assert partition.high_watermark == 1
    await partition._append_lock.acquire()
    payload = bytearray(build_batch([b"a"]))
    assert append_produce_now(broker, produce_body(Acks.ALL, payload), memoryview(payload)) is None
    partition._append_lock.release()
    assert partition.log_end_offset == 1


async def test_acks_all_refused_below_min_isr(broker: Broker) -> None:
    """Proves acks=all is refused with NOT_ENOUGH_REPLICAS before appending when the
    ISR is below min.insync.replicas, while acks=leader still appends."""
    partition = await lead(broker, isr=(NODE,), min_isr=2)
    refused = await produce(broker, 1, Acks.ALL)
    assert refused.error_code == ErrorCode.NOT_ENOUGH_REPLICAS and partition.log_end_offset == 0
    assert (await produce(broker, 1, Acks.LEADER)).error_code == 0
    assert partition.log_end_offset == 1


async def test_acks_all_after_append_when_the_isr_shrinks(broker: Broker) -> None:
    """Proves an acks=all batch whose HW is reached while the maximal ISR falls below
    the minimum is answered NOT_ENOUGH_REPLICAS_AFTER_APPEND."""
    partition = await lead(broker)
    answers: list[ProducePartitionResponse] = []

    async def produce_all() -> None:
        answers.append(await produce(broker, 1, Acks.ALL))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce_all)
        await trio.testing.wait_all_tasks_blocked()
        leader_state = partition.leader_state
        assert leader_state is not None
        partition.follower_fetched(FOLLOWER, 1, now_ms=1_000_001)
        leader_state.isr_committed((NODE,))  # in the same step, before the answer
    assert answers[0].error_code == ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND


async def test_acks_all_times_out(broker: Broker) -> None:
    """Proves acks=all answers REQUEST_TIMED_OUT for its partition when the follower
    does not confirm the batch within the request's timeout_ms."""
    await lead(broker)
    payload = bytes(build_batch([b"a"]))
    reply = await call(broker, produce_body(Acks.ALL, payload, timeout_ms=50), payload)
    assert isinstance(reply.body, ProduceResponse)
    assert reply.body.topics[0].partitions[0].error_code == ErrorCode.REQUEST_TIMED_OUT


async def test_acks_all_fails_when_leadership_is_lost(broker: Broker) -> None:
    """Proves a waiting acks=all produce answers NOT_LEADER as soon as the partition
    becomes a follower."""
    partition = await lead(broker)
    answers: list[ProducePartitionResponse] = []

    async def produce_all() -> None:
        answers.append(await produce(broker, 1, Acks.ALL))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce_all)
        await trio.testing.wait_all_tasks_blocked()
        await partition.become_follower(2)
    assert answers[0].error_code == ErrorCode.NOT_LEADER


async def test_acks_all_without_followers_answers_at_once(broker: Broker) -> None:
    """Proves acks=all on a partition without a leader state (one replica) answers at
    once on the no-wait path, as acks=leader does."""
    payload = bytes(build_batch([b"a"]))
    produced = produce_now(broker, produce_body(Acks.ALL, payload), memoryview(bytearray(payload)))
    assert produced is not None and produced.topics[0].partitions[0].error_code == 0
    assert broker.topics.partition(TOPIC, 0).high_watermark == 1


async def test_followers_do_not_read_an_append_waiting_for_its_fsync(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proves that under the every-append flush policy a follower neither reads nor
    claims (OFFSET_OUT_OF_RANGE, no crash) a batch whose fsync is still running,
    and reads it once the append completes."""
    partition = await lead(broker)
    partition.set_config(LogConfig.from_mapping({"flush_policy": "every-append"}))
    release = trio.Event()
    original_flush = AsyncLog.flush

    async def held_flush(self: AsyncLog) -> int:
        await release.wait()
        return await original_flush(self)

    monkeypatch.setattr(AsyncLog, "flush", held_flush)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce, broker, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert partition.log_end_offset == 1
        answer, length = await fetched(broker, replica_fetch(0))
        assert (answer.error_code, length) == (0, 0)
        answer, _ = await fetched(broker, replica_fetch(1))
        assert answer.error_code == ErrorCode.OFFSET_OUT_OF_RANGE
        release.set()
    answer, length = await fetched(broker, replica_fetch(0))
    assert answer.error_code == 0 and length > 0


async def test_consumer_long_poll_with_a_stale_epoch_answers_at_once(broker: Broker) -> None:
    """Proves a consumer's long poll at the HW naming an old leader epoch is answered
    now with FENCED_LEADER_EPOCH, not after its max wait."""
    await lead(broker)
    body = replica_fetch(0, replica_id=-1, current_leader_epoch=0, max_wait_ms=60_000)
    reply = fetch_now(broker, body)
    assert reply is not None and isinstance(reply.body, FetchResponse)
    assert reply.body.topics[0].partitions[0].error_code == ErrorCode.FENCED_LEADER_EPOCH
    current = replica_fetch(0, replica_id=-1, current_leader_epoch=1, max_wait_ms=60_000)
    assert fetch_now(broker, current) is None


async def test_list_offsets_latest_waits_for_a_known_high_watermark(broker: Broker) -> None:
    """Proves ListOffsets latest to a new leader whose HW is below its epoch's start
    is OFFSET_NOT_AVAILABLE, and the HW once the follower's fetch moved it there."""
    partition = broker.topics.partition(TOPIC, 0)
    await produce(broker, 3)
    await partition.become_follower(0)
    partition.set_follower_high_watermark(1)
    await lead(broker)
    body = ListOffsetsRequest([ListOffsetsTopic(TOPIC, [ListOffsetsPartition(0, -1)])])
    reply = await call(broker, body)
    assert isinstance(reply.body, ListOffsetsResponse)
    assert reply.body.topics[0].partitions[0].error_code == ErrorCode.OFFSET_NOT_AVAILABLE
    await fetched(broker, replica_fetch(3))
    reply = await call(broker, body)
    assert isinstance(reply.body, ListOffsetsResponse)
    assert reply.body.topics[0].partitions[0].offset == 3


@pytest.mark.parametrize(
    ("epoch", "code"),
    [(0, ErrorCode.FENCED_LEADER_EPOCH), (2, ErrorCode.UNKNOWN_LEADER_EPOCH), (1, 0), (-1, 0)],
)
async def test_list_offsets_epoch_checks(broker: Broker, epoch: int, code: int) -> None:
    """Proves ListOffsets naming another leader epoch than the partition's is
    refused as a fetch is (KIP-320), and answered with the current one or none."""
    await lead(broker)
    await produce(broker, 2)
    body = ListOffsetsRequest(
        [ListOffsetsTopic(TOPIC, [ListOffsetsPartition(0, -2, current_leader_epoch=epoch)])]
    )
    reply = await call(broker, body)
    assert isinstance(reply.body, ListOffsetsResponse)
    answer = reply.body.topics[0].partitions[0]
    assert answer.error_code == code
    assert answer.offset == (0 if code == 0 else -1)


async def test_fetch_from_an_earlier_incarnation_is_ignored(broker: Broker) -> None:
    """Proves the follower's broker epoch reaches the leader state: once a later
    incarnation of the follower fetched, a late fetch of an earlier one claiming
    more of the log does not move the HW (KIP-903)."""
    partition = await lead(broker)
    await produce(broker, 3)
    restarted = replica_fetch(0)
    restarted.replica_epoch = 9
    await fetched(broker, restarted)
    assert partition.high_watermark == 0
    stale = replica_fetch(3)
    stale.replica_epoch = 8
    await fetched(broker, stale)
    assert partition.high_watermark == 0
    current = replica_fetch(3)
    current.replica_epoch = 9
    await fetched(broker, current)
    assert partition.high_watermark == 3


async def test_closed_partition_answers_its_error(broker: Broker) -> None:
    """Proves OffsetsForLeaderEpoch and a replica fetch to a closed partition answer
    UNKNOWN_TOPIC_OR_PARTITION rather than an answer from its leftover epoch cache."""
    partition = await lead(broker)
    await produce(broker, 2)
    await partition.close()
    assert (await offsets_for(broker, 1)).error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    answer, _ = await fetched(broker, replica_fetch(5, last_fetched_epoch=0))
    assert answer.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
