"""The simulator's ground-truth ledger, and the outcome a correct pipeline must reach.

The simulator (sim.py) writes one JSON line per MQTT publish, in send order: the
device, its sequence number, the event time, the fault it was given, the SHA-1
of the payload bytes, and for a payload a correct validator accepts the decoded
values.  Beside it, ``<ledger>.meta.json`` holds the run's settings (seed, rates,
which devices go silent, which burst).  Every end state of the pipeline is then
checkable exactly:

- :func:`expected_outcome` derives the valid unique readings (by device and
  sequence), the dead letters expected per reason (as sets of payload hashes),
  the deliberate duplicates and the silent devices;
- :class:`ReferenceWindows` is an oracle for the aggregate stage, written apart
  from windows.py: one-minute tumbling windows per device on event time with a
  grace period, per-device stream time, late readings dropped and counted once
  per distinct (device, seq), and the partition stream-time rule that closes a
  silent device's windows.  It processes readings in ledger order, the order
  the aggregate sees them per device.

Aggregates: ``mean = math.fsum(values) / count`` (exactly rounded, so the result
does not depend on the order readings were added in).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Final

import msgspec

from client.partitioner import partition_for_key
from examples.iot import names

# Fault kinds, the ``fault`` of a ledger line and the label of iot_sim_published_total.
FAULT_NONE: Final = "none"
FAULT_MALFORMED: Final = "malformed"
FAULT_OUT_OF_RANGE: Final = "out_of_range"
FAULT_UNKNOWN_VERSION: Final = "unknown_version"
FAULT_DEVICE_MISMATCH: Final = "device_mismatch"
FAULT_DUPLICATE: Final = "duplicate"
FAULT_OUT_OF_ORDER: Final = "out_of_order"
FAULT_LATE: Final = "late"
FAULT_BURST: Final = "burst"
FAULTS: Final[tuple[str, ...]] = (
    FAULT_NONE,
    FAULT_MALFORMED,
    FAULT_OUT_OF_RANGE,
    FAULT_UNKNOWN_VERSION,
    FAULT_DEVICE_MISMATCH,
    FAULT_DUPLICATE,
    FAULT_OUT_OF_ORDER,
    FAULT_LATE,
    FAULT_BURST,
)
# The dead-letter reason each invalid fault must get from the validator.
DLQ_REASON_OF_FAULT: Final[dict[str, str]] = {
    FAULT_MALFORMED: names.DLQ_MALFORMED,
    FAULT_OUT_OF_RANGE: names.DLQ_OUT_OF_RANGE,
    FAULT_UNKNOWN_VERSION: names.DLQ_UNKNOWN_SCHEMA_VERSION,
    FAULT_DEVICE_MISMATCH: names.DLQ_DEVICE_MISMATCH,
}

WINDOW_S_DEFAULT: Final = 60
GRACE_S_DEFAULT: Final = 30.0
# A device's windows also close once its partition's stream time is this far past
# their end plus the grace: a silent device's last window is emitted.
SILENT_CLOSE_EXTRA_S_DEFAULT: Final = 60.0


class Values(msgspec.Struct, frozen=True, array_like=True):
    """The decoded measurements of a valid reading (v1 already upgraded)."""

    temperature_c: float
    humidity_pct: float
    battery_v: float


class LedgerEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """One MQTT publish of the simulator.

    ``ts`` is the event time the payload carries, in epoch seconds (v1 payloads
    carry milliseconds: ``ts = t / 1000``).  ``reason`` is the dead-letter reason
    the validator must give the payload, empty for a valid one; ``values`` is set
    exactly for valid ones.
    """

    index: int
    sent_s: float
    device: str
    seq: int
    ts: float
    fault: str
    firmware: int
    sha1: str
    reason: str = ""
    values: Values | None = None


class LedgerMeta(msgspec.Struct, frozen=True):
    """The run's settings, written once beside the ledger (``<ledger>.meta.json``)."""

    devices: int
    rate_per_s: float
    duration_s: float
    seed: int
    start_ts: float
    fault_rates: dict[str, float]
    silent_devices: list[str]
    silent_from_s: float
    burst_devices: list[str]
    burst_from_s: float
    burst_s: float


def payload_sha1(payload: bytes) -> str:
    """The identity of a payload in the ledger."""
    return hashlib.sha1(payload, usedforsecurity=False).hexdigest()


def meta_path(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.name + ".meta.json")


_encoder: Final = msgspec.json.Encoder()
_entry_decoder: Final = msgspec.json.Decoder(LedgerEntry)


class LedgerWriter:
    """Appends entries to a JSONL ledger file; ``close`` flushes.  Use as a context
    manager.  Raises OSError when the file cannot be written."""

    def __init__(self, path: Path, meta: LedgerMeta) -> None:
        self.path = path
        meta_path(path).write_bytes(msgspec.json.format(_encoder.encode(meta)) + b"\n")
        self._file: IO[bytes] = path.open("wb")
        self._buffer = bytearray()
        self.written = 0

    def write(self, entries: Iterable[LedgerEntry]) -> None:
        buffer = self._buffer
        for entry in entries:
            _encoder.encode_into(entry, buffer, len(buffer))
            buffer.append(10)
            self.written += 1
        if len(buffer) >= 1 << 16:
            self.flush()

    def flush(self) -> None:
        self._file.write(self._buffer)
        self._buffer.clear()
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def read_ledger(path: Path) -> Iterator[LedgerEntry]:
    """The entries of a ledger in send order.  A last line cut short (the simulator
    was killed while writing) is skipped.  Raises OSError; msgspec.ValidationError
    for a line that is not a ledger entry."""
    with path.open("rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                return
            yield _entry_decoder.decode(line)


def read_meta(ledger_path: Path) -> LedgerMeta:
    """The settings of the run that wrote ``ledger_path``.  Raises OSError,
    msgspec.DecodeError."""
    return msgspec.json.decode(meta_path(ledger_path).read_bytes(), type=LedgerMeta)


# -- the reference windowing ---------------------------------------------------------------


class WindowResult(msgspec.Struct, frozen=True):
    """One closed window of one device, as iot.agg.1m must carry it."""

    device: str
    window_start: int
    count: int
    temperature_min_c: float
    temperature_max_c: float
    temperature_mean_c: float
    humidity_mean_pct: float


def window_result(device: str, window_start: int, readings: dict[int, Values]) -> WindowResult:
    temperatures = [values.temperature_c for values in readings.values()]
    humidities = [values.humidity_pct for values in readings.values()]
    count = len(readings)
    return WindowResult(
        device=device,
        window_start=window_start,
        count=count,
        temperature_min_c=min(temperatures),
        temperature_max_c=max(temperatures),
        temperature_mean_c=math.fsum(temperatures) / count,
        humidity_mean_pct=math.fsum(humidities) / count,
    )


def valid_partition_of(device: str) -> int:
    """The partition of iot.valid a device's readings go to (keyed by device id)."""
    partitions = next(spec.partitions for spec in names.TOPICS if spec.name == names.VALID_TOPIC)
    return partition_for_key(device.encode(), partitions)


class ReferenceWindows:
    """The window semantics of the plan, written plainly for checking.

    ``add`` one valid reading at a time in the order the aggregate sees them.
    Per device: stream time ``st = max(st, ts)`` first; the reading is late (and
    ``(device, seq)`` joins :attr:`late`) when its window's ``end + grace <= st``
    or its window was already closed; else it goes into its window's map
    seq -> values (a repeated seq changes nothing).  Then every open window of
    the device with ``end + grace <= st`` closes, and every open window of any
    device of the same partition with ``end + grace + silent_extra <= partition
    stream time`` closes.  :attr:`closed` holds the emitted windows.
    """

    def __init__(
        self,
        *,
        window_s: int = WINDOW_S_DEFAULT,
        grace_s: float = GRACE_S_DEFAULT,
        silent_close_extra_s: float = SILENT_CLOSE_EXTRA_S_DEFAULT,
        partition_of: Callable[[str], int] = valid_partition_of,
    ) -> None:
        self.window_s = window_s
        self.grace_s = grace_s
        self.silent_close_extra_s = silent_close_extra_s
        self.partition_of = partition_of
        self.stream_time: dict[str, float] = {}
        self.partition_time: dict[int, float] = {}
        self.open: dict[str, dict[int, dict[int, Values]]] = {}  # device -> start -> seq -> values
        self.closed: dict[tuple[str, int], WindowResult] = {}
        self.late: set[tuple[str, int]] = set()
        self._partition_devices: dict[int, set[str]] = {}

    def window_start(self, ts: float) -> int:
        return math.floor(ts / self.window_s) * self.window_s

    def add(self, device: str, seq: int, ts: float, values: Values) -> None:
        partition = self.partition_of(device)
        self._partition_devices.setdefault(partition, set()).add(device)
        stream_time = max(self.stream_time.get(device, -math.inf), ts)
        self.stream_time[device] = stream_time
        partition_time = max(self.partition_time.get(partition, -math.inf), stream_time)
        self.partition_time[partition] = partition_time
        start = self.window_start(ts)
        end = start + self.window_s
        if end + self.grace_s <= stream_time or (device, start) in self.closed:
            self.late.add((device, seq))
        else:
            window = self.open.setdefault(device, {}).setdefault(start, {})
            window.setdefault(seq, values)
        self._close(device, stream_time - self.grace_s)
        horizon = partition_time - self.grace_s - self.silent_close_extra_s
        for other in self._partition_devices[partition]:
            self._close(other, horizon)

    def _close(self, device: str, end_at_most: float) -> None:
        """Close every open window of ``device`` whose end is at most ``end_at_most``."""
        windows = self.open.get(device)
        if not windows:
            return
        for start in sorted(windows):
            if start + self.window_s > end_at_most:
                break
            self.closed[(device, start)] = window_result(device, start, windows.pop(start))

    def check_invariants(self) -> None:
        for device, windows in self.open.items():
            for start, readings in windows.items():
                assert readings, "an open window holds at least one reading"
                assert (device, start) not in self.closed, "a window is open or closed, not both"
                assert start + self.window_s + self.grace_s > self.stream_time[device]
        for result in self.closed.values():
            assert result.count > 0
            assert result.temperature_min_c <= result.temperature_max_c


# -- the expected outcome ----------------------------------------------------------------------


@dataclass
class ExpectedOutcome:
    """What a correct pipeline ends with, derived from a ledger (see the module doc)."""

    published: int = 0
    published_by_fault: dict[str, int] = field(default_factory=dict)
    # (device, seq) -> the first valid publish of that reading.
    valid: dict[tuple[str, int], LedgerEntry] = field(default_factory=dict)
    # reason -> payload hashes that must be dead-lettered with that reason.
    dead_letters: dict[str, set[str]] = field(default_factory=dict)
    dead_letter_publishes: int = 0
    # Valid publishes of a reading already published (identical bytes re-sent).
    duplicates: int = 0
    silent_devices: list[str] = field(default_factory=list)
    windows: ReferenceWindows = field(default_factory=ReferenceWindows)

    @property
    def late_dropped(self) -> int:
        return len(self.windows.late)

    @property
    def windows_closed(self) -> int:
        return len(self.windows.closed)


def expected_outcome(
    entries: Iterable[LedgerEntry],
    meta: LedgerMeta | None = None,
    *,
    windows: ReferenceWindows | None = None,
) -> ExpectedOutcome:
    """Walk a ledger once and derive what the pipeline must end with."""
    outcome = ExpectedOutcome(windows=windows if windows is not None else ReferenceWindows())
    if meta is not None:
        outcome.silent_devices = list(meta.silent_devices)
    by_fault = outcome.published_by_fault
    for entry in entries:
        outcome.published += 1
        by_fault[entry.fault] = by_fault.get(entry.fault, 0) + 1
        if entry.values is None:
            outcome.dead_letters.setdefault(entry.reason, set()).add(entry.sha1)
            outcome.dead_letter_publishes += 1
            continue
        key = (entry.device, entry.seq)
        if key in outcome.valid:
            outcome.duplicates += 1
        else:
            outcome.valid[key] = entry
        outcome.windows.add(entry.device, entry.seq, entry.ts, entry.values)
    return outcome


def first_send_order(entries: Iterable[LedgerEntry]) -> dict[str, list[str]]:
    """Per device, the payload hashes in the order first sent (repeats removed):
    the order a device's records must first appear in iot.raw."""
    order: dict[str, list[str]] = {}
    seen: set[str] = set()
    for entry in entries:
        if entry.sha1 not in seen:
            seen.add(entry.sha1)
            order.setdefault(entry.device, []).append(entry.sha1)
    return order
