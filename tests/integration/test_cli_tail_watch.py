"""`tail` notices its topic being deleted (also when it is created again at once)
and says where it started when an -o offset lies outside the log; real
subprocesses against a real broker."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from test_cli_commands import COMMAND_TIMEOUT_S, Cli


@pytest.fixture
def cli(broker: Any) -> Cli:
    return Cli(broker.address)


def _follow_until_first_line(cli: Cli, topic: str) -> subprocess.Popen[bytes]:
    tail = cli.popen(
        "tail", topic, "-o", "beginning", "--raw", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert tail.stdout is not None
    assert tail.stdout.readline() == b"first\n"  # tail is following now
    return tail


@pytest.mark.parametrize("recreate", [False, True])
def test_tail_exits_1_when_its_topic_is_deleted(cli: Cli, recreate: bool) -> None:
    """A following tail whose topic is deleted (and maybe created again with new
    records) says so on stderr and exits 1, printing nothing of the new topic."""
    cli.ok("topics", "create", "doomed")
    cli.ok("publish", "doomed", input=b"first\nsecond\nthird\n")
    tail = _follow_until_first_line(cli, "doomed")
    try:
        cli.ok("topics", "delete", "doomed")
        if recreate:
            cli.ok("topics", "create", "doomed")
            cli.ok("publish", "doomed", input=b"reborn\n")
        stdout, stderr = tail.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert tail.returncode == 1, stderr
    assert b"topic 'doomed'" in stderr and b"deleted" in stderr, stderr
    assert b"Traceback" not in stderr
    assert b"reborn" not in stdout


def test_an_offset_past_the_end_says_where_tail_started(cli: Cli) -> None:
    """-o 100 on a 3-record partition starts at its end (3) and says so on stderr."""
    cli.ok("topics", "create", "short")
    cli.ok("publish", "short", input=b"a\nb\nc\n")
    result = cli.ok("tail", "short", "-o", "100", "-e")
    assert result.stdout == b""
    assert b"short/0: offset 100 is past the end; starting at 3" in result.stderr
    inside = cli.ok("tail", "short", "-o", "1", "-e", "--raw")
    assert inside.stdout == b"b\nc\n" and b"starting at" not in inside.stderr
