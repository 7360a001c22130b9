"""Chaos runs against etcd and three real brokers (tests/chaos/): a short seeded
run of kills and pauses on a replicated topic (replication factor 3, min ISR 2,
acks=all), then runs of single faults on a topic with one replica.

With one replica a SIGKILL loses nothing acknowledged (the page cache survives
the process) and a paused or cut-off broker's partitions are offline until it is
back; the checker must find no anomaly.  Wiping the only replica must lose data,
and the checker must say so: that proves the whole pipeline (workload, history,
final read, checker) sees a real loss.  tests/integration/test_chaos_replicated.py
has the faults of replication.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from etcd_process import require_etcd_binary

from broker.cluster.member import LEASE_TTL_S
from tests.chaos.runner import RunConfig, RunResult, Step, run, unavailable
from tests.chaos.workload import WorkloadConfig

# A fault test: about 10 s of faults, 20-40 s in all on this machine; one replica.
FAULT_WORKLOAD = WorkloadConfig(
    partitions=3, producers=2, records_per_s=100.0, consumers=2, acks="leader"
)
UNREPLICATED = {"replication_factor": 1, "min_insync_replicas": None}


def chaos(tmp_path: Path, config: RunConfig) -> RunResult:
    """Run, print the report (shown on failure), return the result."""
    require_etcd_binary()
    kinds = [step.kind for step in config.steps] if config.steps is not None else config.faults
    reason = unavailable(kinds)
    if reason:
        pytest.skip(reason)
    result = run(config)
    print(result.report())
    return result


def log_events(directory: Path, node_id: int) -> list[str]:
    text = (directory / f"broker-{node_id}" / "broker.log").read_text(errors="replace")
    return [line for line in text.splitlines() if line.startswith("{")]


@pytest.mark.timeout(300)
def test_short_seeded_run_of_kills_and_pauses(tmp_path: Path) -> None:
    """Proves a 60 s seeded schedule of leader kills and pauses beyond the lease,
    on a topic with three replicas written with acks=all, loses, duplicates and
    reorders nothing acknowledged, and that the run did acknowledge records and
    read them all back."""
    result = chaos(
        tmp_path, RunConfig(seed=7, duration_s=60.0, faults=("kill", "pause"), directory=tmp_path)
    )
    result.assert_valid()
    assert result.final_read_complete
    assert result.steps, "the schedule applied no fault"
    assert result.verdict.totals["sends_ok"] > 1000


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_leader_killed(tmp_path: Path) -> None:
    """Proves SIGKILL of a partition's leader under load, restarted after 5 s,
    loses nothing acknowledged."""
    step = Step("kill", "leader", 0, wait_s=3.0, duration_s=5.0)
    config = RunConfig(
        seed=1,
        duration_s=15.0,
        steps=(step,),
        workload=FAULT_WORKLOAD,
        directory=tmp_path,
        **UNREPLICATED,
    )
    result = chaos(tmp_path, config)
    result.assert_valid()
    assert result.final_read_complete
    killed = result.applied[0][1]
    starts = [line for line in log_events(tmp_path, killed) if '"listening"' in line]
    assert len(starts) == 2, "the killed broker was started twice (before and after)"


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_leader_paused_beyond_the_lease(tmp_path: Path) -> None:
    """Proves a leader SIGSTOPped longer than its lease (it loses the lease, is
    fenced and registers again on SIGCONT) loses nothing acknowledged."""
    step = Step("pause", "leader", 0, wait_s=3.0, duration_s=LEASE_TTL_S + 3.0)
    config = RunConfig(
        seed=1,
        duration_s=15.0,
        steps=(step,),
        workload=FAULT_WORKLOAD,
        directory=tmp_path,
        **UNREPLICATED,
    )
    result = chaos(tmp_path, config)
    result.assert_valid()
    assert result.final_read_complete
    paused = result.applied[0][1]
    assert any("lease lost" in line for line in log_events(tmp_path, paused))


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_leader_partitioned_from_etcd(tmp_path: Path) -> None:
    """Proves a leader cut off from etcd (nftables, both ways) for longer than its
    lease loses nothing acknowledged; it notices the lost lease and registers
    again once healed."""
    step = Step("partition-etcd", "leader", 0, wait_s=3.0, duration_s=LEASE_TTL_S + 4.0)
    config = RunConfig(
        seed=1,
        duration_s=16.0,
        steps=(step,),
        workload=FAULT_WORKLOAD,
        directory=tmp_path,
        **UNREPLICATED,
    )
    result = chaos(tmp_path, config)
    result.assert_valid()
    assert result.final_read_complete
    cut = result.applied[0][1]
    assert any("lease lost" in line for line in log_events(tmp_path, cut))


@pytest.mark.timeout(200)
def test_wiping_the_only_replica_is_caught_as_loss(tmp_path: Path) -> None:
    """Proves the pipeline catches a real loss: wiping the data dir of a broker
    that holds the only replica of partitions makes the checker report their
    acknowledged records lost."""
    step = Step("wipe", "node", 0, wait_s=6.0, duration_s=3.0)
    config = RunConfig(
        seed=1,
        duration_s=14.0,
        steps=(step,),
        workload=FAULT_WORKLOAD,
        directory=tmp_path,
        **UNREPLICATED,
    )
    result = chaos(tmp_path, config)
    assert not result.verdict.valid
    assert result.verdict.count("lost") > 0, result.report()
