"""Signals during the last phase of a shutdown, in-process: a second SIGTERM while
the logs are being closed exits at once (with a line saying so) instead of
killing the process by the signal."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType

import pytest
import trio

import broker.server as server_module
from broker.config import load_config
from broker.server import Server, serve
from broker.state import Broker


class _Exited(Exception):
    pass


async def test_second_sigterm_while_closing_logs_exits_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first SIGTERM starts the shutdown; a second one that arrives while the
    logs are flushed and closed reaches the broker's watcher, which exits with
    128 + SIGTERM at once."""
    config = load_config(flags={"data_dir": str(tmp_path), "listen": "127.0.0.1:0"}).config
    closing = trio.Event()
    release = trio.Event()
    exits: list[int] = []
    original_close = Broker.close

    async def slow_close(self: Broker) -> None:
        closing.set()
        await release.wait()
        await original_close(self)

    def fake_exit(status: int) -> None:
        exits.append(status)
        release.set()
        raise _Exited()

    # Without the broker's watcher a SIGTERM lands here instead of killing pytest.
    stray: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        stray.append(signum)
        release.set()

    previous = signal.signal(signal.SIGTERM, record)
    monkeypatch.setattr(Broker, "close", slow_close)
    monkeypatch.setattr(server_module.os, "_exit", fake_exit)
    try:
        with trio.fail_after(20):
            try:
                async with trio.open_nursery() as nursery:
                    server: Server = await nursery.start(
                        lambda task_status: serve(config, task_status=task_status)
                    )
                    assert isinstance(server, Server)
                    os.kill(os.getpid(), signal.SIGTERM)
                    await closing.wait()
                    os.kill(os.getpid(), signal.SIGTERM)
                    await release.wait()
            except BaseExceptionGroup as group:
                assert group.subgroup(_Exited) is not None, group
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stray == []
    assert exits == [128 + signal.SIGTERM]
