"""The wall clock, in one place: what record timestamps, retention and group
deadlines default to.  Logic takes a clock as a parameter (tests pass their own);
this is the default they are given."""

from __future__ import annotations

import time


def wall_clock_ms() -> int:
    """Wall time in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000
