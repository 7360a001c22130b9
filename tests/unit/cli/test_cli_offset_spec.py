"""Unit tests for client/cli/offset_spec.py: every accepted form and the error message."""

from __future__ import annotations

from datetime import datetime

import click
import pytest

from client.cli.offset_spec import (
    Absolute,
    AtTimestamp,
    Beginning,
    End,
    FromEnd,
    OffsetRange,
    OffsetSpecType,
    StopAfter,
    StopAtEnd,
    StopAtOffset,
    StopAtTimestamp,
    parse_offset_range,
    parse_offset_spec,
)

NOW_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z


@pytest.mark.parametrize("text", ["beginning", "BEGINNING", "earliest", " beginning "])
def test_beginning_keywords(text: str) -> None:
    """Proves the start-of-log keywords (any case, surrounding spaces) parse to Beginning."""
    assert parse_offset_spec(text) == Beginning()


@pytest.mark.parametrize("text", ["end", "latest", "End"])
def test_end_keywords(text: str) -> None:
    """Proves the end-of-log keywords parse to End."""
    assert parse_offset_spec(text) == End()


def test_absolute_offset() -> None:
    """Proves a bare number is an absolute offset, including 0."""
    assert parse_offset_spec("1234") == Absolute(1234)
    assert parse_offset_spec("0") == Absolute(0)


def test_negative_number_counts_back_from_the_end() -> None:
    """Proves -N means N records before each partition's end."""
    assert parse_offset_spec("-10") == FromEnd(10)


def test_iso_time_with_zone() -> None:
    """Proves an ISO 8601 time with a UTC offset becomes exact epoch milliseconds."""
    assert parse_offset_spec("@2024-05-01T12:00:00Z") == AtTimestamp(NOW_MS)
    assert parse_offset_spec("@2024-05-01T14:00:00.250+02:00") == AtTimestamp(NOW_MS + 250)


def test_iso_time_without_zone_is_local_time() -> None:
    """Proves a naive ISO time is read as local time (what the user's clock shows)."""
    expected = round(datetime(2024, 5, 1, 12, 0, 0).timestamp() * 1000)
    assert parse_offset_spec("@2024-05-01T12:00:00") == AtTimestamp(expected)


def test_epoch_milliseconds() -> None:
    """Proves @DIGITS is a raw timestamp in milliseconds since the epoch."""
    assert parse_offset_spec("@1714564800000") == AtTimestamp(NOW_MS)


@pytest.mark.parametrize(
    ("text", "ago_ms"),
    [
        ("@-1h", 3_600_000),
        ("@-30m", 1_800_000),
        ("@-10s", 10_000),
        ("@-2d", 172_800_000),
        ("@-1w", 604_800_000),
        ("@-250ms", 250),
        ("@-1h30m", 5_400_000),
        ("@-1.5s", 1_500),
    ],
)
def test_relative_durations(text: str, ago_ms: int) -> None:
    """Proves @-DURATION resolves against the injected clock, with every unit and compounds."""
    assert parse_offset_spec(text, now_ms=NOW_MS) == AtTimestamp(NOW_MS - ago_ms)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "soon",
        "-x",
        "1.5",
        "@",
        "@-",
        "@-1y",
        "@-h",
        "@-1h2",
        "@yesterday",
        "@-10s ago",
        "--1",
        "²",
    ],
)
def test_bad_specs_raise_one_line_bad_parameter(text: str) -> None:
    """Proves every malformed spec is a click.BadParameter naming the spec, on one line."""
    with pytest.raises(click.BadParameter) as caught:
        parse_offset_spec(text, now_ms=NOW_MS)
    message = caught.value.message
    assert "\n" not in message
    assert "bad offset spec" in message
    assert repr(text) in message


def test_param_type_converts_and_fails_with_usage_error() -> None:
    """Proves the click type converts good specs and reports bad ones as a usage error."""

    @click.command()
    @click.option("-o", "offset", type=OffsetSpecType(), default="end")
    def command(offset: object) -> None:
        click.echo(repr(offset))

    from click.testing import CliRunner

    runner = CliRunner()
    good = runner.invoke(command, ["-o", "-5"])
    assert good.exit_code == 0
    assert good.output.strip() == "FromEnd(count=5)"
    assert runner.invoke(command, []).output.strip() == "End()"
    bad = runner.invoke(command, ["-o", "sideways"])
    assert bad.exit_code == 2
    assert "bad offset spec 'sideways'" in bad.output


# -- ranges (START:END) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10:20", OffsetRange(Absolute(10), StopAtOffset(20))),
        (":end", OffsetRange(Beginning(), StopAtEnd())),
        ("beginning:latest", OffsetRange(Beginning(), StopAtEnd())),
        ("-5:+3", OffsetRange(FromEnd(5), StopAfter(3))),
        (
            "@-1h:@-30m",
            OffsetRange(AtTimestamp(NOW_MS - 3_600_000), StopAtTimestamp(NOW_MS - 1_800_000)),
        ),
        ("end", OffsetRange(End())),
    ],
)
def test_range_forms(text: str, expected: OffsetRange) -> None:
    """Proves START:END parses both sides, an empty START is the beginning, and a plain
    spec has no end."""
    assert parse_offset_range(text, now_ms=NOW_MS) == expected


def test_range_with_iso_times_on_both_sides() -> None:
    """Proves the colons inside ISO 8601 times are not taken for the range separator."""
    parsed = parse_offset_range("@2024-05-01T00:00:00Z:@2024-05-02T00:00:00+00:00")
    assert parsed == OffsetRange(AtTimestamp(1_714_521_600_000), StopAtTimestamp(1_714_608_000_000))
    assert parse_offset_range("@2024-05-01T00:00:00Z").stop is None


@pytest.mark.parametrize("text", ["10:x", "10:-3", "a:b", ":"])
def test_bad_range_is_one_line(text: str) -> None:
    """Proves a range whose end is not end, N, +N or @TIME is refused with one line."""
    with pytest.raises(click.BadParameter) as raised:
        parse_offset_range(text, now_ms=NOW_MS)
    assert "\n" not in raised.value.message
