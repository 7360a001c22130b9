"""The shipped dashboard and rules against a real Prometheus scraping a real broker.

A broker takes traffic (a producer, a consumer group that commits part of it), a
Prometheus (the Debian ``prometheus`` binary, on a free port, in a temporary
directory) scrapes its metrics endpoint every second and evaluates
deploy/prometheus/rules.yml, and every query of every panel of
deploy/grafana/dashboards/distributary.json is run through Prometheus's HTTP API:
each must parse and return data.  Skipped without the binary.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from deploy_files import MISSING_PROMETHEUS, PROMETHEUS, PROMETHEUS_DIR, dashboard_queries

from client import Admin, Consumer, NewTopic, Producer

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason=MISSING_PROMETHEUS)

BrokerFactory = Callable[..., Any]
# Long enough for every query to see its series (rates need two samples at the
# 1 s scrape interval), short enough to fail fast when a query never will.
QUERIES_DEADLINE_S = 60.0
# Rates over this window: several 1 s scrapes.
RATE_INTERVAL = "15s"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrometheusProcess:
    """One Prometheus scraping ``target`` every second, with the shipped rules."""

    def __init__(self, work_dir: Path, target: str) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_DIR / "rules.yml")],
            "scrape_configs": [
                {"job_name": "distributary", "static_configs": [{"targets": [target]}]}
            ],
        }
        config_path = work_dir / "prometheus.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = work_dir / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={work_dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, client: httpx.Client, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                if client.get(f"{self.url}/-/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("prometheus not ready:\n" + self.log_path.read_text())

    def query(self, client: httpx.Client, expr: str) -> list[Any]:
        """The result of an instant query.  Raises AssertionError when Prometheus
        refuses it (a parse error)."""
        response = client.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[Any] = body["data"]["result"]
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[str], PrometheusProcess]]:
    started: list[PrometheusProcess] = []

    def factory(target: str) -> PrometheusProcess:
        work_dir = tmp_path / f"prometheus-{len(started)}"
        work_dir.mkdir()
        process = PrometheusProcess(work_dir, target)
        started.append(process)
        return process

    yield factory
    for process in started:
        process.stop()


async def traffic(address: str) -> None:
    """A topic with records in and out, and group "billing" with members that
    committed part of it (so it has lag)."""
    async with Admin(address) as admin:
        await admin.create_topics([NewTopic("orders", 2)])
    async with Producer(address) as producer:
        await producer.send_many("orders", [b"order"] * 500, partition=0)
    async with Consumer(address, group="billing", auto_offset_reset="earliest") as consumer:
        await consumer.subscribe(["orders"])
        taken = 0
        while taken < 200:
            batch = await consumer.getmany(timeout_ms=5_000, max_records=200 - taken)
            assert batch, "no records within 5 s"
            taken += sum(len(records) for records in batch.values())
        await consumer.commit()


def test_every_dashboard_query_returns_data_from_a_live_prometheus(
    broker_factory: BrokerFactory, prometheus_factory: Callable[[str], PrometheusProcess]
) -> None:
    """Proves every panel query of the dashboard parses and returns at least one series
    from a Prometheus scraping a broker that took traffic, and that Prometheus loaded
    and evaluates every shipped rule without error."""
    broker = broker_factory()
    metrics_address = broker.metrics_address
    assert metrics_address is not None
    prometheus = prometheus_factory(metrics_address)
    trio.run(traffic, broker.address)
    queries = dashboard_queries(RATE_INTERVAL)
    assert len(queries) >= 15
    with httpx.Client(timeout=10.0) as client:
        prometheus.wait_ready(client)
        waiting = {expr: title for title, expr in queries}
        deadline = time.monotonic() + QUERIES_DEADLINE_S
        while waiting and time.monotonic() < deadline:
            for expr in list(waiting):
                if prometheus.query(client, expr):
                    del waiting[expr]
            if waiting:
                time.sleep(0.5)  # the next scrape, a second away, may bring the series
        assert not waiting, f"panels without data: {sorted(waiting.values())}"
        lag = prometheus.query(client, 'distributary:consumer_group_lag:sum{group="billing"}')
        assert [float(series["value"][1]) for series in lag] == [300.0]
        rules = client.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
        evaluated = [rule for group in rules for rule in group["rules"]]
        assert len(evaluated) >= 6
        assert all(rule["health"] == "ok" for rule in evaluated), evaluated
