"""The broker's clean-shutdown marker: written by a graceful close, taken at open,
and Broker.clean_start saying whether the previous run stopped cleanly."""

from __future__ import annotations

import os
from pathlib import Path

from broker.config import load_config
from broker.shutdown_marker import MARKER_FILE, take_marker, write_marker
from broker.state import LOCK_FILE, Broker


def test_marker_is_taken_once(tmp_path: Path) -> None:
    """Proves a written marker makes one start clean and is gone after it, so a crash
    after that start is not mistaken for a clean stop."""
    (tmp_path / "topics.json").write_text("{}")
    write_marker(tmp_path)
    assert take_marker(tmp_path)
    assert not (tmp_path / MARKER_FILE).exists()
    assert not take_marker(tmp_path)


def test_a_new_data_dir_is_a_clean_start(tmp_path: Path) -> None:
    """Proves a data dir holding only its lock file counts as clean (nothing to lose),
    one holding data without a marker does not."""
    (tmp_path / LOCK_FILE).write_bytes(b"")
    assert take_marker(tmp_path, (LOCK_FILE,))
    (tmp_path / "t-0").mkdir()
    assert not take_marker(tmp_path, (LOCK_FILE,))


async def test_graceful_close_then_crash(tmp_path: Path) -> None:
    """Proves Broker.clean_start is True after a graceful close and False after a run
    that ended without one (its lock released, no close)."""
    config = load_config(flags={"data_dir": str(tmp_path)}, environ={}).config
    broker = await Broker.open(config)
    assert broker.clean_start
    await broker.topics.create("t", 1, {})
    await broker.close()
    assert (tmp_path / MARKER_FILE).exists()
    broker = await Broker.open(config)
    assert broker.clean_start and not (tmp_path / MARKER_FILE).exists()
    # A crash: the process ends without close (its logs and lock simply dropped).
    await broker.topics.close()
    assert broker._lock_descriptor is not None
    os.close(broker._lock_descriptor)
    broker._lock_descriptor = None
    again = await Broker.open(config)
    try:
        assert not again.clean_start
    finally:
        await again.close()
