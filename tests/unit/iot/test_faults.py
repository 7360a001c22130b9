"""examples/iot/faults.py: the --faults spec, the schedule scaled to a run's length,
the timeline record, and the sink stall's exclusive SQLite lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from examples.iot import faults


def test_parse_default_none_and_lists() -> None:
    """Proves "default" names every scripted fault, "none" none, a list its members,
    and an unknown name is refused."""
    assert faults.parse_faults("default") == list(faults.PLANS)
    assert faults.parse_faults("none") == []
    assert faults.parse_faults("mqtt_kill, sink_stall") == ["mqtt_kill", "sink_stall"]
    with pytest.raises(ValueError, match="unknown"):
        faults.parse_faults("mqtt_restart,meteor")


def test_schedule_scales_with_the_duration_and_keeps_the_order() -> None:
    """Proves faults fire at the same fractions of a short and a long run, in time order."""
    short = faults.schedule(faults.DEFAULT_FAULTS, 30.0)
    long = faults.schedule(faults.DEFAULT_FAULTS, 120.0)
    assert [plan.name for _at, plan in short] == [plan.name for _at, plan in long]
    assert [at * 4 for at, _plan in short] == pytest.approx([at for at, _plan in long])
    assert [at for at, _plan in long] == sorted(at for at, _plan in long)


def test_timeline_records_and_reads_back(tmp_path: Path) -> None:
    """Proves a fault is in progress between begin and end, and faults.jsonl reads back."""
    timeline = faults.FaultTimeline(tmp_path / "faults.jsonl", start_time=0.0)
    timeline.begin("sink_stall")
    assert timeline.in_progress() == ["sink_stall"]
    record = timeline.end("sink_stall", "held")
    assert timeline.in_progress() == []
    assert faults.read_timeline(tmp_path / "faults.jsonl") == [record]
    assert faults.read_timeline(tmp_path / "missing.jsonl") == []


async def test_exclusive_lock_blocks_writers_while_held(tmp_path: Path) -> None:
    """Proves a writer cannot commit while the stall holds the lock, and can afterwards."""
    db = tmp_path / "sink.db"
    setup = sqlite3.connect(db)
    setup.execute("CREATE TABLE t (x INTEGER)")
    setup.commit()
    setup.close()
    blocked: list[bool] = []

    def write() -> None:
        connection = sqlite3.connect(db, timeout=0.05)
        try:
            connection.execute("INSERT INTO t VALUES (1)")
            connection.commit()
            blocked.append(False)
        except sqlite3.OperationalError:
            blocked.append(True)
        finally:
            connection.close()

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: faults.hold_exclusive_lock(
                db, 2.0, acquire_timeout_s=5.0, task_status=task_status
            )
        )
        await trio.to_thread.run_sync(write)
    await trio.to_thread.run_sync(write)
    assert blocked == [True, False]
