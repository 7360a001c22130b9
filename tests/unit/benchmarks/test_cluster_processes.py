"""The benchmark cluster's process handling: the disturbances read back from a
broker's log, and etcd kept off a real-time scheduling policy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cluster_processes import Broker


def _line(event: str, **fields: object) -> str:
    return json.dumps({"event": event, "level": "info", **fields}) + "\n"


def test_disturbances_since_reads_past_the_offset_and_only_disturbances(tmp_path: Path) -> None:
    """Proves only the disturbance events logged past the offset are reported, with
    their time and reason, and lines that are not JSON are skipped."""
    broker = Broker(tmp_path, 2, "etcd://127.0.0.1:1/bench")
    broker.log.write_text(_line("lease lost; fenced until registered again"))
    offset = broker.log_bytes()
    with broker.log.open("a") as log:
        log.write(_line("replica role", timestamp="2026-12-06T10:27:38.360000Z"))
        log.write("a line from somewhere else\n")
        log.write(
            _line(
                "replica fetch failed; retrying",
                reason="no response within 5500 ms",
                timestamp="2026-12-06T10:27:38.333290Z",
            )
        )
        log.write(_line("replicas fenced", isr=[3, 1], timestamp="2026-12-06T10:27:38.347433Z"))
    assert broker.disturbances_since(offset) == [
        "10:27:38.333 broker 2: replica fetch failed; retrying no response within 5500 ms",
        "10:27:38.347 broker 2: replicas fenced [3, 1]",
    ]
    assert len(broker.disturbances_since(0)) == 3
    assert Broker(tmp_path / "none", 3, None).disturbances_since(0) == []


_UNDER_FIFO = """
import sys, time
from pathlib import Path
from bench.cluster_processes import Child
policy = "import os; print(os.sched_getscheduler(0))"
for normal, name in ((True, "normal"), (False, "inherited")):
    child = Child(name, [sys.executable, "-c", policy], Path(sys.argv[1]) / name, normal)
    child.start()
    assert child.process is not None
    child.process.wait(timeout=60)
"""


def test_a_normal_policy_child_leaves_a_real_time_parent_policy(tmp_path: Path) -> None:
    """Proves a Child started with normal_policy from a SCHED_FIFO process runs under
    SCHED_OTHER, while another child inherits SCHED_FIFO."""
    chrt = shutil.which("chrt")
    if chrt is None:
        pytest.skip("chrt (util-linux) is not installed")
    probe = subprocess.run([chrt, "-f", "1", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("real-time scheduling is not permitted here")
    result = subprocess.run(
        [chrt, "-f", "1", sys.executable, "-c", _UNDER_FIFO, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "normal").read_text().strip() == str(os.SCHED_OTHER)
    assert (tmp_path / "inherited").read_text().strip() == str(os.SCHED_FIFO)
