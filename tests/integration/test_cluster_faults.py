"""Faults in a cluster of three brokers: a broker or the controller killed or
paused, and brokers that must refuse to start (duplicate node id, a data dir of
another cluster, etcd unreachable)."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
from pathlib import Path

from broker_cluster import BrokerCluster, broker_cluster_fixture, leaders, metadata, wait_until
from conftest import RawClient
from etcd_process import etcd_server_fixture, free_port

from broker.cluster.member import LEASE_TTL_S
from broker.testing import BrokerProcess
from client.errors import ErrorCode, error_for_code
from client.records.builder import build_batch
from client.sync import Consumer, Producer

__all__ = ["broker_cluster_fixture", "etcd_server_fixture"]

TOPIC = "orders"
# A failure is detected within the lease time; one second more for the election.
FAILOVER_S = LEASE_TTL_S + 1.0


def create(cluster: BrokerCluster, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    client = RawClient(cluster.broker(1).address)
    try:
        assert client.create_topic(topic, partitions).topics[0].error_code == 0
    finally:
        client.close()

    def served() -> dict[int, tuple[int, int]] | None:
        found = [leaders(metadata(broker), topic) for broker in cluster.brokers]
        if any(f is None or len(f) < partitions for f in found):
            return None
        return found[0]

    return wait_until(served, 5.0, "topic served by every broker")


def alive(cluster: BrokerCluster, but: int) -> list[BrokerProcess]:
    return [b for node, b in enumerate(cluster.brokers, start=1) if node != but]


def test_killed_broker_partitions_go_offline_then_return(broker_cluster: BrokerCluster) -> None:
    """Proves a SIGKILLed broker's partitions have no leader (-1) within the lease
    time + 1 s, and are led by it again, with a bumped epoch, after its restart."""
    before = create(broker_cluster, TOPIC, 6)
    victim = broker_cluster.broker(2)
    own = {p for p, (leader, _) in before.items() if leader == 2}
    assert own
    victim.kill()
    observer = broker_cluster.broker(1)

    def offline() -> dict[int, tuple[int, int]] | None:
        found = leaders(metadata(observer), TOPIC)
        if found is None or any(found[p][0] != -1 for p in own):
            return None
        return found

    during = wait_until(offline, FAILOVER_S, "the killed broker's partitions offline")
    assert all(during[p] == before[p] for p in before if p not in own)
    assert sorted(b.node_id for b in metadata(observer).brokers) == [1, 3]
    victim.start()

    def back() -> dict[int, tuple[int, int]] | None:
        found = leaders(metadata(victim), TOPIC)
        if found is None or any(found[p][0] != 2 for p in own):
            return None
        return found

    after = wait_until(back, 10.0, "partitions led again by the restarted broker")
    assert all(after[p][1] > before[p][1] for p in own)

    def produced() -> bool:
        # Metadata may name the restarted broker a moment before it has taken the
        # leadership (NOT_LEADER meanwhile, which clients retry).
        client = RawClient(victim.address)
        try:
            response = client.produce(TOPIC, {min(own): [_batch()]})
        finally:
            client.close()
        assert response is not None
        error_code = response.topics[0].partitions[0].error_code
        assert error_code in (0, ErrorCode.NOT_LEADER), response
        return error_code == 0

    wait_until(produced, 10.0, "a produce acknowledged by the restarted leader")


def controller_of(cluster: BrokerCluster, brokers: list[BrokerProcess]) -> int | None:
    """The controller every one of ``brokers`` names, None while they disagree."""
    ids = {metadata(broker).controller_id for broker in brokers}
    return ids.pop() if len(ids) == 1 and -1 not in ids else None


def test_killed_controller_is_replaced(broker_cluster: BrokerCluster) -> None:
    """Proves another broker becomes controller within the lease time + 1 s of the
    controller's SIGKILL, and moves the dead broker's partitions."""
    create(broker_cluster, TOPIC, 3)
    old = wait_until(lambda: controller_of(broker_cluster, broker_cluster.brokers), 5.0, "one")
    broker_cluster.broker(old).kill()
    survivors = alive(broker_cluster, old)

    def replaced() -> int | None:
        found = controller_of(broker_cluster, survivors)
        return found if found not in (None, old) else None

    wait_until(replaced, FAILOVER_S, "a new controller")

    def moved() -> bool:
        found = leaders(metadata(survivors[0]), TOPIC)
        return found is not None and all(leader != old for leader, _ in found.values())

    wait_until(moved, FAILOVER_S, "the dead controller's partitions moved")


def test_paused_controller_does_not_write_after_resume(broker_cluster: BrokerCluster) -> None:
    """Proves a controller SIGSTOPped beyond its lease is replaced, and once resumed
    does not act as controller: it steps down, registers again, and gets its
    partitions back from the new controller (with bumped epochs)."""
    before = create(broker_cluster, TOPIC, 3)
    old = wait_until(lambda: controller_of(broker_cluster, broker_cluster.brokers), 5.0, "one")
    paused = broker_cluster.broker(old)
    assert paused.process is not None
    paused.process.send_signal(signal.SIGSTOP)
    survivors = alive(broker_cluster, old)
    try:
        new = wait_until(
            lambda: (c := controller_of(broker_cluster, survivors)) not in (None, old) and c,
            FAILOVER_S + 1.0,
            "a new controller while the old one is paused",
        )
    finally:
        paused.process.send_signal(signal.SIGCONT)
    own = {p for p, (leader, _) in before.items() if leader == old}

    def recovered() -> bool:
        found = leaders(metadata(paused), TOPIC)
        return found is not None and all(
            found[p][0] == old and found[p][1] > before[p][1] for p in own
        )

    wait_until(recovered, 10.0, "the resumed broker leads its partitions again")
    assert controller_of(broker_cluster, broker_cluster.brokers) == new
    events = [e.get("event") for e in paused.log_events()]
    resumed_at = events.index("lease lost; fenced until registered again")
    assert "leader elected" not in events[resumed_at:]


def serve_once(args: list[str], data_dir: Path, host: str = "127.0.0.5") -> tuple[int, str]:
    """Run ``distributary serve`` expecting it to refuse; (exit code, stderr)."""
    command = [sys.executable, "-m", "broker", "serve", "--listen", f"{host}:0"]
    command += ["--data-dir", str(data_dir), "--log-format", "json", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    return done.returncode, done.stderr


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("distributary: error:")]


def test_duplicate_node_id_is_refused(broker_cluster: BrokerCluster, tmp_path: Path) -> None:
    """Proves a second broker with a live broker's node id refuses to start, in one
    line naming the live broker's address."""
    code, stderr = serve_once(["--cluster", broker_cluster.url, "--node-id", "1"], tmp_path / "d")
    assert code == 1
    [line] = error_lines(stderr)
    assert (
        f"node id 1 is already registered by a live broker at {broker_cluster.broker(1).address}"
        in line
    )


def test_data_dir_of_another_cluster_is_refused(broker_cluster: BrokerCluster) -> None:
    """Proves a member's data dir is refused under another prefix, and under the same
    prefix once etcd holds another cluster (another cluster id)."""
    member = broker_cluster.broker(3)
    member.stop()
    other = broker_cluster.etcd.cluster_url("another-cluster")
    code, stderr = serve_once(["--cluster", other, "--node-id", "3"], member.data_dir)
    assert code == 1
    [line] = error_lines(stderr)
    assert "belongs to the cluster under prefix" in line
    key = base64.b64encode(b"distributary-cluster-test/cluster_id").decode()
    broker_cluster.etcd.post("/v3/kv/deleterange", {"key": key})
    code, stderr = serve_once(["--cluster", broker_cluster.url, "--node-id", "3"], member.data_dir)
    assert code == 1
    [line] = error_lines(stderr)
    assert "belongs to cluster" in line and "holds cluster" in line


def test_unreachable_etcd_is_refused(tmp_path: Path) -> None:
    """Proves a broker whose etcd does not answer exits 1 with one line."""
    url = f"etcd://127.0.0.1:{free_port()}/nowhere"
    code, stderr = serve_once(["--cluster", url, "--node-id", "1"], tmp_path / "d")
    assert code == 1
    [line] = error_lines(stderr)
    assert "cannot reach etcd" in line


def _batch() -> bytearray:
    return build_batch([b"after restart"])


def test_brokers_stop_acknowledging_writes_without_etcd_and_recover(
    broker_cluster: BrokerCluster,
) -> None:
    """Proves that while etcd is paused beyond the lease time, a leader refuses
    produce with NOT_LEADER (it fenced itself) but still answers Metadata, and that
    it acknowledges writes again once etcd is back."""
    found = create(broker_cluster, TOPIC, 3)
    partition = next(p for p, (leader, _) in found.items() if leader == 1)
    leader = broker_cluster.broker(1)

    def produce_code() -> int:
        client = RawClient(leader.address)
        try:
            response = client.produce(TOPIC, {partition: [_batch()]})
        finally:
            client.close()
        assert response is not None
        return response.topics[0].partitions[0].error_code

    assert produce_code() == 0
    broker_cluster.etcd.pause()
    try:
        wait_until(lambda: produce_code() == int(ErrorCode.NOT_LEADER), FAILOVER_S, "self-fenced")
        assert leaders(metadata(leader), TOPIC) is not None
    finally:
        broker_cluster.etcd.resume()
    wait_until(lambda: produce_code() == 0, 15.0, "writes acknowledged again")


def test_fenced_brokers_serve_reads_but_refuse_writes_until_etcd_returns(
    broker_cluster: BrokerCluster,
) -> None:
    """Proves that while etcd is stopped, a fenced broker refuses produce with a
    retriable NOT_LEADER yet a consumer still reads (ListOffsets and Fetch) every
    record produced before from the three fenced leaders, and that produce is
    acknowledged again once etcd is back."""
    found = create(broker_cluster, TOPIC, 3)
    bootstrap = broker_cluster.bootstrap
    expected = {p: [f"{p}-{i}".encode() for i in range(5)] for p in found}
    with Producer(bootstrap) as producer:
        for partition, values in expected.items():
            for value in values:
                producer.send(TOPIC, value, partition=partition)
    partition = next(p for p, (leader, _) in found.items() if leader == 1)
    leader = broker_cluster.broker(1)

    def produce_code() -> int:
        client = RawClient(leader.address)
        try:
            response = client.produce(TOPIC, {partition: [_batch()]})
        finally:
            client.close()
        assert response is not None
        code = response.topics[0].partitions[0].error_code
        if code == 0:  # acknowledged before the fence: the consumer reads it too
            expected[partition].append(b"after restart")
        return code

    broker_cluster.etcd.stop()
    try:
        wait_until(lambda: produce_code() == int(ErrorCode.NOT_LEADER), FAILOVER_S, "fenced")
        assert error_for_code(ErrorCode.NOT_LEADER, "").retriable
        with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
            consumer.assign([TOPIC])
            got: dict[int, list[bytes]] = {}
            deadline = time.monotonic() + 20
            total = sum(map(len, expected.values()))
            while sum(map(len, got.values())) < total and time.monotonic() < deadline:
                for tp, records in consumer.getmany(timeout_ms=500).items():
                    got.setdefault(tp.partition, []).extend(bytes(r.value) for r in records)
        assert got == expected
        assert produce_code() == int(ErrorCode.NOT_LEADER)
    finally:
        broker_cluster.etcd.start()
    wait_until(lambda: produce_code() == 0, 15.0, "writes acknowledged again")
