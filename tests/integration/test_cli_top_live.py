"""``distributary top`` against a real broker: ``--once --json`` shows its topics, groups
and requests (found from --bootstrap: the broker's port + 1), and a session shows the
broker DOWN while it is stopped and comes back when it restarts."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import trio
from test_cli_commands import Cli

from client import Admin, Consumer, NewTopic, Producer
from client.cli.top import TopSession

BrokerFactory = Callable[..., Any]


def free_port_pair() -> int:
    """A port P such that P and P + 1 are both free now (the broker and its metrics)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two free ports in a row")


async def produce_and_consume(address: str) -> None:
    """300 records to "orders" (2 partitions); group "billing" reads and commits 100."""
    async with Admin(address) as admin:
        await admin.create_topics([NewTopic("orders", 2)])
    async with Producer(address) as producer:
        await producer.send_many("orders", [b"order"] * 300, partition=0)
    async with Consumer(address, group="billing", auto_offset_reset="earliest") as consumer:
        await consumer.subscribe(["orders"])
        taken = 0
        while taken < 100:
            batch = await consumer.getmany(timeout_ms=5_000, max_records=100 - taken)
            assert batch, "no records within 5 s"
            taken += sum(len(records) for records in batch.values())
        await consumer.commit()


async def test_once_json_reports_topics_groups_and_requests(
    broker_factory: BrokerFactory,
) -> None:
    """Proves `top --once --json --bootstrap HOST:PORT` reads the metrics on port + 1 and
    prints one view: the topic with its partitions, the group with its lag, rates over
    the interval, the APIs that were called, and no partition under-replicated or
    offline."""
    port = free_port_pair()
    broker = broker_factory(args=["--listen", f"127.0.0.1:{port}", "--metrics-listen", "auto"])
    assert broker.port == port and broker.metrics_address == f"127.0.0.1:{port + 1}"
    with trio.fail_after(60):
        await produce_and_consume(broker.address)
        result = await trio.to_thread.run_sync(
            lambda: Cli(broker.address).run("top", "--once", "--json", "--interval", "0.5")
        )
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["up"] is True and view["version"]
    assert 0.4 < view["interval_s"] < 30
    topics = {row["topic"]: row for row in view["topics"]}
    orders = topics["orders"]
    assert orders["partitions"] == 2 and orders["log_bytes"] > 0
    assert orders["in_records_per_s"] == 0.0  # nothing produced during the interval
    groups = {row["group"]: row for row in view["groups"]}
    assert groups["billing"]["lag_records"] == 200
    assert groups["billing"]["members"] == 0  # the consumer left
    assert groups["billing"]["lag_seconds"] >= 0
    apis = {row["api"] for row in view["apis"]}
    assert {"produce", "fetch", "offset_commit"} <= apis
    assert view["connections"] >= 0 and view["resident_bytes"] > 0
    assert view["under_replicated_partitions"] == 0 and view["offline_partitions"] == 0


async def test_top_shows_the_broker_down_and_reconnects(broker_factory: BrokerFactory) -> None:
    """Proves a top session shows the broker DOWN while it is stopped (and `top --once`
    exits 1 saying so), then shows it up again after it restarted on the same address."""
    broker = broker_factory()
    address = broker.metrics_address  # kept across restarts
    assert address is not None
    with trio.fail_after(60):
        limits = httpx.Limits(max_keepalive_connections=0)  # as the top command
        async with httpx.AsyncClient(limits=limits) as client:
            session = TopSession(client, address)
            assert (await session.view()).up
            await trio.to_thread.run_sync(broker.stop)
            down = await session.view()
            assert not down.up and down.error == "connection refused"
            result = await trio.to_thread.run_sync(
                lambda: Cli(broker.address).run("top", "--metrics", address, "--once", "--json")
            )
            assert result.returncode == 1
            printed = json.loads(result.stdout)
            assert printed["up"] is False and printed["error"] == "connection refused"
            await trio.to_thread.run_sync(broker.start)
            back = await session.view()
            assert back.up and back.interval_s is None  # rates start afresh
            again = await session.view()
            assert again.up and again.interval_s is not None
