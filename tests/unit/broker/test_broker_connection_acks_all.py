"""An acks=all Produce on one connection: it waits for the followers without
stalling the requests behind it, whose answers still leave in request order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.config import load_config
from broker.connection import ConnectionHandler
from broker.metadata_view import LocalMetadataView, PartitionLeadership
from broker.replication.leader_state import LeaderState
from broker.state import Broker
from client.protocol.connection import ClientConnection, IncomingResponse
from client.protocol.messages import (
    Acks,
    HelloRequest,
    HelloResponse,
    ProducePartition,
    ProduceRequest,
    ProduceResponse,
    ProduceTopic,
)
from client.records.builder import build_batch

NODE, FOLLOWER = 0, 2


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[Broker]:
    config = load_config(flags={"data_dir": str(tmp_path)}, environ={}).config
    opened = await Broker.open(config, clock_ms=lambda: 1_000)
    await opened.topics.create("r", 1, {})
    view = opened.metadata
    assert isinstance(view, LocalMetadataView)
    view.set_leadership("r", 0, PartitionLeadership(NODE, 1, (NODE, FOLLOWER), (NODE, FOLLOWER)))
    partition = opened.topics.partition("r", 0)
    await partition.become_leader(
        1,
        LeaderState(
            node_id=NODE,
            leader_epoch=1,
            replicas=(NODE, FOLLOWER),
            isr=(NODE, FOLLOWER),
            log_end_offset=0,
            high_watermark=0,
            epoch_start_offset=0,
            now_ms=1_000,
            min_insync_replicas=2,
        ),
    )
    yield opened
    await opened.close()


async def next_response(stream: trio.SocketStream, client: ClientConnection) -> IncomingResponse:
    while True:  # bounded by fail_after in the test
        response = client.next_response()
        if response is not None:
            return response
        data = await stream.receive_some(65536)
        assert data, "connection closed"
        client.receive_data(data)


async def test_acks_all_does_not_stall_the_requests_behind(state: Broker) -> None:
    """Proves the produce behind a waiting acks=all one is appended meanwhile, and
    once the follower confirms both, the three answers leave in request order."""
    partition = state.topics.partition("r", 0)
    payload = bytes(build_batch([b"a"]))
    client = ClientConnection()
    server_socket, client_socket = trio.socket.socketpair()
    stream = trio.SocketStream(client_socket)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handler = ConnectionHandler(state, trio.SocketStream(server_socket), "test-peer")
            nursery.start_soon(handler.run)
            sent = []
            for acks in (Acks.ALL, Acks.LEADER):
                body = ProduceRequest(
                    acks=acks, topics=[ProduceTopic("r", [ProducePartition(0, len(payload))])]
                )
                correlation_id, head = client.send_request(body, len(payload))
                await stream.send_all(head + payload)
                sent.append(correlation_id)
            correlation_id, head = client.send_request(HelloRequest("x"))
            await stream.send_all(head)
            sent.append(correlation_id)
            await trio.testing.wait_all_tasks_blocked()
            assert partition.log_end_offset == 2 and partition.high_watermark == 0
            partition.follower_fetched(FOLLOWER, 2, now_ms=1_001)
            answers = [await next_response(stream, client) for _ in sent]
            assert [a.correlation_id for a in answers] == sent
            first, second, hello = (a.body for a in answers)
            assert isinstance(first, ProduceResponse) and isinstance(second, ProduceResponse)
            assert [(p.error_code, p.base_offset) for p in first.topics[0].partitions] == [(0, 0)]
            assert [(p.error_code, p.base_offset) for p in second.topics[0].partitions] == [(0, 1)]
            assert isinstance(hello, HelloResponse)
            await stream.aclose()
