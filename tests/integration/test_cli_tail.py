"""`distributary tail`'s kcat/rpk features, run as real subprocesses against a real broker:
several topics and regex subscriptions, ranges with an end (`-o START:END`), formatted
timestamps and hex/base64 values, and `--no-commit` for group reads."""

from __future__ import annotations

from typing import Any

import pytest
from test_cli_commands import Cli, assert_one_line_error

from client.sync import Admin, Producer
from client.types import TopicPartition


@pytest.fixture
def cli(broker: Any) -> Cli:
    return Cli(broker.address)


def publish_numbers(cli: Cli, topic: str, count: int, partitions: int = 1) -> None:
    cli.ok("topics", "create", topic, "--partitions", str(partitions))
    cli.ok("publish", topic, "-p", "0", input=b"".join(b"%d\n" % n for n in range(count)))


def test_offset_range_stops_before_its_end_without_e(cli: Cli) -> None:
    """Proves `-o 3:6` prints offsets 3, 4 and 5 and exits by itself (no -e, no -n)."""
    publish_numbers(cli, "ranged", 10)
    result = cli.ok("tail", "ranged", "-o", "3:6", "-f", "%o=%s\\n")
    assert result.stdout == b"3=3\n4=4\n5=5\n"


def test_range_end_after_n_records_and_at_log_end(cli: Cli) -> None:
    """Proves `:+N` stops after N records of each partition and `START:end` at the log end
    as it was when tail started (what -e does)."""
    publish_numbers(cli, "counted", 10)
    assert cli.ok("tail", "counted", "-o", "-4:+2", "--raw").stdout == b"6\n7\n"
    assert cli.ok("tail", "counted", "-o", "8:end", "--raw").stdout == b"8\n9\n"
    assert cli.ok("tail", "counted", "-o", ":end", "--raw").stdout.count(b"\n") == 10


def test_time_range_selects_records_by_timestamp(cli: Cli, broker: Any) -> None:
    """Proves `-o @T1:@T2` prints the records with T1 <= timestamp < T2, with %T{iso}."""
    cli.ok("topics", "create", "timed")
    base = 1_714_564_800_000  # 2024-05-01T12:00:00Z
    with Producer(broker.address) as producer:
        for minute in range(5):
            producer.send("timed", b"m%d" % minute, timestamp_ms=base + minute * 60_000)
    result = cli.ok(
        "tail", "timed", "-o", "@2024-05-01T12:01:00Z:@2024-05-01T12:03:00Z", "-f", "%T{iso} %s\\n"
    )
    assert result.stdout == b"2024-05-01T12:01:00.000Z m1\n2024-05-01T12:02:00.000Z m2\n"


def test_several_topics_and_binary_formats(cli: Cli) -> None:
    """Proves tail reads several topics at once (%t names each) and %s{hex} / %k{base64}
    encode the bytes."""
    cli.ok("topics", "create", "left")
    cli.ok("topics", "create", "right")
    cli.ok("publish", "left", "-K", ":", input=b"k:A\n")
    cli.ok("publish", "right", input=b"B\n")
    result = cli.ok(
        "tail", "left", "right", "-o", "beginning", "-e", "-f", "%t %k{base64} %s{hex}\\n"
    )
    assert sorted(result.stdout.splitlines()) == [b"left aw== 41", b"right  42"]


def test_regex_subscription_reads_matching_topics_only(cli: Cli) -> None:
    """Proves -r treats TOPIC as a pattern matched against whole names: matching topics are
    read, others (including a longer name with the pattern as a prefix) are not."""
    for name, value in (("metrics.cpu", b"c"), ("metrics.mem", b"m"), ("metricsX", b"x")):
        cli.ok("topics", "create", name)
        cli.ok("publish", name, input=value + b"\n")
    result = cli.ok("tail", "-r", r"metrics\..*", "-o", "beginning", "-e", "-f", "%t=%s\\n")
    assert sorted(result.stdout.splitlines()) == [b"metrics.cpu=c", b"metrics.mem=m"]


def test_regex_with_a_group_subscribes_by_pattern(cli: Cli, broker: Any) -> None:
    """Proves -r with -g subscribes the group member to every matching topic."""
    for name in ("events.a", "events.b", "other"):
        cli.ok("topics", "create", name)
        cli.ok("publish", name, input=name.encode() + b"\n")
    result = cli.ok("tail", "-r", r"events\..*", "-g", "g-regex", "-o", "beginning", "-e", "--raw")
    assert sorted(result.stdout.splitlines()) == [b"events.a", b"events.b"]


def test_no_commit_leaves_the_group_offsets_alone(cli: Cli, broker: Any) -> None:
    """Proves a group read with --no-commit prints the records and commits nothing, while
    the same read without it commits the position it reached."""
    publish_numbers(cli, "audit", 5)
    quiet = cli.ok(
        "tail", "audit", "-g", "readers", "-o", "beginning", "-e", "--no-commit", "--raw"
    )
    assert quiet.stdout.count(b"\n") == 5
    with Admin(broker.address) as admin:
        assert admin.committed_offsets("readers") == {}
    cli.ok("tail", "audit", "-g", "readers", "-o", "beginning", "-e", "--raw")
    with Admin(broker.address) as admin:
        assert admin.committed_offsets("readers") == {TopicPartition("audit", 0): 5}


def test_bad_combinations_and_patterns_are_one_line(cli: Cli) -> None:
    """Proves -e with a range end, --no-commit without -g, a bad regex and a regex that
    matches nothing each fail with one line and a non-zero exit."""
    publish_numbers(cli, "plain", 1)
    assert_one_line_error(cli.run("tail", "plain", "-o", "0:1", "-e"), "-e cannot be combined")
    assert_one_line_error(cli.run("tail", "plain", "--no-commit"), "--no-commit needs -g")
    assert_one_line_error(cli.run("tail", "-r", "(unclosed"), "not a regular expression")
    assert_one_line_error(cli.run("tail", "-r", "nothing.*", "-e"), "no topic matches")


def test_help_lists_the_format_tokens(cli: Cli) -> None:
    """Proves `tail --help` lists the format tokens and modifiers."""
    text = cli.run("tail", "--help", raw_argv=True).stdout.decode()
    for token in ("%t topic", "%T{iso}", "%s{hex}", "%k{base64}"):
        assert token in text, text
