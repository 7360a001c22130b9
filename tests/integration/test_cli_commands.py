"""The `distributary` client commands, run as real subprocesses against a real broker.

Each test drives the executable the way a user would (arguments, stdin, pipes,
signals) and checks stdout, stderr and the exit code.  Every subprocess has a
timeout, so a hung command fails its test instead of the suite.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

COMMAND_TIMEOUT_S = 30.0


def cli_prefix() -> list[str]:
    """The `distributary` executable: `python -m broker` once the lead registered the
    client commands there, else the client commands standalone (`python -m client.cli`)."""
    from broker.cli import main

    if "tail" in main.commands:
        return [sys.executable, "-m", "broker"]
    return [sys.executable, "-m", "client.cli"]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTARY_")}


class Cli:
    """Runs client commands against one broker address."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.prefix = cli_prefix()

    def argv(self, args: Sequence[str]) -> list[str]:
        command, *rest = args
        if command in ("topics", "perf", "groups"):
            sub, *rest = rest
            return [*self.prefix, command, sub, "--bootstrap", self.address, *rest]
        return [*self.prefix, command, "--bootstrap", self.address, *rest]

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        timeout_s: float = COMMAND_TIMEOUT_S,
        raw_argv: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [*self.prefix, *args] if raw_argv else self.argv(args)
        return subprocess.run(
            argv,
            input=input,
            capture_output=True,
            timeout=timeout_s,
            env=clean_env(),
            check=False,
        )

    def ok(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        result = self.run(*args, input=input)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(args), env=clean_env(), **kwargs)


@pytest.fixture
def cli(broker: Any) -> Cli:
    return Cli(broker.address)


def json_lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines()]


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], *needles: str) -> None:
    stderr = result.stderr.decode()
    assert result.returncode != 0, stderr
    assert "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in stderr, (needle, stderr)


def test_publish_then_tail_from_beginning_prints_lines_in_order(cli: Cli) -> None:
    """Proves lines published to one partition come back from `tail -o beginning -e` in order."""
    cli.ok("topics", "create", "lines")
    lines = [f"line {n}" for n in range(200)]
    published = cli.ok("publish", "lines", input=("\n".join(lines) + "\n").encode())
    assert "published 200 records" in published.stderr.decode()
    result = cli.ok("tail", "lines", "-o", "beginning", "-e", "--raw")
    assert result.stdout.decode().splitlines() == lines


def test_plain_output_when_piped_is_tab_separated(cli: Cli) -> None:
    """Proves the default piped output is partition:offset, key and value separated by tabs."""
    cli.ok("topics", "create", "plain")
    cli.ok("publish", "plain", "-K", ":", input=b"k1:v1\nnokey\n")
    result = cli.ok("tail", "plain", "-o", "beginning", "-e")
    assert result.stdout == b"0:0\tk1\tv1\n0:1\t\tnokey\n"


def test_keys_and_headers_round_trip(cli: Cli) -> None:
    """Proves --key-separator keys, -k keys and repeated -H headers arrive as published."""
    cli.ok("topics", "create", "keyed")
    cli.ok("publish", "keyed", "-K", "\\t", "-H", "a=1", "-H", "b=x=y", input=b"k1\tv1\nk2\tv\t2\n")
    cli.ok("publish", "keyed", "-k", "fixed", input=b"v3\n")
    cli.ok("publish", "keyed", "-K", ":", "--null-marker", "NULL", input=b"NULL:v4\nk5:NULL\n")
    result = cli.ok("tail", "keyed", "-o", "beginning", "-e", "-f", "%k|%s|%h|%K|%S\\n")
    assert result.stdout.decode().splitlines() == [
        "k1|v1|a=1,b=x=y|2|2",
        "k2|v\t2|a=1,b=x=y|2|3",
        "fixed|v3||5|2",
        "|v4||-1|2",
        "k5|||2|-1",
    ]


def test_json_pipe_copies_records_byte_for_byte(cli: Cli) -> None:
    """Proves `tail --json | publish --json` reproduces keys, values, headers and timestamps
    exactly, including non-UTF-8 bytes, nulls and empty values."""
    cli.ok("topics", "create", "source", "--partitions", "2")
    cli.ok("topics", "create", "copy", "--partitions", "2")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    originals = [
        {
            "key": b64(b"\xff\xfe"),
            "key_encoding": "base64",
            "value": b64(b"\x00\x80\xff"),
            "value_encoding": "base64",
            "headers": [{"name": "bin", "value": b64(b"\xc3\x28"), "encoding": "base64"}],
        },
        {"key": None, "value": None, "partition": 1},
        {"key": "", "value": "", "headers": [{"name": "e", "value": ""}]},
        {"key": "ünïcode", "value": '{"json": [1, 2]}', "timestamp": 1_600_000_000_000},
    ]
    source_input = "".join(json.dumps(item) + "\n" for item in originals).encode()
    cli.ok("publish", "source", "--json", "--keep-partition", input=source_input)
    dumped = cli.ok("tail", "source", "-o", "beginning", "-e", "--json").stdout
    cli.ok("publish", "copy", "--json", "--keep-partition", input=dumped)
    copied = cli.ok("tail", "copy", "-o", "beginning", "-e", "--json").stdout

    def comparable(document: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in document.items() if k != "topic"}

    source_records = sorted(
        map(comparable, json_lines(dumped)), key=lambda d: (d["partition"], d["offset"])
    )
    copy_records = sorted(
        map(comparable, json_lines(copied)), key=lambda d: (d["partition"], d["offset"])
    )
    assert len(source_records) == 4
    assert source_records == copy_records
    binary = next(d for d in copy_records if d.get("key_encoding") == "base64")
    assert base64.b64decode(binary["value"]) == b"\x00\x80\xff"
    assert base64.b64decode(binary["headers"][0]["value"]) == b"\xc3\x28"
    assert any(d["timestamp"] == 1_600_000_000_000 for d in copy_records)
    assert any(d["key"] is None and d["value"] is None for d in copy_records)
    raw = cli.ok("tail", "copy", "-o", "beginning", "-e", "-f", "%s")
    assert b"\x00\x80\xff" in raw.stdout


def test_offset_by_time_starts_at_the_right_record(cli: Cli) -> None:
    """Proves `-o @EPOCH-MS`, `-o @ISO` and `-o @-DURATION` start at the first record at or
    after that time."""
    cli.ok("topics", "create", "timed")
    cli.ok("publish", "timed", input=b"old-1\nold-2\n")
    time.sleep(0.05)
    boundary_ms = time.time_ns() // 1_000_000
    time.sleep(0.05)
    cli.ok("publish", "timed", input=b"new-1\nnew-2\n")
    by_ms = cli.ok("tail", "timed", "-o", f"@{boundary_ms}", "-e", "--raw")
    assert by_ms.stdout.decode().splitlines() == ["new-1", "new-2"]
    iso = datetime.fromtimestamp(boundary_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    by_iso = cli.ok("tail", "timed", "-o", f"@{iso}", "-e", "--raw")
    assert by_iso.stdout.decode().splitlines() == ["new-1", "new-2"]
    recent = cli.ok("tail", "timed", "-o", "@-1h", "-e", "--raw")
    assert recent.stdout.decode().splitlines() == ["old-1", "old-2", "new-1", "new-2"]
    future = cli.ok("tail", "timed", "-o", "@2999-01-01T00:00:00Z", "-e", "--raw")
    assert future.stdout == b""


def test_absolute_and_from_end_offsets(cli: Cli) -> None:
    """Proves `-o N` starts at offset N and `-o -N` at N records before the end."""
    cli.ok("topics", "create", "numbers")
    cli.ok("publish", "numbers", input=b"".join(b"%d\n" % n for n in range(10)))
    assert cli.ok("tail", "numbers", "-o", "7", "-e", "--raw").stdout == b"7\n8\n9\n"
    assert cli.ok("tail", "numbers", "-o", "-2", "-e", "--raw").stdout == b"8\n9\n"
    assert cli.ok("tail", "numbers", "-o", "-50", "-e", "--raw").stdout.count(b"\n") == 10


def test_count_stops_after_n_records(cli: Cli) -> None:
    """Proves -n stops after exactly N records even without -e (it would otherwise follow)."""
    cli.ok("topics", "create", "counted", "--partitions", "3")
    cli.ok("publish", "counted", input=b"".join(b"r%d\n" % n for n in range(50)))
    result = cli.ok("tail", "counted", "-o", "beginning", "-n", "7", "--raw")
    assert len(result.stdout.splitlines()) == 7


def test_live_tail_shows_a_record_published_after_it_started(cli: Cli) -> None:
    """Proves the default tail (from the end, following) prints a record published later."""
    cli.ok("topics", "create", "live")
    cli.ok("publish", "live", input=b"before\n")
    tail = cli.popen(
        "tail", "live", "-n", "1", "--raw", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        # tail may still be looking up the end offset: publish until it sees one.
        while tail.poll() is None and time.monotonic() < deadline:
            cli.ok("publish", "live", input=b"after\n")
            time.sleep(0.3)
        stdout, stderr = tail.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert tail.returncode == 0, stderr
    assert stdout == b"after\n"


def test_publish_interrupted_flushes_what_was_read(cli: Cli) -> None:
    """Proves Ctrl-C (SIGINT) during publish acknowledges the lines already read and exits 130."""
    cli.ok("topics", "create", "interrupted")
    publish = cli.popen(
        "publish",
        "interrupted",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert publish.stdin is not None
    try:
        publish.stdin.write(b"one\ntwo\nthree\n")
        publish.stdin.flush()
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while time.monotonic() < deadline:  # wait until the three are in the log
            seen = cli.ok("tail", "interrupted", "-o", "beginning", "-e", "--raw").stdout
            if seen.count(b"\n") == 3:
                break
            time.sleep(0.1)
        publish.send_signal(signal.SIGINT)
        _, stderr = publish.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if publish.poll() is None:
            publish.kill()
            publish.wait()
    assert publish.returncode == 130, stderr
    assert b"published 3 records" in stderr
    assert b"Traceback" not in stderr
    assert (
        cli.ok("tail", "interrupted", "-o", "beginning", "-e", "--raw").stdout
        == b"one\ntwo\nthree\n"
    )


def test_topics_lifecycle(cli: Cli) -> None:
    """Proves topics create/list/describe/delete work and describe shows offsets and config."""
    created = cli.ok(
        "topics", "create", "life", "--partitions", "2", "--config", "retention_ms=3600000"
    )
    assert "created topic 'life' with 2 partitions" in created.stderr.decode()
    assert "life" in cli.ok("topics", "list").stdout.decode().splitlines()
    assert "life" in json.loads(cli.ok("topics", "list", "--json").stdout)
    cli.ok("publish", "life", "-p", "1", input=b"a\nb\n")
    described = json.loads(cli.ok("topics", "describe", "life", "--json").stdout)
    assert [p["log_end_offset"] for p in described["partitions"]] == [0, 2]
    assert described["partitions"][1]["size_bytes"] > 0
    assert described["configs"]["retention_ms"] == "3600000"
    table = cli.ok("topics", "describe", "life").stdout.decode()
    assert "log end" in table and "retention_ms = 3600000" in table
    cli.ok("topics", "create", "life", "--if-not-exists")
    assert "deleted topic 'life'" in cli.ok("topics", "delete", "life").stderr.decode()
    assert "life" not in cli.ok("topics", "list").stdout.decode().splitlines()
    cli.ok("topics", "delete", "life", "--if-exists")


def test_perf_produce_and_consume_json_summaries(cli: Cli) -> None:
    """Proves perf produce/consume run to completion and report rates and latency as JSON."""
    cli.ok("topics", "create", "bench", "--partitions", "2")
    produced = json.loads(
        cli.ok(
            "perf", "produce", "bench", "--records", "2000", "--record-size", "64", "--json"
        ).stdout
    )
    assert produced["records"] == 2000 and produced["bytes"] == 2000 * 64
    assert produced["errors"] == 0
    assert (
        0
        < produced["latency_ms"]["p50"]
        <= produced["latency_ms"]["p99"]
        <= produced["latency_ms"]["max"]
    )
    consumed = json.loads(cli.ok("perf", "consume", "bench", "--records", "2000", "--json").stdout)
    assert consumed["records"] == 2000 and consumed["records_per_s"] > 0
    line = cli.ok(
        "perf", "produce", "bench", "--records", "100", "--record-size", "10", "--rate", "1000"
    )
    assert "records/s" in line.stdout.decode() and "p99" in line.stdout.decode()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("tail", "missing", "-e"), ("unknown topic 'missing'",)),
        (("topics", "describe", "missing"), ("missing",)),
        (("topics", "delete", "missing"), ("missing",)),
        (("tail", "exists", "-o", "sideways"), ("bad offset spec 'sideways'",)),
        (("tail", "exists", "-f", "%q"), ("unknown token '%q'",)),
        (("tail", "exists", "--no-such-flag"), ("no-such-flag",)),
        (("tail", "exists", "--json", "--raw"), ("choose one of",)),
        (("publish", "exists", "-H", "novalue"), ("expected name=value",)),
        (("publish", "exists", "-k", "a", "-K", ":"), ("not both",)),
        (("tail", "exists", "-p", "9", "-e"), ("no partition",)),
        (("topics", "create", "exists"), ("already exists",)),
        (("topics", "create", "bad/name"), ("bad/name",)),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(
    cli: Cli, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    """Proves each documented error exits non-zero with a message naming the problem and no
    traceback."""
    cli.ok("topics", "create", "exists", "--if-not-exists")
    result = cli.run(*args, input=b"x\n")
    assert_one_line_error(result, *needles)


def test_bad_json_input_line_is_reported_with_its_line_number(cli: Cli) -> None:
    """Proves publish --json stops at a malformed line, naming it, after publishing the rest."""
    cli.ok("topics", "create", "jsonerr")
    result = cli.run("publish", "jsonerr", "--json", input=b'{"value":"ok"}\nnot json\n')
    assert_one_line_error(result, "line 2")


def test_unreachable_broker_is_named(cli: Cli) -> None:
    """Proves a dead address gives 'broker unreachable at ADDRESS' and exit 1, no traceback."""
    dead = Cli("127.0.0.1:1")
    result = dead.run("topics", "list", timeout_s=60)
    assert result.returncode == 1
    assert_one_line_error(result, "broker unreachable at 127.0.0.1:1")
    assert result.stderr.count(b"127.0.0.1:1") == 1  # the address is said once
    assert b"Connection refused" in result.stderr  # the system's words, not anyio's


def test_debug_shows_the_traceback(cli: Cli) -> None:
    """Proves --debug adds the traceback that is hidden otherwise."""
    result = cli.run("tail", "missing", "-e", "--debug")
    assert result.returncode == 1
    assert b"Traceback" in result.stderr


def test_bootstrap_from_environment(cli: Cli) -> None:
    """Proves DISTRIBUTARY_BOOTSTRAP is the default --bootstrap."""
    cli.ok("topics", "create", "envtopic")
    env = {**clean_env(), "DISTRIBUTARY_BOOTSTRAP": cli.address}
    result = subprocess.run(
        [*cli.prefix, "topics", "list"],
        capture_output=True,
        env=env,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"envtopic" in result.stdout


@pytest.mark.parametrize(
    "command",
    [
        ("topics", "create"),
        ("topics", "describe"),
        ("topics", "list"),
        ("topics", "delete"),
        ("publish",),
        ("tail",),
        ("perf", "produce"),
        ("perf", "consume"),
    ],
)
def test_help_shows_examples(cli: Cli, command: tuple[str, ...]) -> None:
    """Proves every command's --help has an Examples section."""
    result = cli.run(*command, "--help", raw_argv=True)
    assert result.returncode == 0, result.stderr
    assert b"Examples:" in result.stdout
