"""Tests for broker.storage.atomic_file and broker.storage.checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.storage import atomic_file, checkpoint
from client.errors import StorageError


def test_write_atomic_replaces_content(tmp_path: Path) -> None:
    """An atomic write replaces the whole file and leaves no temp file behind."""
    target = tmp_path / "file"
    atomic_file.write_atomic(target, b"old")
    atomic_file.write_atomic(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["file"]


def test_write_atomic_failure_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write raises StorageError, keeps the old file and removes the temp."""
    target = tmp_path / "file"
    atomic_file.write_atomic(target, b"old")

    def failing_replace(source: object, destination: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_file.os, "replace", failing_replace)
    with pytest.raises(StorageError):
        atomic_file.write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file"]


def test_remove_durably_reports_existence(tmp_path: Path) -> None:
    """remove_durably removes an existing file and is a no-op for a missing one."""
    target = tmp_path / "file"
    target.write_bytes(b"x")
    assert atomic_file.remove_durably(target) is True
    assert atomic_file.remove_durably(target) is False


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    """A written checkpoint reads back equal."""
    stored = checkpoint.RecoveryCheckpoint(
        offset=10, segment_base_offset=5, position=300, max_timestamp_ms=7
    )
    checkpoint.write_checkpoint(tmp_path, stored)
    assert checkpoint.read_checkpoint(tmp_path) == stored


@pytest.mark.parametrize("content", [b"", b"garbage", b'{"offset": -1}', b"x" * 10_000])
def test_unreadable_checkpoint_is_ignored(tmp_path: Path, content: bytes) -> None:
    """A garbled or implausible checkpoint reads as None (recovery then scans all)."""
    (tmp_path / checkpoint.CHECKPOINT_FILE).write_bytes(content)
    assert checkpoint.read_checkpoint(tmp_path) is None


def test_clean_shutdown_marker(tmp_path: Path) -> None:
    """The marker can be written, detected and removed."""
    assert not checkpoint.clean_shutdown_marker_exists(tmp_path)
    checkpoint.write_clean_shutdown_marker(tmp_path)
    assert checkpoint.clean_shutdown_marker_exists(tmp_path)
    checkpoint.remove_clean_shutdown_marker(tmp_path)
    assert not checkpoint.clean_shutdown_marker_exists(tmp_path)
