"""The scripts under examples/ run against a real broker, so they cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUN_TIMEOUT_S = 60


def run_example(name: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_quickstart_producer_then_consumer(broker: Any, backend: str) -> None:
    """Proves the quick-start producer's records are all read back by the quick-start
    consumer, on trio and on asyncio."""
    topic = f"quickstart-{backend}"
    produced = run_example(
        "quickstart_producer.py", "--bootstrap", broker.address, "--topic", topic,
        "--count", "50", "--backend", backend,
    )  # fmt: skip
    assert "created topic" in produced
    consumed = run_example(
        "quickstart_consumer.py", "--bootstrap", broker.address, "--topic", topic,
        "--idle-s", "1", "--backend", backend,
    )  # fmt: skip
    # The producer sends one 'hello' plus --count more records.
    assert "read 51 records" in consumed


def test_sdk_throughput_example_runs(broker: Any) -> None:
    """Proves the throughput example produces and consumes every record it reports."""
    output = run_example("sdk_throughput.py", "--bootstrap", broker.address, "--records", "20000")
    assert "produce:" in output
    assert "consume (getmany):" in output
    assert "consume (async for):" in output
