"""The async SDK when things go wrong: broker restarts and crashes, unknown topics, no broker."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio

from client import (
    Admin,
    BrokerUnavailableError,
    Consumer,
    NewTopic,
    Producer,
    RecordMetadata,
    TopicPartition,
    UnknownTopicOrPartitionError,
)


async def consume_all(address: str, tp: TopicPartition, count: int) -> list[tuple[int, bytes]]:
    async with Consumer(address, auto_offset_reset="earliest") as consumer:
        await consumer.assign([tp])
        got: list[tuple[int, bytes]] = []
        while len(got) < count:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, f"only {len(got)} of {count} records came back"
            got.extend((r.offset, r.value) for r in batch[tp])
        return got


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL])
async def test_acknowledged_records_survive_a_restart(broker: Any, stop_signal: int) -> None:
    """Proves every acknowledged record is still there after SIGTERM / SIGKILL, offsets continue."""
    with trio.fail_after(60):
        tp = TopicPartition("durable", 0)
        async with Admin(broker.address) as admin:
            await admin.create_topics([NewTopic("durable", 1)])
        async with Producer(broker.address) as producer:
            first = await producer.send_many("durable", [f"a{i}".encode() for i in range(500)])
        assert [m.offset for m in first] == list(range(500))
        if stop_signal == signal.SIGKILL:
            broker.kill()
        else:
            assert broker.stop(stop_signal) == 0
        await trio.to_thread.run_sync(broker.start)
        async with Producer(broker.address) as producer:
            second = await producer.send_many("durable", [f"b{i}".encode() for i in range(100)])
        assert [m.offset for m in second] == list(range(500, 600))
        records = await consume_all(broker.address, tp, 600)
        expected = [f"a{i}".encode() for i in range(500)] + [f"b{i}".encode() for i in range(100)]
        assert records == list(enumerate(expected))


async def test_producer_retries_through_a_broker_restart_in_order(broker: Any) -> None:
    """Proves the producer rides out a broker crash with retries and keeps per-partition order."""
    with trio.fail_after(60):
        tp = TopicPartition("steady", 0)
        async with Admin(broker.address) as admin:
            await admin.create_topics([NewTopic("steady", 1)])
        acknowledged: list[RecordMetadata] = []
        async with Producer(
            broker.address, linger_ms=1, retries_max=30, retry_backoff_ms=50
        ) as producer:

            async def produce() -> None:
                for index in range(400):
                    acknowledged.append(await producer.send("steady", str(index).encode()))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                while len(acknowledged) < 100:
                    await trio.sleep(0.01)
                await trio.to_thread.run_sync(broker.kill)
                await trio.sleep(0.5)
                await trio.to_thread.run_sync(broker.start)
        assert len(acknowledged) == 400
        offsets = [m.offset for m in acknowledged]
        assert offsets == sorted(offsets) and len(set(offsets)) == 400
        records = await consume_all(broker.address, tp, offsets[-1] + 1)
        values = [int(value) for _offset, value in records]
        # At least once: a batch resent after the crash may appear twice, never out of order.
        first_seen = list(dict.fromkeys(values))
        assert first_seen == list(range(400))
        for metadata, index in zip(acknowledged, range(400), strict=True):
            assert values[metadata.offset] == index


async def test_unknown_topic_is_a_typed_error_when_auto_create_is_off(
    broker_factory: Callable[..., Any],
) -> None:
    """Proves producing to or assigning a missing topic raises UnknownTopicOrPartitionError."""
    broker = broker_factory(config={"auto_create_topics": False})
    with trio.fail_after(30):
        async with Producer(broker.address, allow_auto_create_topics=True) as producer:
            with pytest.raises(UnknownTopicOrPartitionError):
                await producer.send("nowhere", b"x")
        async with Consumer(broker.address) as consumer:
            with pytest.raises(UnknownTopicOrPartitionError):
                await consumer.assign(["nowhere"])
        async with Admin(broker.address) as admin:
            with pytest.raises(UnknownTopicOrPartitionError):
                await admin.delete_topics(["nowhere"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_broker_raises_broker_unavailable() -> None:
    """Proves no raw OSError leaks: every client raises BrokerUnavailableError, promptly."""
    address = f"127.0.0.1:{free_port()}"
    with trio.fail_after(30):
        async with Admin(address, reconnect_attempts_max=2) as admin:
            with pytest.raises(BrokerUnavailableError):
                await admin.list_topics()
        async with Producer(address, reconnect_attempts_max=2) as producer:
            with pytest.raises(BrokerUnavailableError):
                await producer.send("t", b"x")
        async with Consumer(address, reconnect_attempts_max=2) as consumer:
            with pytest.raises(BrokerUnavailableError):
                await consumer.assign(["t"])


async def test_in_flight_requests_fail_typed_when_the_broker_dies(broker: Any) -> None:
    """Proves a consumer long-polling when the broker is killed gets typed errors, then recovers."""
    with trio.fail_after(40):
        async with Admin(broker.address) as admin:
            await admin.create_topics([NewTopic("poll", 1)])
        async with Consumer(broker.address, fetch_max_wait_ms=5000) as consumer:
            await consumer.assign([TopicPartition("poll", 0)])
            await consumer.seek_to_end()
            assert await consumer.getmany(timeout_ms=200) == {}
            await trio.to_thread.run_sync(broker.kill)
            await trio.to_thread.run_sync(broker.start)
            async with Producer(broker.address) as producer:
                await producer.send("poll", b"after")
            for _ in range(50):
                try:
                    batch = await consumer.getmany(timeout_ms=1000)
                except BrokerUnavailableError:
                    continue
                if batch:
                    break
            else:
                raise AssertionError("the consumer never recovered")
            assert [r.value for r in batch[TopicPartition("poll", 0)]] == [b"after"]


async def test_idempotent_producer_pipelines_batches_and_keeps_order_through_a_restart(
    broker: Any,
) -> None:
    """Proves the idempotent producer (the default), allowed 5 batches of one partition
    in flight, pipelines them and writes every record exactly once, in order, through a
    broker crash."""
    with trio.fail_after(60):
        tp = TopicPartition("pipelined", 0)
        async with Admin(broker.address) as admin:
            await admin.create_topics([NewTopic("pipelined", 1)])
        count = 20_000
        handles = []
        most_in_flight = 0
        async with Producer(
            broker.address,
            linger_ms=0,
            batch_bytes_max=2_000,
            retries_max=30,
            retry_backoff_ms=50,
            inflight_batches_per_partition_max=5,
        ) as producer:
            assert producer.idempotent and producer.producer_id >= 0
            partition_states = producer._accumulator._partitions

            async def produce() -> None:
                for index in range(count):
                    handles.append(
                        await producer.enqueue("pipelined", str(index).encode(), partition=0)
                    )

            async def watch() -> None:
                nonlocal most_in_flight
                while True:
                    for state in partition_states.values():
                        most_in_flight = max(most_in_flight, state.inflight)
                    await trio.sleep(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                async with trio.open_nursery() as producing:
                    producing.start_soon(produce)
                    while len(handles) < count // 4:
                        await trio.sleep(0.001)
                    await trio.to_thread.run_sync(broker.kill)
                    await trio.sleep(0.3)
                    await trio.to_thread.run_sync(broker.start)
                await producer.flush()
                nursery.cancel_scope.cancel()
            acknowledged = [await handle for handle in handles]
        assert most_in_flight > 1
        offsets = [m.offset for m in acknowledged]
        assert offsets == sorted(offsets) and len(set(offsets)) == count
        records = await consume_all(broker.address, tp, offsets[-1] + 1)
        values = [int(value) for _offset, value in records]
        # The broker rebuilt producer state from its log on restart: a batch resent
        # across it is recognized, so every record is there once, in order.
        assert values == list(range(count))
        for metadata, index in zip(acknowledged, range(count), strict=True):
            assert values[metadata.offset] == index


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL])
async def test_idempotent_producer_sends_again_after_a_restart_exactly_once(
    broker: Any, stop_signal: int
) -> None:
    """Proves one idempotent producer that sends, sees the broker restart, then sends
    again (same producer id and sequences going on) has every record written once, in
    order, at the offsets its handles report."""
    with trio.fail_after(60):
        tp = TopicPartition("again", 0)
        async with Admin(broker.address) as admin:
            await admin.create_topics([NewTopic("again", 1)])
        async with Producer(
            broker.address,
            linger_ms=0,
            batch_bytes_max=2_000,
            retries_max=30,
            retry_backoff_ms=50,
            inflight_batches_per_partition_max=5,
        ) as producer:
            assert producer.idempotent
            first = await producer.send_many("again", [f"a{i}".encode() for i in range(300)])
            if stop_signal == signal.SIGKILL:
                await trio.to_thread.run_sync(broker.kill)
            else:
                assert await trio.to_thread.run_sync(broker.stop, stop_signal) == 0
            await trio.to_thread.run_sync(broker.start)
            second = await producer.send_many("again", [f"b{i}".encode() for i in range(300)])
        assert [m.offset for m in first + second] == list(range(600))
        records = await consume_all(broker.address, tp, 600)
        expected = [f"a{i}".encode() for i in range(300)] + [f"b{i}".encode() for i in range(300)]
        assert records == list(enumerate(expected))
