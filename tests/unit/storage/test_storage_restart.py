"""Log.truncate_fully_and_start_at: every segment dropped, the log empty at an offset,
durable (a follower restarting at its leader's log start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.storage.log import Log

from .conftest import ManualClock, make_batch, read_all, small_config


@pytest.mark.parametrize("offset", [0, 7, 500])
def test_restart_empties_the_log_at_an_offset(
    log_dir: Path, clock: ManualClock, offset: int
) -> None:
    """Proves the log starts and ends at ``offset`` after a restart (also at the base
    offset of a segment it drops, whose file name the new one reuses), appends
    continue from there, and a reopen finds the same log."""
    log = Log.open(log_dir, small_config(), clock_ms=clock)
    for value in range(0, 40, 4):
        log.append(make_batch(value, 4))
        log.roll()
    assert log.segment_count > 1
    log.truncate_fully_and_start_at(offset)
    assert (log.start_offset, log.end_offset, log.segment_count) == (offset, offset, 1)
    log.check_invariants()
    appended = log.append(make_batch(0, 2))
    assert (appended.base_offset, appended.last_offset) == (offset, offset + 1)
    log.close()
    assert not [path for path in log_dir.iterdir() if path.name.endswith(".deleted")]
    reopened = Log.open(log_dir, small_config(), clock_ms=clock)
    try:
        assert (reopened.start_offset, reopened.end_offset) == (offset, offset + 2)
        assert read_all(reopened) == [(offset, b"v0"), (offset + 1, b"v1")]
    finally:
        reopened.close()
