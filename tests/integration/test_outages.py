"""Clients through broker outages, run as real subprocesses against a real broker that
is stopped and started again on the same port: `publish` rides out a restart
(every line exactly once, in order), fails with the first unacknowledged line and
no gap when the outage outlasts its delivery timeout, and `tail` following waits
for the broker and loses nothing; and a `tail -g` member killed soon after its
first records has committed them already.

The outages are real time (the broker is down for some seconds); what the tests
wait for otherwise is a state (records visible, a line on stderr), never a delay.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import pytest
from test_cli_commands import Cli

# How long the broker stays down for the outages that clients must ride out:
# longer than what used to end them (a producer's 10 retries, about 16-19 s; a
# consumer's 5 reconnect rounds, about 12 s).
PUBLISH_OUTAGE_S = 20.0
TAIL_OUTAGE_S = 15.0
# Upper bound for a client to show the effect of something (records, a line).
STATE_TIMEOUT_S = 30.0


@pytest.fixture
def cli(broker: Any) -> Cli:
    return Cli(broker.address)


def lines(first: int, last: int) -> bytes:
    return b"".join(b"line-%d\n" % n for n in range(first, last + 1))


def topic_values(cli: Cli, topic: str) -> list[bytes]:
    return cli.ok("tail", topic, "-o", "beginning", "-e", "-f", "%s\\n").stdout.splitlines()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (at most STATE_TIMEOUT_S)."""
    deadline = time.monotonic() + STATE_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def feed(stdin: IO[bytes], data: bytes, pieces: int, seconds: float) -> None:
    """Write ``data`` in ``pieces`` chunks (cut at newlines) over about ``seconds``:
    a paced producer such as ``tail -f app.log``.  Stops if the reader has exited."""
    rows = data.splitlines(keepends=True)
    step = max(1, len(rows) // pieces)
    for start in range(0, len(rows), step):
        try:
            stdin.write(b"".join(rows[start : start + step]))
            stdin.flush()
        except BrokenPipeError:
            return  # the command stopped reading (and exited)
        time.sleep(seconds / pieces)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_publish_rides_out_a_broker_restart(
    cli: Cli, broker: Any, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Proves `publish` whose broker is down for several seconds in the middle of its
    input (longer than the old bound of 10 retries) retries until it is back,
    exits 0, and the topic holds every line exactly once, in order."""
    cli.ok("topics", "create", "ride", "-p", "1")
    publish = cli.popen(
        "publish", "ride", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    processes.append(publish)
    assert publish.stdin is not None
    feed(publish.stdin, lines(1, 500), pieces=5, seconds=0.5)
    wait_for(lambda: len(topic_values(cli, "ride")) == 500, "the first 500 lines")
    broker.stop()
    feed(publish.stdin, lines(501, 1500), pieces=20, seconds=PUBLISH_OUTAGE_S)
    broker.start()
    feed(publish.stdin, lines(1501, 2000), pieces=5, seconds=0.5)
    _, stderr = publish.communicate(timeout=120)
    assert publish.returncode == 0, stderr
    assert "published 2,000 records" in stderr.decode(), stderr
    assert topic_values(cli, "ride") == lines(1, 2000).splitlines()


def test_publish_past_its_delivery_timeout_names_the_first_line_and_leaves_no_gap(
    cli: Cli, broker: Any, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Proves `publish --delivery-timeout-ms` whose broker stays down longer than that
    exits 1 naming the first unacknowledged line, and the topic holds exactly the
    lines before it: nothing after it is written, also not what is read once the
    broker is back."""
    cli.ok("topics", "create", "gap", "-p", "1")
    publish = cli.popen(
        "publish",
        "gap",
        "--delivery-timeout-ms",
        "2000",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    processes.append(publish)
    assert publish.stdin is not None
    feed(publish.stdin, lines(1, 100), pieces=2, seconds=0.1)
    wait_for(lambda: len(topic_values(cli, "gap")) == 100, "the first 100 lines")
    broker.stop()
    feed(publish.stdin, lines(101, 200), pieces=10, seconds=5.0)
    broker.start()
    feed(publish.stdin, lines(201, 300), pieces=5, seconds=0.5)
    _, stderr = publish.communicate(timeout=60)
    text = stderr.decode()
    assert publish.returncode == 1, text
    assert "line 101 was not acknowledged" in text, text
    assert "(request timed out: not acknowledged within delivery_timeout_ms" in text, text
    assert topic_values(cli, "gap") == lines(1, 100).splitlines()


def test_tail_follows_through_a_broker_outage(
    cli: Cli, broker: Any, tmp_path: Any, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Proves `tail` following a topic whose broker is down for longer than the
    consumer's reconnect attempts keeps running, says once that the broker is
    unreachable and once that it is back, and prints every record published before
    and after the outage exactly once, in order."""
    cli.ok("topics", "create", "follow", "-p", "1")
    cli.ok("publish", "follow", input=lines(1, 50))
    out_path, err_path = tmp_path / "tail.out", tmp_path / "tail.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        tail = cli.popen("tail", "follow", "-o", "beginning", "-f", "%s\\n", stdout=out, stderr=err)
    processes.append(tail)
    wait_for(lambda: out_path.read_bytes().count(b"\n") == 50, "the first 50 records")
    broker.stop()
    wait_for(lambda: b"unreachable" in err_path.read_bytes(), "the unreachable line")
    time.sleep(TAIL_OUTAGE_S)
    assert tail.poll() is None, err_path.read_bytes()
    broker.start()
    wait_for(lambda: b"reachable again" in err_path.read_bytes(), "the back line")
    cli.ok("publish", "follow", input=lines(51, 100))
    wait_for(lambda: out_path.read_bytes().count(b"\n") == 100, "all 100 records")
    tail.terminate()
    tail.wait(timeout=10)
    assert out_path.read_bytes() == lines(1, 100)
    stderr = err_path.read_bytes().decode()
    assert stderr.count("unreachable") == 1 and stderr.count("reachable again") == 1, stderr


def test_group_member_killed_soon_after_its_first_records_has_committed_them(
    cli: Cli, tmp_path: Any, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Proves a `tail -g` member commits soon after its first records (not only after
    the 5 s auto-commit interval): killed with SIGKILL about two seconds after
    printing them, its group's committed offset already covers them, so a restart
    re-delivers none of them."""
    cli.ok("topics", "create", "early", "-p", "1")
    cli.ok("publish", "early", input=lines(1, 100))
    out_path = tmp_path / "tail.out"
    with out_path.open("wb") as out:
        tail = cli.popen(
            "tail", "early", "-g", "early-group", "-o", "beginning", "-f", "%s\\n", stdout=out
        )
    processes.append(tail)
    wait_for(lambda: out_path.read_bytes().count(b"\n") == 100, "the 100 records")
    time.sleep(2.0)  # the member runs on for two seconds, then crashes
    tail.send_signal(signal.SIGKILL)
    tail.wait(timeout=10)
    described = json.loads(cli.ok("groups", "describe", "early-group", "--json").stdout)
    committed = [p["committed_offset"] for p in described["partitions"]]
    assert committed == [100], described


def test_group_tail_follows_through_a_broker_outage(
    cli: Cli, broker: Any, tmp_path: Any, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Proves a `tail -g` member keeps running through a broker outage longer than
    the consumer's reconnect attempts, rejoins its group once the broker is back,
    and prints the records published before and after exactly once."""
    cli.ok("topics", "create", "member", "-p", "1")
    cli.ok("publish", "member", input=lines(1, 50))
    out_path, err_path = tmp_path / "tail.out", tmp_path / "tail.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        tail = cli.popen(
            "tail",
            "member",
            "-g",
            "outlasting",
            "-o",
            "beginning",
            "-f",
            "%s\\n",
            stdout=out,
            stderr=err,
        )
    processes.append(tail)
    wait_for(lambda: out_path.read_bytes().count(b"\n") == 50, "the first 50 records")

    def committed() -> list[int | None]:
        described = json.loads(cli.ok("groups", "describe", "outlasting", "--json").stdout)
        return [p["committed_offset"] for p in described["partitions"]]

    wait_for(lambda: committed() == [50], "the commit of the first 50 records")
    broker.stop()
    wait_for(lambda: b"unreachable" in err_path.read_bytes(), "the unreachable line")
    time.sleep(TAIL_OUTAGE_S)
    assert tail.poll() is None, err_path.read_bytes()
    broker.start()
    wait_for(lambda: b"reachable again" in err_path.read_bytes(), "the back line")
    cli.ok("publish", "member", input=lines(51, 100))
    wait_for(lambda: out_path.read_bytes().count(b"\n") >= 100, "all 100 records")
    wait_for(lambda: committed() == [100], "the commit of all 100 records")
    tail.terminate()
    tail.wait(timeout=10)
    assert out_path.read_bytes() == lines(1, 100), err_path.read_bytes()
