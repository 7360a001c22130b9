"""The metrics endpoint of a real ``distributary serve`` process: exact counters,
consumer lag, hostile HTTP clients, and promtool's lint.  Scrapes are parsed with
prometheus-client's parser."""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.metrics.endpoint import REQUEST_HEAD_BYTES_MAX, SCRAPES_MAX
from broker.testing import BrokerProcess
from client.sync import Admin, Consumer, Producer

pytestmark = pytest.mark.timeout(90)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SESSION_TIMEOUT_MS = 2_000
HEARTBEAT_INTERVAL_MS = 200


def scrape_text(broker: BrokerProcess, accept: str | None = None) -> str:
    """One GET /metrics; raises OSError when the endpoint does not answer."""
    address = broker.metrics_address
    assert address is not None, "the broker serves no metrics"
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/metrics", headers={"accept": accept} if accept else {})
        response = connection.getresponse()
        body = response.read().decode()
        assert response.status == 200, (response.status, body)
        return body
    finally:
        connection.close()


def scrape(broker: BrokerProcess) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(scrape_text(broker)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= series)


def wait_for(
    broker: BrokerProcess, predicate: Callable[[Samples], bool], timeout_s: float = 20
) -> Samples:
    """Scrape until ``predicate`` holds; the last scrape."""
    deadline = time.monotonic() + timeout_s
    while True:  # until the predicate holds or the deadline passes
        samples = scrape(broker)
        if predicate(samples):
            return samples
        assert time.monotonic() < deadline, "metrics never reached the expected state"
        time.sleep(0.1)


def produce(broker: BrokerProcess, topic: str, count: int, start: int = 0) -> None:
    with Producer(broker.address) as producer:
        values = [b"value-%d" % n for n in range(start, start + count)]
        keys = [b"k%d" % n for n in range(start, start + count)]
        for _ in producer.send_many(topic, values, keys=keys, timeout=30):
            pass


def consume(broker: BrokerProcess, topic: str, group: str, count: int) -> None:
    """Consume ``count`` records as a member of ``group``, commit, leave."""
    with Consumer(
        broker.address,
        group=group,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    ) as consumer:
        consumer.subscribe([topic])
        consumer.wait_for_assignment(timeout=10)
        taken = list(consumer.records(idle_timeout=1.0, max_records=count))
        assert len(taken) == count
        consumer.commit()


def test_the_address_is_logged_and_kept_across_restarts(broker: BrokerProcess) -> None:
    """The "serving metrics" line gives the endpoint's address (a free port when
    the broker's is 0); a restart keeps it, and the scrape works after it."""
    event = broker.wait_for_log("serving metrics")
    assert event["address"] == broker.metrics_address
    assert event["path"] == "/metrics"
    first = broker.metrics_address
    assert "distributary_build_info" in scrape_text(broker)
    broker.restart()
    assert broker.metrics_address == first
    samples = scrape(broker)
    assert value(samples, "distributary_recovery_duration_seconds") >= 0


def test_metrics_listen_off(broker_factory: Callable[..., BrokerProcess]) -> None:
    """``--metrics-listen off``: no endpoint, no "serving metrics" line."""
    broker = broker_factory(args=["--metrics-listen", "off"])
    assert broker.metrics_address is None
    assert not any(e.get("event") == "serving metrics" for e in broker.log_events())


def test_counters_equal_what_was_produced_and_consumed(broker: BrokerProcess) -> None:
    """Produced and fetched records and bytes per topic are exact; so are the
    partition gauges, the committed offsets and a lag of zero after the group
    consumed everything."""
    with Admin(broker.address) as admin:
        admin.create_topic("metered", 3)
    produce(broker, "metered", 300)
    consume(broker, "metered", "meters", 300)
    samples = scrape(broker)
    size = total(samples, "distributary_log_size_bytes", topic="metered")
    assert size > 0
    assert value(samples, "distributary_produced_records_total", topic="metered") == 300
    assert value(samples, "distributary_produced_bytes_total", topic="metered") == size
    assert value(samples, "distributary_fetched_records_total", topic="metered") == 300
    assert value(samples, "distributary_fetched_bytes_total", topic="metered") == size
    assert total(samples, "distributary_partition_high_watermark", topic="metered") == 300
    assert total(samples, "distributary_partition_log_end_offset", topic="metered") == 300
    group = {"group": "meters", "topic": "metered"}
    assert total(samples, "distributary_consumer_group_committed_offset", **group) == 300
    assert total(samples, "distributary_consumer_group_lag", **group) == 0
    assert total(samples, "distributary_consumer_group_lag_seconds", **group) == 0
    assert value(samples, "distributary_requests_total", api="produce", outcome="ok") >= 1
    assert value(samples, "distributary_requests_total", api="offset_commit", outcome="ok") >= 1
    assert value(samples, "distributary_group_rebalances_total", group="meters") >= 1
    assert value(samples, "distributary_connections_opened_total") >= 2


def test_lag_rises_while_the_group_is_stopped_and_returns_to_zero(broker: BrokerProcess) -> None:
    """While no member consumes, lag in records is what was produced since the
    commit and lag in seconds grows with the age of the oldest unconsumed record;
    once a member catches up and commits, both are 0."""
    with Admin(broker.address) as admin:
        admin.create_topic("readings", 2)
    produce(broker, "readings", 50)
    consume(broker, "readings", "sink", 50)
    produce(broker, "readings", 40, start=50)
    group = {"group": "sink", "topic": "readings"}
    stopped = wait_for(
        broker, lambda s: total(s, "distributary_consumer_group_lag_seconds", **group) > 0
    )
    assert total(stopped, "distributary_consumer_group_lag", **group) == 40
    assert value(stopped, "distributary_consumer_group_members", group="sink") == 0
    first_age = max(
        v
        for (name, labels), v in stopped.items()
        if name == "distributary_consumer_group_lag_seconds" and ("group", "sink") in labels
    )
    older = wait_for(
        broker,
        lambda s: (
            max(
                v
                for (name, labels), v in s.items()
                if name == "distributary_consumer_group_lag_seconds" and ("group", "sink") in labels
            )
            >= first_age + 1
        ),
    )
    assert total(older, "distributary_consumer_group_lag", **group) == 40
    consume(broker, "readings", "sink", 40)
    caught_up = scrape(broker)
    assert total(caught_up, "distributary_consumer_group_lag", **group) == 0
    assert total(caught_up, "distributary_consumer_group_lag_seconds", **group) == 0


def test_limit_hits_are_counted(broker: BrokerProcess) -> None:
    """A frame declaring more than frame_bytes_max closes its connection and counts
    one frame_bytes_max hit."""
    with socket.create_connection((broker.host, broker.port), timeout=10) as raw:
        raw.sendall((1 << 31).to_bytes(4, "big"))
        assert raw.recv(1) == b""  # closed by the broker
    samples = wait_for(
        broker,
        lambda s: value(s, "distributary_limit_hits_total", limit="frame_bytes_max") == 1,
    )
    assert value(samples, "distributary_limit_hits_total", limit="connections_max") == 0


def _hostile(host: str, port: int, payload: bytes, trickle: bool, stop: threading.Event) -> None:
    """One hostile client: garbage, an oversized head, or a slow trickle."""
    try:
        with socket.create_connection((host, port), timeout=10) as raw:
            if not trickle:
                raw.sendall(payload)
                raw.recv(65536)
                return
            # One byte every 0.5 s, for up to a minute, until the server hangs up.
            for byte in payload[:120]:
                if stop.is_set():
                    return
                raw.sendall(bytes([byte]))
                time.sleep(0.5)
    except OSError:
        return  # reset or closed by the server: what we expect


def test_the_endpoint_survives_hostile_clients_while_a_producer_is_served(
    broker: BrokerProcess,
) -> None:
    """Garbage, oversized and trickling (slowloris) HTTP clients and many concurrent
    scrapes hit the endpoint while a producer keeps producing: every record is
    acknowledged, every scrape eventually answers (retrying when the endpoint is
    full), and afterwards the counts are exact."""
    assert broker.metrics_address is not None
    host, port_text = broker.metrics_address.rsplit(":", 1)
    port = int(port_text)
    with Admin(broker.address) as admin:
        admin.create_topic("steady", 1)
    stop = threading.Event()
    garbage = [
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(256)),  # TLS hello
        b"GET /metrics HTTP/1.1\r\n" + b"x: " + b"a" * (4 * REQUEST_HEAD_BYTES_MAX),
        b"BREW /metrics HTCPCP/1.0\r\n\r\n",
    ]
    slow = b"GET /metrics HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 100
    # More trickling clients than the endpoint takes at once (slowloris).
    attacks = [(payload, False) for payload in garbage * 4] + [(slow, True)] * (2 * SCRAPES_MAX)
    threads = [
        threading.Thread(target=_hostile, args=(host, port, payload, trickle, stop))
        for payload, trickle in attacks
    ]
    produced: list[int] = []

    def producer() -> None:
        for round_ in range(20):
            produce(broker, "steady", 50, start=round_ * 50)
            produced.append(50)

    scrapes_ok: list[int] = []

    def scraper() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                scrape_text(broker)
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)  # refused while the endpoint was full: retry
                continue
            scrapes_ok.append(1)
            return

    scrapers = [threading.Thread(target=scraper) for _ in range(3 * SCRAPES_MAX)]
    producing = threading.Thread(target=producer)
    producing.start()
    for thread in [*threads, *scrapers]:
        thread.start()
    producing.join(timeout=60)
    for thread in scrapers:
        thread.join(timeout=40)
    stop.set()
    for thread in threads:
        thread.join(timeout=20)
    assert not producing.is_alive() and sum(produced) == 1000
    assert len(scrapes_ok) == len(scrapers)
    samples = scrape(broker)
    assert value(samples, "distributary_produced_records_total", topic="steady") == 1000
    assert broker.process is not None and broker.process.poll() is None
    assert not [e for e in broker.log_events() if e.get("level") in ("error", "critical")]


def test_promtool_accepts_a_real_scrape(broker: BrokerProcess) -> None:
    """`promtool check metrics` finds nothing to complain about in a scrape of a
    broker with topics, traffic and a group."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; make installs it as root)")
    with Admin(broker.address) as admin:
        admin.create_topic("linted", 2)
    produce(broker, "linted", 20)
    consume(broker, "linted", "linters", 20)
    text = scrape_text(broker)
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == b"", checked.stdout + checked.stderr


def test_openmetrics_is_served_when_asked(broker: BrokerProcess) -> None:
    """Prometheus asks for OpenMetrics and gets it (ending with # EOF); the parser
    of the text format reads the default answer."""
    text = scrape_text(broker, accept="application/openmetrics-text; version=1.0.0")
    assert text.rstrip().endswith("# EOF")
    assert "distributary_build_info" in text
