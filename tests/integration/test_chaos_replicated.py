"""Chaos runs on a replicated topic (replication factor 3, min ISR 2, producers
with acks=all): the faults of the replication issue, each followed by the
checker.  An acknowledged record must survive the loss of any one broker, a
zombie leader must not acknowledge after it was replaced, and a wiped follower
must copy everything back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from etcd_process import require_etcd_binary

from broker.cluster.member import LEASE_TTL_S
from tests.chaos.runner import RunConfig, RunResult, Step, run, unavailable
from tests.chaos.workload import WorkloadConfig

REPLICATED = WorkloadConfig(partitions=3, producers=2, records_per_s=100.0, consumers=2, acks="all")


def replicated(tmp_path: Path, *steps: Step, duration_s: float = 18.0) -> RunResult:
    """One run of ``steps`` on a replication-factor-3 topic; the report printed."""
    require_etcd_binary()
    reason = unavailable([step.kind for step in steps])
    if reason:
        pytest.skip(reason)
    config = RunConfig(
        seed=1,
        duration_s=duration_s,
        steps=steps,
        workload=REPLICATED,
        replication_factor=3,
        min_insync_replicas=2,
        directory=tmp_path,
    )
    result = run(config)
    print(result.report())
    return result


@pytest.mark.timeout(240)
def test_leader_killed_under_acks_all(tmp_path: Path) -> None:
    """Proves SIGKILL of a leader under acks=all load loses no acknowledged
    record: a follower in the ISR takes over, the old leader truncates and
    catches up when it returns."""
    result = replicated(tmp_path, Step("kill", "leader", 0, wait_s=3.0, duration_s=8.0))
    result.assert_valid()
    assert result.final_read_complete


@pytest.mark.timeout(240)
def test_zombie_leader_paused_beyond_the_lease(tmp_path: Path) -> None:
    """Proves a leader SIGSTOPped longer than its lease, replaced meanwhile, loses
    nothing acknowledged and acknowledges nothing that the new leader lacks once
    resumed."""
    step = Step("pause", "leader", 1, wait_s=3.0, duration_s=LEASE_TTL_S + 4.0)
    result = replicated(tmp_path, step)
    result.assert_valid()


@pytest.mark.timeout(240)
def test_leader_partitioned_from_followers_and_etcd(tmp_path: Path) -> None:
    """Proves a leader cut off from both followers and etcd (nftables) loses no
    acknowledged record: it cannot reach min ISR, so it acknowledges nothing
    alone, and a new leader takes over."""
    step = Step("partition", "leader", 2, wait_s=3.0, duration_s=LEASE_TTL_S + 5.0)
    result = replicated(tmp_path, step)
    result.assert_valid()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_follower_disk_full(tmp_path: Path) -> None:
    """Proves a broker whose data disk fills (a follower of some partitions, the
    leader of others) loses no acknowledged record, and catches up once it has
    room again."""
    result = replicated(tmp_path, Step("disk", "node", 0, wait_s=3.0, duration_s=6.0))
    result.assert_valid()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_controller_killed_during_an_election(tmp_path: Path) -> None:
    """Proves killing the controller while it elects a new leader for a killed
    leader's partitions loses no acknowledged record."""
    step = Step("election-kill", "leader", 0, wait_s=3.0, duration_s=LEASE_TTL_S + 4.0)
    result = replicated(tmp_path, step, duration_s=20.0)
    result.assert_valid()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_rolling_restart_under_load(tmp_path: Path) -> None:
    """Proves a rolling graceful restart of all three brokers under acks=all load
    loses nothing acknowledged."""
    result = replicated(
        tmp_path, Step("restart", "node", 0, wait_s=3.0, duration_s=0.0), duration_s=60.0
    )
    result.assert_valid()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_wiped_follower_copies_everything_back(tmp_path: Path) -> None:
    """Proves a broker whose data dir is wiped while it runs loses nothing
    acknowledged: the others hold every record and it re-replicates."""
    result = replicated(
        tmp_path, Step("wipe", "node", 0, wait_s=8.0, duration_s=5.0), duration_s=25.0
    )
    result.assert_valid()
