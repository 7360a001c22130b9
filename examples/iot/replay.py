"""``python -m examples.iot replay``: rebuild the sink's database from the log.

The recipe a team runs after losing or changing its database: stop the sink,
reset the ``iot-sink`` group's offsets on its input topics with the
``distributary groups reset-offsets`` CLI (to the beginning, or to the first
record at or after a time), then run the sink into the (new) database until the
group has caught up with the log, and stop it.  The sink's writes are
idempotent upserts, so the rebuilt database equals the first one when replayed
from the beginning (the demo compares ``sink.dump`` of both).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Final

import click
import trio

from client import Admin, DistributaryError
from examples.iot.names import AGG_TOPIC, ALERTS_TOPIC, SINK_GROUP, VALID_TOPIC
from examples.iot.processes import ChildProcess, free_port, stage_argv
from examples.iot.stage import bootstrap_option

SINK_TOPICS: Final = (VALID_TOPIC, AGG_TOPIC, ALERTS_TOPIC)
# Bounded waits (seconds): the old sink leaving the group, the reset, the rebuild.
GROUP_EMPTY_TIMEOUT_S: Final = 60.0
RESET_TIMEOUT_S: Final = 60.0
REBUILD_TIMEOUT_S: Final = 600.0
CAUGHT_UP_QUIET_S: Final = 2.0


async def _sink_group(bootstrap: str) -> tuple[int, int] | None:
    """(members, total lag over the sink's input topics) of the sink's group."""
    try:
        async with Admin(bootstrap, reconnect_attempts_max=1) as admin:
            group = await admin.describe_group(SINK_GROUP)
            ends = {
                (d.name, p.partition): p.high_watermark
                for d in await admin.describe_topics(list(SINK_TOPICS))
                for p in d.partitions
            }
    except (DistributaryError, OSError):
        return None
    committed = {(p.topic, p.partition): p.committed_offset for p in group.partitions}
    lag = sum(end - (committed.get(tp) or 0) for tp, end in ends.items())
    return len(group.members), lag


async def reset_offsets(bootstrap: str, target: list[str]) -> str:
    """Reset the sink group's offsets on its input topics with the CLI, once the
    group has no members; the CLI's output.

    Raises TimeoutError when the group keeps members, RuntimeError when the CLI fails.
    """
    with trio.move_on_after(GROUP_EMPTY_TIMEOUT_S):
        while True:
            state = await _sink_group(bootstrap)
            if state is not None and state[0] == 0:
                break
            await trio.sleep(0.5)
    argv = [sys.executable, "-m", "broker", "groups", "reset-offsets", SINK_GROUP, "-b", bootstrap]
    for topic in SINK_TOPICS:
        argv += ["--topic", topic]
    argv += target
    with trio.fail_after(RESET_TIMEOUT_S):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    output = (result.stdout + result.stderr).decode(errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"reset-offsets failed ({result.returncode}): {output}")
    return output


async def replay_into(
    bootstrap: str,
    db_path: Path,
    log_path: Path,
    target: list[str] | None = None,
) -> dict[str, Any]:
    """Reset the sink's group (default: to the earliest offsets) and run a sink
    into ``db_path`` until the group has caught up; what it did.

    Raises TimeoutError when the rebuild does not catch up within
    REBUILD_TIMEOUT_S, RuntimeError when the reset or the sink fails.
    """
    started = time.monotonic()
    await reset_offsets(bootstrap, target or ["--to-earliest"])
    sink = ChildProcess(
        "replay-sink",
        stage_argv(
            "sink",
            "--bootstrap",
            bootstrap,
            "--db",
            str(db_path),
            "--metrics-port",
            str(free_port()),
        ),
        log_path,
    )
    await sink.start()
    try:
        quiet_since: float | None = None
        with trio.fail_after(REBUILD_TIMEOUT_S):
            while True:
                if not sink.running:
                    raise RuntimeError(
                        f"the replay sink exited ({sink.returncode}): see {log_path}"
                    )
                state = await _sink_group(bootstrap)
                if state is not None and state[0] > 0 and state[1] == 0:
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since >= CAUGHT_UP_QUIET_S:
                        break
                else:
                    quiet_since = None
                await trio.sleep(0.25)
    finally:
        status = await sink.stop()
    return {"seconds": round(time.monotonic() - started, 2), "sink_exit_status": status}


@click.command("replay")
@bootstrap_option
@click.option("--db", "db_path", type=click.Path(path_type=Path), required=True)
@click.option("--to-earliest", "to_earliest", is_flag=True, help="From the beginning [default].")
@click.option(
    "--to-datetime",
    "to_datetime",
    default=None,
    help="From the first record at or after TIME (as reset-offsets takes it).",
)
def command(bootstrap: str, db_path: Path, to_earliest: bool, to_datetime: str | None) -> None:
    """Reset the sink's group and rebuild the database (stop the running sink first)."""
    if to_earliest and to_datetime:
        raise click.BadParameter("give --to-earliest or --to-datetime, not both")
    target = ["--to-datetime", to_datetime] if to_datetime else ["--to-earliest"]
    log_path = db_path.with_name(db_path.name + ".replay.log")
    result = trio.run(lambda: replay_into(bootstrap, db_path, log_path, target))
    print(f"rebuilt {db_path} in {result['seconds']} s (sink log: {log_path})")
