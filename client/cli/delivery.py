"""What ``publish`` tells the user about delivery: counts, the first record that did not
make it (by input line, so a rerun can resume there), and optional per-record reports.

Records are enqueued in input order and every input line that became a record
has one handle, so the handles sit in a deque and the line of the leftmost one
is a single number (no per-record tuple).  :meth:`DeliveryTracker.trim` drops
acknowledged handles from the left as the reading goes on; :meth:`wait_all`
waits for the rest at the end; :meth:`finish` prints the summary and turns any
failure into one error line (exit 1).
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import IO

import click

from client.cli.common import CommandError, format_bytes, plural
from client.errors import DistributaryError
from client.producer import RecordHandle


class Stop(Exception):
    """The input line ``line_number`` cannot become a record: reading stops there."""

    def __init__(self, line_number: int, reason: str) -> None:
        super().__init__(f"line {line_number}: {reason}")
        self.line_number = line_number
        self.reason = reason


class DeliveryTracker:
    """Counts and reports the delivery of one ``publish`` run (see the module docstring)."""

    def __init__(self, topic: str, report: IO[str] | None) -> None:
        self.topic = topic
        self.report = report
        self.line_number = 0  # input lines turned into records so far
        self.acknowledged = 0
        self.failed = 0
        self.acknowledged_bytes = 0
        self.first_failure: tuple[int, DistributaryError] | None = None
        self.stopped: Stop | None = None
        self.interrupted = False
        self._handles: deque[RecordHandle] = deque()
        self._sizes: deque[int] = deque()
        self._first_line = 1  # the input line of _handles[0]
        self._started = time.perf_counter()

    def add(self, handle: RecordHandle, size: int) -> None:
        self.line_number += 1
        self._handles.append(handle)
        self._sizes.append(size)

    def trim(self) -> None:
        """Account for the acknowledged (or failed) handles at the left."""
        handles = self._handles
        while handles and handles[0].done():
            self._settle(handles.popleft())

    async def wait_all(self) -> None:
        """Wait for every outstanding record, in order."""
        handles = self._handles
        while handles:
            handle = handles.popleft()
            try:
                await handle.wait()
            except DistributaryError:
                pass  # _settle reads the error from the handle
            self._settle(handle)

    def _settle(self, handle: RecordHandle) -> None:
        line = self._first_line
        self._first_line += 1
        size = self._sizes.popleft()
        try:
            metadata = handle.result()
        except DistributaryError as error:
            self.failed += 1
            if self.first_failure is None:
                self.first_failure = (line, error)
            self._write_report({"line": line, "error": error.code.name, "message": str(error)})
            return
        self.acknowledged += 1
        self.acknowledged_bytes += size
        self._write_report(
            {
                "line": line,
                "partition": metadata.partition,
                "offset": metadata.offset,
                "timestamp_ms": metadata.timestamp_ms,
            }
        )

    def _write_report(self, entry: dict[str, object]) -> None:
        if self.report is not None:
            self.report.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def summary(self) -> str:
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        return (
            f"published {plural(self.acknowledged, 'record')} "
            f"({format_bytes(self.acknowledged_bytes)}) to {self.topic!r} in {elapsed:.2f} s: "
            f"{self.acknowledged / elapsed:,.0f} records/s, "
            f"{self.acknowledged_bytes / elapsed / 1_000_000:,.2f} MB/s"
        )

    def finish(self, code: int) -> int:
        """Print the summary; raise CommandError (one line, exit 1) if a line was bad
        or a record was not acknowledged; else return ``code``."""
        stopped = self.stopped
        if stopped is not None:
            self._write_report(
                {"line": stopped.line_number, "error": "BAD_INPUT", "message": stopped.reason}
            )
        if self.report is not None:
            self.report.flush()
        click.echo(self.summary(), err=True)
        if self.first_failure is not None:
            line, error = self.first_failure
            after = (
                f"; {plural(self.failed - 1, 'later record')} failed too" if self.failed > 1 else ""
            )
            words = error.code.name.lower().replace("_", " ")  # as common.describe says it
            raise CommandError(
                f"line {line} was not acknowledged ({words}: {error}){after}; "
                f"acknowledged: {plural(self.acknowledged, 'record')}"
            )
        if stopped is not None:
            raise CommandError(
                f"stopped at line {stopped.line_number}: {stopped.reason} "
                f"(published before it: {plural(self.acknowledged, 'record')})"
            )
        return code
