"""`perf produce` interrupted with Ctrl-C prints its summary so far; real
subprocesses against a real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest
from test_cli_commands import COMMAND_TIMEOUT_S, Cli

from client.sync import Admin


@pytest.fixture
def cli(broker: Any) -> Cli:
    return Cli(broker.address)


def _log_end(address: str, topic: str) -> int:
    with Admin(address) as admin:
        return admin.describe_topics([topic])[0].partitions[0].log_end_offset


def test_perf_produce_interrupted_prints_the_summary_so_far(cli: Cli) -> None:
    """Ctrl-C during `perf produce` flushes, prints a summary of the records
    acknowledged so far (as many as the log holds) and exits 130."""
    cli.ok("topics", "create", "perf-int")
    perf = cli.popen(
        "perf",
        "produce",
        "perf-int",
        "--records",
        "10000000",
        "--record-size",
        "10",
        "--rate",
        "2000",
        "--json",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while _log_end(cli.address, "perf-int") == 0:  # wait until it is sending
            assert time.monotonic() < deadline and perf.poll() is None
        perf.send_signal(signal.SIGINT)
        stdout, stderr = perf.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if perf.poll() is None:
            perf.kill()
            perf.wait()
    assert perf.returncode == 130, stderr
    summary = json.loads(stdout)
    assert 0 < summary["records"] < 10_000_000
    assert summary["records"] == _log_end(cli.address, "perf-int")
    assert b"interrupted" in stderr and b"Traceback" not in stderr
