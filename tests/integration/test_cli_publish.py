"""`distributary publish`'s input and delivery features, run as real subprocesses against a
real broker: delimiters, a whole file as one record, timestamps, per-record delivery
reports, and the bad-input rule (stop at the first bad line, everything before it
published, the line named)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from test_cli_commands import Cli, assert_one_line_error


@pytest.fixture
def cli(broker: Any) -> Cli:
    return Cli(broker.address)


def values(cli: Cli, topic: str) -> list[bytes]:
    output = cli.ok("tail", topic, "-o", "beginning", "-e", "-f", "%s{base64}\\n").stdout
    return [base64.b64decode(line) for line in output.splitlines()]


def test_delimiter_splits_records(cli: Cli) -> None:
    """Proves -D cuts the input at the given delimiter (escapes work), not at newlines."""
    cli.ok("topics", "create", "semi")
    cli.ok("publish", "semi", "-D", ";", input=b"a;b\nc;d")
    assert values(cli, "semi") == [b"a", b"b\nc", b"d"]
    cli.ok("topics", "create", "tabs")
    cli.ok("publish", "tabs", "-D", "\\t", input=b"x\ty\t")
    assert values(cli, "tabs") == [b"x", b"y"]


def test_whole_file_is_one_record(cli: Cli, tmp_path: Path) -> None:
    """Proves --whole publishes a file (newlines and all bytes) as exactly one record."""
    cli.ok("topics", "create", "blobs")
    blob = bytes(range(256)) * 40 + b"\n\nend"
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    result = cli.ok("publish", "blobs", str(path), "--whole", "-k", "blob.bin")
    assert "published 1 record " in result.stderr.decode()
    assert values(cli, "blobs") == [blob]


def test_timestamp_option_sets_every_record(cli: Cli) -> None:
    """Proves -T stamps each record with the given time (ISO 8601 or epoch ms)."""
    cli.ok("topics", "create", "stamped")
    cli.ok("publish", "stamped", "-T", "2024-05-01T12:00:00Z", input=b"a\nb\n")
    cli.ok("publish", "stamped", "-T", "1714564860000", input=b"c\n")
    output = cli.ok("tail", "stamped", "-o", "beginning", "-e", "-f", "%T %s\\n").stdout
    assert output == b"1714564800000 a\n1714564800000 b\n1714564860000 c\n"
    assert_one_line_error(cli.run("publish", "stamped", "-T", "yesterday"), "bad time 'yesterday'")


def test_report_gives_each_record_its_offset(cli: Cli) -> None:
    """Proves --report - writes one JSON line per record with its input line, partition and
    offset, in input order."""
    cli.ok("topics", "create", "reported")
    result = cli.ok("publish", "reported", "--report", "-", input=b"a\nb\nc\n")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["line"], e["partition"], e["offset"]) for e in lines] == [
        (1, 0, 0),
        (2, 0, 1),
        (3, 0, 2),
    ]


def test_bad_json_line_publishes_everything_before_it(cli: Cli) -> None:
    """Proves a malformed --json line in the middle of one read stops the input there: the
    good lines before it are published (none after), the error names the line, and the
    report marks it."""
    cli.ok("topics", "create", "jsonstop")
    good = b'{"value":"one"}\n{"value":"two"}\n'
    result = cli.run(
        "publish", "jsonstop", "--json", "--report", "-", input=good + b"oops\n" + good
    )
    assert_one_line_error(result, "stopped at line 3", "published before it: 2 records")
    assert values(cli, "jsonstop") == [b"one", b"two"]
    report = [json.loads(line) for line in result.stdout.splitlines()]
    assert report[-1]["line"] == 3 and report[-1]["error"] == "BAD_INPUT"


def test_oversized_record_stops_the_input_at_its_line(cli: Cli) -> None:
    """Proves a record over the producer's batch limit (16 MiB) is not skipped: the input
    stops at its line, the record before it is published and the one after it is not."""
    cli.ok("topics", "create", "big")
    data = b"before\n" + b"x" * (17 << 20) + b"\nafter\n"
    result = cli.run("publish", "big", input=data)
    assert_one_line_error(result, "stopped at line 2", "published before it: 1 record)")
    assert values(cli, "big") == [b"before"]


def test_json_refuses_options_it_takes_from_the_input(cli: Cli) -> None:
    """Proves --json with --whole or -T, and an empty delimiter, are usage errors."""
    cli.ok("topics", "create", "usage")
    assert_one_line_error(cli.run("publish", "usage", "--json", "--whole"), "--json takes")
    assert_one_line_error(cli.run("publish", "usage", "-D", ""), "must not be empty")


def test_publish_to_an_unknown_topic_follows_auto_create_topics(
    cli: Cli, broker_factory: Any
) -> None:
    """Proves publish asks the broker to create an unknown topic (the docs' own
    `seq 1 100 | distributary publish numbers`), and a broker with auto_create_topics
    off refuses it with one line."""
    cli.ok("publish", "numbers", input=b"".join(b"%d\n" % n for n in range(100)))
    assert len(values(cli, "numbers")) == 100
    strict = Cli(broker_factory(config={"auto_create_topics": False}).address)
    assert_one_line_error(strict.run("publish", "numbers", input=b"1\n"), "unknown topic 'numbers'")
