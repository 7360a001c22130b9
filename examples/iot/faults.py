"""The demo's scripted faults: which exist, when each fires in a run of a given
length, what it is expected to do, and the record of when each ran.

The faults (issue 15, section 3):

- ``mqtt_restart``: mosquitto stopped with SIGTERM (it saves its persistence
  file) and started again at once.  Expected: nothing lost; re-sent duplicates
  removed by validate's dedup.
- ``mqtt_kill``: mosquitto SIGKILLed and started again.  Expected: the run
  completes; what mosquitto had acknowledged to devices but held only in memory
  is lost and reported as ``lost_at_mqtt`` (ledger minus what reached iot.raw).
- ``validate_kill``: one validate member SIGKILLed, a replacement started a few
  seconds later.  Expected: the group rebalances, lag rises then drains, nothing
  lost (re-read records may be forwarded twice; the sink upserts).
- ``broker_restart``: Distributary stopped for 10 s and started again on the
  same data.  Expected: the bridge stops acknowledging, MQTT queues, nothing lost.
- ``sink_stall``: the sink's SQLite file held under an exclusive lock from
  outside for 5 s.  Expected: lag rises, nothing lost.
- ``poison`` is not scripted here: the simulator's fault menu sends malformed,
  out-of-range and unknown-version payloads all run long.  Expected: each is
  dead-lettered, no stage crash-loops.

Times are fractions of the run's duration, so a 30 s CI run and a 120 s demo
fire the same faults in the same order; the outage lengths are fixed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final, NamedTuple

import trio

MQTT_RESTART: Final = "mqtt_restart"
MQTT_KILL: Final = "mqtt_kill"
VALIDATE_KILL: Final = "validate_kill"
BROKER_RESTART: Final = "broker_restart"
SINK_STALL: Final = "sink_stall"
POISON: Final = "poison"


class FaultPlan(NamedTuple):
    """When a scripted fault fires (a fraction of the run) and for how long."""

    name: str
    at_fraction: float
    duration_s: float
    expected: str


PLANS: Final[dict[str, FaultPlan]] = {
    plan.name: plan
    for plan in (
        FaultPlan(MQTT_RESTART, 0.20, 0.0, "nothing lost; re-sent duplicates removed"),
        FaultPlan(VALIDATE_KILL, 0.35, 5.0, "group rebalances, lag drains, nothing lost"),
        FaultPlan(SINK_STALL, 0.50, 5.0, "lag rises then drains, nothing lost"),
        FaultPlan(BROKER_RESTART, 0.62, 10.0, "bridge stops acknowledging, nothing lost"),
        FaultPlan(MQTT_KILL, 0.85, 1.0, "run completes; loss reported as lost_at_mqtt"),
    )
}
DEFAULT_FAULTS: Final = tuple(PLANS)
# Faults the simulator always injects through its fault menu (unless told not to).
DATA_FAULTS: Final = (POISON,)


def parse_faults(spec: str) -> list[str]:
    """``default`` (every scripted fault), ``none``, or a comma-separated list.

    Raises ValueError naming an unknown fault.
    """
    spec = spec.strip()
    if spec == "default":
        return list(DEFAULT_FAULTS)
    if spec in ("none", ""):
        return []
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in PLANS]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(PLANS)}")
    return names


def schedule(names: Iterable[str], duration_s: float) -> list[tuple[float, FaultPlan]]:
    """(seconds after the run started, plan) for each named fault, by time."""
    return sorted((PLANS[name].at_fraction * duration_s, PLANS[name]) for name in names)


class FaultRecord(NamedTuple):
    """What a fault did and when (seconds since the run started)."""

    name: str
    start_t: float
    end_t: float | None
    detail: str


class FaultTimeline:
    """The faults of one run as they happen, also appended to ``faults.jsonl``
    (one line per finished fault) so the report can shade them."""

    def __init__(self, path: Path, start_time: float) -> None:
        self.path = path
        self.start_time = start_time
        self.records: list[FaultRecord] = []
        self._open: dict[str, FaultRecord] = {}

    def now(self) -> float:
        return round(time.time() - self.start_time, 3)

    def begin(self, name: str, detail: str = "") -> None:
        self._open[name] = FaultRecord(name, self.now(), None, detail)

    def end(self, name: str, detail: str | None = None) -> FaultRecord:
        started = self._open.pop(name)
        record = started._replace(
            end_t=self.now(), detail=started.detail if detail is None else detail
        )
        self.records.append(record)
        with self.path.open("a") as out:
            out.write(json.dumps(record._asdict()) + "\n")
        return record

    def in_progress(self) -> list[str]:
        return sorted(self._open)


def read_timeline(path: Path) -> list[FaultRecord]:
    """The faults a run's faults.jsonl recorded (none when it does not exist)."""
    if not path.exists():
        return []
    return [FaultRecord(**json.loads(line)) for line in path.read_text().splitlines() if line]


async def hold_exclusive_lock(
    db_path: Path,
    hold_s: float,
    *,
    acquire_timeout_s: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> float:
    """Hold an exclusive SQLite lock on ``db_path`` for ``hold_s`` seconds, so
    every writer (the sink) waits; return how long acquiring it took.  Under
    ``nursery.start`` it reports started once the lock is held.

    Raises sqlite3.OperationalError when the lock cannot be had within
    ``acquire_timeout_s`` (the sink holding a transaction that long).
    """

    def hold() -> float:
        started = time.monotonic()
        connection = sqlite3.connect(db_path, timeout=acquire_timeout_s, isolation_level=None)
        try:
            connection.execute("BEGIN EXCLUSIVE")
            acquired = time.monotonic() - started
            trio.from_thread.run_sync(task_status.started)
            time.sleep(hold_s)
            connection.execute("ROLLBACK")
            return acquired
        finally:
            connection.close()

    return await trio.to_thread.run_sync(hold)
