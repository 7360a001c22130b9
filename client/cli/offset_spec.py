"""Parsing the ``tail -o`` offset spec into a typed value.

Accepted forms (case-insensitive keywords)::

    beginning | earliest      the first offset still in each partition's log
    end | latest              the log end: only records published from now on
    N                         absolute offset N in every selected partition
    -N                        N records before each partition's log end
    @2024-05-01T12:00:00Z     the first record with timestamp >= that time (ISO 8601;
                              a time without a UTC offset is local time)
    @1714564800000            the same, as milliseconds since the Unix epoch
    @-1h  @-30m  @-10s  @-2d  a time relative to now (units ms, s, m, h, d, w;
                              combinable: @-1h30m)

Parsing is pure: the clock is an argument (``now_ms``), so relative times are
resolved to an absolute :class:`AtTimestamp` at parse time and tests are exact.
A bad spec raises :class:`click.BadParameter` with a one-line message.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

import click

_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_MS: Final = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 7 * 86_400_000,
}
_DIGITS: Final = re.compile(r"[0-9]+")
_HELP: Final = "use beginning, end, N, -N, @ISO-8601-time, @EPOCH-MS or @-DURATION (e.g. @-1h)"


@dataclass(frozen=True, slots=True)
class Beginning:
    """Start at each partition's log start offset."""


@dataclass(frozen=True, slots=True)
class End:
    """Start at each partition's log end offset (new records only)."""


@dataclass(frozen=True, slots=True)
class Absolute:
    """Start at this offset in every selected partition."""

    offset: int


@dataclass(frozen=True, slots=True)
class FromEnd:
    """Start ``count`` records before each partition's log end (clamped to its start)."""

    count: int


@dataclass(frozen=True, slots=True)
class AtTimestamp:
    """Start at the first record whose timestamp is >= ``timestamp_ms``."""

    timestamp_ms: int


OffsetSpec = Beginning | End | Absolute | FromEnd | AtTimestamp


def _bad(text: str, why: str) -> click.BadParameter:
    return click.BadParameter(f"bad offset spec {text!r}: {why}; {_HELP}")


def _parse_duration_ms(text: str, body: str) -> int:
    """``1h30m`` -> milliseconds.  Raises click.BadParameter."""
    position = 0
    total_ms = 0.0
    for match in _DURATION_PART.finditer(body):
        if match.start() != position:
            break
        total_ms += float(match.group(1)) * _UNIT_MS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(body):
        raise _bad(text, f"{body!r} is not a duration")
    return int(total_ms)


def _parse_time(text: str, body: str, now_ms: int) -> AtTimestamp:
    if body.startswith("-"):
        return AtTimestamp(now_ms - _parse_duration_ms(text, body[1:]))
    if _DIGITS.fullmatch(body):
        return AtTimestamp(int(body))
    try:
        moment = datetime.fromisoformat(body)
    except ValueError:
        raise _bad(text, f"{body!r} is not an ISO 8601 time") from None
    # A naive datetime is local time; .timestamp() applies the local offset.
    return AtTimestamp(round(moment.timestamp() * 1000))


def parse_offset_spec(text: str, *, now_ms: int | None = None) -> OffsetSpec:
    """Parse an offset spec.  ``now_ms`` defaults to the wall clock.

    Raises click.BadParameter (one line) when the spec is not valid.
    """
    spec = text.strip()
    lowered = spec.lower()
    if lowered in ("beginning", "earliest", "start", "first"):
        return Beginning()
    if lowered in ("end", "latest", "last"):
        return End()
    if spec.startswith("@"):
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        return _parse_time(text, spec[1:], now_ms)
    if spec.startswith("-") and _DIGITS.fullmatch(spec[1:]):
        return FromEnd(int(spec[1:]))
    if _DIGITS.fullmatch(spec):
        return Absolute(int(spec))
    if not spec:
        raise _bad(text, "it is empty")
    raise _bad(text, "not a keyword, offset or time")


if TYPE_CHECKING:  # click >= 8.2 types ParamType as a generic; 8.1 does not subscript
    _OffsetParamBase = click.ParamType[OffsetSpec, object]
else:
    _OffsetParamBase = click.ParamType


class OffsetSpecType(_OffsetParamBase):
    """click parameter type for ``-o``: converts to an :data:`OffsetSpec`."""

    name = "offset"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> OffsetSpec:
        if isinstance(value, Beginning | End | Absolute | FromEnd | AtTimestamp):
            return value
        try:
            return parse_offset_spec(str(value))
        except click.BadParameter as error:
            self.fail(error.message, param, ctx)
