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

A range ``START:END`` also says where to stop, in each partition (as rpk's
``-o``; an empty START is ``beginning``)::

    :end  or  START:end       the log end as it is when tail starts (what -e does)
    START:N                   stop before offset N
    START:+N                  stop after N records from where the partition starts
    START:@TIME               stop at the first record with timestamp >= TIME
                              (any @ form above); waits for it when following

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


@dataclass(frozen=True, slots=True)
class StopAtEnd:
    """Stop at each partition's log end as it is when reading starts."""


@dataclass(frozen=True, slots=True)
class StopAtOffset:
    """Stop before this offset (exclusive)."""

    offset: int


@dataclass(frozen=True, slots=True)
class StopAfter:
    """Stop after ``count`` records of each partition."""

    count: int


@dataclass(frozen=True, slots=True)
class StopAtTimestamp:
    """Stop at the first record whose timestamp is >= ``timestamp_ms`` (not printed)."""

    timestamp_ms: int


StopSpec = StopAtEnd | StopAtOffset | StopAfter | StopAtTimestamp


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Where to start and, optionally, where to stop."""

    start: OffsetSpec
    stop: StopSpec | None = None


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


def parse_time_ms(text: str, *, now_ms: int | None = None) -> int:
    """A point in time (an ``@`` form without the ``@``: ISO 8601, epoch
    milliseconds, or ``-1h`` relative to now) -> milliseconds since the epoch.
    Raises click.BadParameter."""
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    try:
        return _parse_time(text, text.strip(), now_ms).timestamp_ms
    except click.BadParameter:
        raise click.BadParameter(
            f"bad time {text!r}: use an ISO 8601 time, milliseconds since the epoch "
            "or -DURATION (e.g. -1h)"
        ) from None


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


def _parse_stop(text: str, body: str, now_ms: int | None) -> StopSpec:
    """The END of a range.  Raises click.BadParameter."""
    lowered = body.strip().lower()
    if lowered in ("end", "latest", "last"):
        return StopAtEnd()
    if lowered.startswith("+") and _DIGITS.fullmatch(lowered[1:]):
        return StopAfter(int(lowered[1:]))
    if _DIGITS.fullmatch(lowered):
        return StopAtOffset(int(lowered))
    if lowered.startswith("@"):
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        return StopAtTimestamp(_parse_time(text, body.strip()[1:], now_ms).timestamp_ms)
    raise _bad(text, f"range end {body!r} is not end, N, +N or @TIME")


def parse_offset_range(text: str, *, now_ms: int | None = None) -> OffsetRange:
    """Parse ``START`` or ``START:END`` (see the module docstring).  ISO times hold
    colons too, so the whole text is tried as a start first, then each colon in turn
    as the separator until both sides parse.  Raises click.BadParameter."""
    try:
        return OffsetRange(parse_offset_spec(text, now_ms=now_ms))
    except click.BadParameter as whole_error:
        error = whole_error
    for index, char in enumerate(text):
        if char != ":":
            continue
        left, right = text[:index], text[index + 1 :]
        try:
            start = parse_offset_spec(left, now_ms=now_ms) if left.strip() else Beginning()
            return OffsetRange(start, _parse_stop(text, right, now_ms))
        except click.BadParameter as split_error:
            error = split_error
    raise error


if TYPE_CHECKING:  # click >= 8.2 types ParamType as a generic; 8.1 does not subscript
    _OffsetParamBase = click.ParamType[OffsetSpec, object]
    _RangeParamBase = click.ParamType[OffsetRange, object]
else:
    _OffsetParamBase = click.ParamType
    _RangeParamBase = click.ParamType


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


class OffsetRangeType(_RangeParamBase):
    """click parameter type for ``tail -o``: ``START`` or ``START:END``."""

    name = "range"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> OffsetRange:
        if isinstance(value, OffsetRange):
            return value
        try:
            return parse_offset_range(str(value))
        except click.BadParameter as error:
            self.fail(error.message, param, ctx)
