"""Suite-wide set-up: refuse to run with asserts stripped (they are part of the design)."""

from __future__ import annotations

import sys

if not __debug__ or sys.flags.optimize:
    raise SystemExit(
        "the test suite refuses to run under `python -O`: asserts are part of the design"
    )
