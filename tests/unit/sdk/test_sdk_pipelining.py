"""Several batches of one partition in flight (``inflight_batches_per_partition_max``
> 1) on the asyncio path, where batches leave by plain calls: from ``enqueue``
when a batch opens, and from the response callback that frees a slot.  Driven
without sockets: a fake connection records what is written, and answers are
handed to the callbacks the sender registered."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from client._io.event_loop import LoopEvent
from client._io.pending_response import PendingResponse
from client.accumulator import RecordAccumulator
from client.protocol.connection import IncomingResponse
from client.protocol.messages import (
    ApiKey,
    ProducePartitionResponse,
    ProduceRequest,
    ProduceResponse,
    ProduceTopicResponse,
)
from client.records.header import iter_batches
from client.sender import Sender

INFLIGHT_MAX = 5


class Written:
    """One Produce request the fake connection took, and the callback its answer goes to."""

    def __init__(
        self,
        request: ProduceRequest,
        payload: list[bytearray],
        on_done: Callable[[PendingResponse], None],
    ) -> None:
        self.request = request
        self.on_done = on_done
        (header,) = iter_batches(memoryview(b"".join(payload)))  # verifies the CRC
        self.base_sequence = header.base_sequence
        self.record_count = header.record_count

    @property
    def partition(self) -> int:
        return self.request.topics[0].partitions[0].partition


class FakeConnection:
    """Always writable (an asyncio connection with room in its write buffer)."""

    writable_now = True

    def __init__(self) -> None:
        self.written: list[Written] = []

    def send_nowait(
        self,
        body: ProduceRequest,
        payload: list[bytearray],
        *,
        on_done: Callable[[PendingResponse], None] | None = None,
        **_: Any,
    ) -> PendingResponse:
        assert on_done is not None
        self.written.append(Written(body, payload, on_done))
        return PendingResponse(len(self.written), 0.0, 1_000, event_class=_no_event)


class FakeCluster:
    """Every partition led by node 0, over one connection."""

    def __init__(self) -> None:
        self.connection = FakeConnection()

    def open_leader_connection(self, topic: str, partition: int) -> FakeConnection:
        return self.connection

    def open_connection_for_node(self, node_id: int) -> FakeConnection:
        return self.connection

    def leader_for(self, topic: str, partition: int) -> int:
        return 0


def _no_event() -> LoopEvent:
    raise AssertionError("nobody waits in these tests")


class Harness:
    """An idempotent accumulator (linger_ms=0) and its sender, parked as on asyncio."""

    def __init__(self) -> None:
        self.accumulator = RecordAccumulator(
            batch_bytes_max=10_000,
            linger_ms=0,
            buffer_bytes_max=1 << 20,
            inflight_batches_per_partition_max=INFLIGHT_MAX,
            producer_id=7,
        )
        self.sender = Sender(
            self.accumulator,
            acks=-1,
            request_timeout_ms=1_000,
            request_bytes_max=1 << 20,
            retries_max=3,
            delivery_timeout_ms=1_000_000,
            retry_backoff_ms=0,
            retry_backoff_max_ms=0,
            clock_ms=lambda: 0,
            rng=random.Random(1),
            on_woken=self._woken,
        )
        self.cluster = FakeCluster()
        self.wakes = 0
        # What Sender.start and a parked sender task set up on asyncio.
        self.sender._cluster = self.cluster  # type: ignore[assignment]
        self.sender._writes_nowait = True
        self.sender._parked = True

    def _woken(self) -> None:
        self.wakes += 1

    @property
    def written(self) -> list[Written]:
        return self.cluster.connection.written

    def enqueue(self, value: bytes, partition: int = 0) -> None:
        """What Producer.send_nowait does with a record."""
        _, _, opened = self.accumulator.append("t", partition, value, None, (), 0, 0)
        if opened:
            self.sender.batch_opened("t", partition, 0)
        self.accumulator.check_invariants()

    def answer(self, written: Written, base_offset: int) -> None:
        """The broker acknowledges ``written``, through the sender's callback."""
        part = ProducePartitionResponse(written.partition, base_offset=base_offset)
        body = ProduceResponse([ProduceTopicResponse("t", [part])])
        pending = PendingResponse(0, 0.0, 1_000, event_class=_no_event)
        pending.resolve(IncomingResponse(0, int(ApiKey.PRODUCE), body, memoryview(b"")))
        written.on_done(pending)
        self.accumulator.check_invariants()


def test_batches_of_one_partition_leave_before_the_first_answer() -> None:
    """With 5 allowed in flight, each new batch leaves at once, without waiting
    for the answers of those before it, and in sequence order."""
    harness = Harness()
    for index in range(INFLIGHT_MAX):
        harness.enqueue(b"r%d" % index)
    assert len(harness.written) == INFLIGHT_MAX
    assert [written.base_sequence for written in harness.written] == list(range(INFLIGHT_MAX))
    assert harness.wakes == 0  # sent from the enqueue itself, no sender task needed


def test_an_answer_sends_the_waiting_batch_from_its_callback() -> None:
    """At the limit, records gather in the open batch; the first answer sends that
    batch at once from the response callback (not later from the sender task),
    and the records that came meanwhile all ride in it."""
    harness = Harness()
    for index in range(INFLIGHT_MAX):
        harness.enqueue(b"r%d" % index)
    harness.enqueue(b"late-1")
    harness.enqueue(b"late-2")
    assert len(harness.written) == INFLIGHT_MAX  # the limit holds
    harness.answer(harness.written[0], base_offset=0)
    assert len(harness.written) == INFLIGHT_MAX + 1
    assert harness.written[-1].record_count == 2
    assert harness.written[-1].base_sequence == INFLIGHT_MAX
    assert harness.wakes == 0


def test_answers_in_any_number_keep_the_pipe_full() -> None:
    """Answered one by one, every answer frees exactly one slot and the next batch
    takes it: the partition stays at its limit while records keep coming."""
    harness = Harness()
    for index in range(INFLIGHT_MAX):
        harness.enqueue(b"r%d" % index)
    for index in range(20):
        harness.enqueue(b"more%d" % index)
        harness.answer(harness.written[index], base_offset=index)
        assert harness.accumulator.pending_count == INFLIGHT_MAX
    assert len(harness.written) == INFLIGHT_MAX + 20
    assert [written.base_sequence for written in harness.written] == list(range(INFLIGHT_MAX + 20))
