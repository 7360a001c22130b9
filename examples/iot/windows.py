"""One-minute tumbling windows per device on event time: a sans-I/O state machine.

The aggregate stage (aggregate.py) feeds it the readings of each partition it
owns, in offset order, and drains the windows it closes.  Nothing here does I/O
or reads a clock: time is the readings' own event time, so the same input gives
the same output, which is what lets a restarted stage rebuild its windows.

Semantics (the plan's, implemented identically by the ledger's oracle):

* A reading with event time ``ts`` belongs to the window
  ``[floor(ts / window_s) * window_s, + window_s)`` of its device.
* Each device has a *stream time* ``st``, the highest ``ts`` it has seen, updated
  **before** the reading is judged.  The reading is *late* iff
  ``window_end + grace_s <= st``, or its window was already closed; late
  readings are dropped and counted once per distinct (device, seq).  Then every
  open window of the device with ``end + grace_s <= st`` closes, oldest first.
* A window holds ``seq -> values``, so a duplicate reading never counts twice;
  a duplicate of a reading whose window has closed is a duplicate, not late.
* Silent devices: a partition's stream time is the highest ``st`` of its
  devices; a window also closes when ``end + grace_s + silent_close_s`` is at
  or below its partition's stream time (checked after every reading, so a
  reading that opens a window already past that horizon closes it at once).
* Commits: :meth:`TumblingWindows.commit_offset` is the offset of the oldest
  record still in an open window of the partition (the next offset when none
  is open).  Re-reading from there rebuilds every open window.  Windows that
  closed while those records were first read would be rebuilt from a part of
  their records, so the caller also stores the partition's position
  (:meth:`TumblingWindows.position`) with the commit and passes it back as
  ``replay_until`` on :meth:`TumblingWindows.assign`: records before it
  rebuild state silently (closing emits nothing, nothing is counted), since
  what they closed was emitted before the commit.

Closed windows' statistics are computed with ``math.fsum``, so they do not
depend on the order the readings arrived in.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Final

import msgspec

WINDOW_S_DEFAULT: Final = 60
GRACE_S_DEFAULT: Final = 30
# How far past a window's grace its partition's stream time must be before the
# window of a silent device closes: one more window length.
SILENT_CLOSE_S_DEFAULT: Final = 60
# Sequence numbers remembered per device for late drops and closed windows: at one
# reading a second, well over ten minutes of a device's history.
SEQ_MEMORY_PER_DEVICE_MAX: Final = 1024


class ClosedWindow(msgspec.Struct, frozen=True, gc=False):
    """A window that closed: its statistics and the newest ``iot-received-ns`` of
    its readings (for end-to-end latency)."""

    device: str
    window_start: int
    count: int
    temperature_c_min: float
    temperature_c_max: float
    temperature_c_mean: float
    humidity_pct_mean: float
    received_ns_max: int
    partition: int


class RecentSeqs:
    """A set of integers (sequence numbers, window starts) bounded to the ``size_max``
    most recently added."""

    __slots__ = ("order", "seen", "size_max")

    def __init__(self, size_max: int) -> None:
        assert size_max > 0, size_max
        self.size_max = size_max
        self.seen: set[int] = set()
        self.order: deque[int] = deque()

    def __contains__(self, seq: int) -> bool:
        return seq in self.seen

    def add(self, seq: int) -> None:
        if seq in self.seen:
            return
        if len(self.order) >= self.size_max:
            self.seen.discard(self.order.popleft())
        self.seen.add(seq)
        self.order.append(seq)

    def check_invariants(self) -> None:
        assert len(self.seen) == len(self.order) <= self.size_max
        assert self.seen == set(self.order)


class OpenWindow:
    """A window still accepting readings: ``seq -> (temperature_c, humidity_pct)``."""

    __slots__ = ("first_offset", "readings", "received_ns_max", "start")

    def __init__(self, start: int, first_offset: int) -> None:
        self.start = start
        self.first_offset = first_offset
        self.readings: dict[int, tuple[float, float]] = {}
        self.received_ns_max = 0


class DeviceState:
    """One device's stream time, open windows (by start) and memories."""

    __slots__ = (
        "closed_end",
        "closed_seqs",
        "closed_starts",
        "late_seqs",
        "stream_time",
        "windows",
    )

    def __init__(self, seq_memory_max: int) -> None:
        self.stream_time = -math.inf
        self.windows: dict[int, OpenWindow] = {}
        self.closed_end = -math.inf  # the end of the newest closed window
        self.closed_starts = RecentSeqs(seq_memory_max)  # starts of closed windows
        self.late_seqs = RecentSeqs(seq_memory_max)
        self.closed_seqs = RecentSeqs(seq_memory_max)


class PartitionState:
    """One owned partition: its devices, stream time, position and replay bound."""

    __slots__ = ("devices", "next_offset", "open_ends", "replay_until", "stream_time")

    def __init__(self, replay_until: int | None) -> None:
        self.devices: dict[str, DeviceState] = {}
        self.stream_time = -math.inf
        self.next_offset: int | None = None  # after the last record added
        self.replay_until = replay_until if replay_until is not None else -1
        # (window end, device, window start) of open windows, for the silent close;
        # entries of windows closed otherwise are skipped when they come up.
        self.open_ends: list[tuple[int, str, int]] = []


class TumblingWindows:
    """Tumbling windows per device over the partitions the caller owns."""

    def __init__(
        self,
        *,
        window_s: int = WINDOW_S_DEFAULT,
        grace_s: float = GRACE_S_DEFAULT,
        silent_close_s: float = SILENT_CLOSE_S_DEFAULT,
        seq_memory_per_device_max: int = SEQ_MEMORY_PER_DEVICE_MAX,
    ) -> None:
        assert window_s > 0 and grace_s >= 0 and silent_close_s >= 0
        self.window_s = window_s
        self.grace_s = grace_s
        self.silent_close_s = silent_close_s
        self.seq_memory_per_device_max = seq_memory_per_device_max
        self.partitions: dict[int, PartitionState] = {}
        self.closed: list[ClosedWindow] = []  # drained by take_closed()
        self.late_dropped = 0
        self.duplicates = 0
        self.windows_closed = 0
        self.refetched = 0

    # -- ownership --------------------------------------------------------------------

    def assign(self, partition: int, replay_until: int | None = None) -> None:
        """Start owning ``partition``.  Records with an offset below
        ``replay_until`` rebuild state without emitting or counting anything."""
        assert partition not in self.partitions, partition
        self.partitions[partition] = PartitionState(replay_until)

    def revoke(self, partition: int) -> None:
        """Forget ``partition`` and its devices' open windows (the next owner
        rebuilds them from the committed offset)."""
        self.partitions.pop(partition, None)

    # -- input ------------------------------------------------------------------------

    def add(
        self,
        partition: int,
        offset: int,
        device: str,
        seq: int,
        ts: float,
        temperature_c: float,
        humidity_pct: float,
        received_ns: int,
    ) -> None:
        """One reading of an owned partition, in offset order.  A reading at an offset
        already added (the consumer fetched it again) is ignored and counted in
        ``refetched``."""
        state = self.partitions[partition]
        if state.next_offset is not None and offset < state.next_offset:
            self.refetched += 1
            return
        state.next_offset = offset + 1
        replaying = offset < state.replay_until
        dev = state.devices.get(device)
        if dev is None:
            dev = state.devices[device] = DeviceState(self.seq_memory_per_device_max)
        if ts > dev.stream_time:
            dev.stream_time = ts
        start = int(ts // self.window_s) * self.window_s
        end = start + self.window_s
        if end + self.grace_s <= dev.stream_time or start in dev.closed_starts:
            if seq in dev.closed_seqs:
                self.duplicates += not replaying
            elif seq not in dev.late_seqs:
                dev.late_seqs.add(seq)
                self.late_dropped += not replaying
        else:
            window = dev.windows.get(start)
            if window is None:
                window = dev.windows[start] = OpenWindow(start, offset)
                heapq.heappush(state.open_ends, (end, device, start))
            if seq in window.readings:
                self.duplicates += not replaying
            else:
                window.readings[seq] = (temperature_c, humidity_pct)
                if received_ns > window.received_ns_max:
                    window.received_ns_max = received_ns
        if dev.stream_time > state.stream_time:
            state.stream_time = dev.stream_time
            self._close_silent(partition, state, replaying)
        if dev.windows:
            horizon = max(
                dev.stream_time - self.grace_s,
                state.stream_time - self.grace_s - self.silent_close_s,
            )
            self._close_device(partition, device, dev, horizon, replaying)

    def _close_device(
        self, partition: int, device: str, dev: DeviceState, end_max: float, replaying: bool
    ) -> None:
        """Close the device's open windows ending at or before ``end_max``."""
        due = sorted(start for start in dev.windows if start + self.window_s <= end_max)
        for start in due:
            self._close(partition, device, dev, dev.windows.pop(start), replaying)

    def _close_silent(self, partition: int, state: PartitionState, replaying: bool) -> None:
        """Close windows of any device of the partition that the partition's stream
        time has passed by grace + silent_close_s."""
        end_max = state.stream_time - self.grace_s - self.silent_close_s
        heap = state.open_ends
        while heap and heap[0][0] <= end_max:
            _end, device, start = heapq.heappop(heap)
            dev = state.devices[device]
            window = dev.windows.get(start)
            if window is None:
                continue  # closed by its device's own stream time
            # Windows close oldest first: every older window of the device is in
            # the heap ahead of this one, so it is closed already.
            del dev.windows[start]
            self._close(partition, device, dev, window, replaying)

    def _close(
        self, partition: int, device: str, dev: DeviceState, window: OpenWindow, replaying: bool
    ) -> None:
        end = window.start + self.window_s
        if end > dev.closed_end:
            dev.closed_end = end
        dev.closed_starts.add(window.start)
        for seq in window.readings:
            dev.closed_seqs.add(seq)
        if replaying:
            return
        temperatures = [values[0] for values in window.readings.values()]
        count = len(temperatures)
        self.closed.append(
            ClosedWindow(
                device=device,
                window_start=window.start,
                count=count,
                temperature_c_min=min(temperatures),
                temperature_c_max=max(temperatures),
                temperature_c_mean=math.fsum(temperatures) / count,
                humidity_pct_mean=math.fsum(values[1] for values in window.readings.values())
                / count,
                received_ns_max=window.received_ns_max,
                partition=partition,
            )
        )
        self.windows_closed += 1

    # -- output -----------------------------------------------------------------------

    def take_closed(self) -> list[ClosedWindow]:
        """The windows closed since the last call, in closing order."""
        closed, self.closed = self.closed, []
        return closed

    def position(self, partition: int) -> int | None:
        """The offset after the last record added for ``partition`` (None: none yet)."""
        return self.partitions[partition].next_offset

    def commit_offset(self, partition: int) -> int | None:
        """Where a restart must re-read ``partition`` from: the oldest record still
        in an open window, else the position (None: nothing added yet)."""
        state = self.partitions[partition]
        oldest = state.next_offset
        for dev in state.devices.values():
            for window in dev.windows.values():
                if oldest is None or window.first_offset < oldest:
                    oldest = window.first_offset
        return oldest

    def open_windows(self) -> int:
        """How many windows are open over all owned partitions."""
        return sum(
            len(dev.windows) for state in self.partitions.values() for dev in state.devices.values()
        )

    def check_invariants(self) -> None:
        for state in self.partitions.values():
            in_heap = {(device, start) for _end, device, start in state.open_ends}
            for device, dev in state.devices.items():
                assert dev.stream_time <= state.stream_time
                dev.late_seqs.check_invariants()
                dev.closed_seqs.check_invariants()
                dev.closed_starts.check_invariants()
                for start, window in dev.windows.items():
                    end = start + self.window_s
                    assert window.start == start and start % self.window_s == 0
                    assert window.readings
                    assert end + self.grace_s > dev.stream_time, (device, start)
                    assert end > dev.closed_end, (device, start)
                    assert end + self.grace_s + self.silent_close_s > state.stream_time
                    assert state.next_offset is not None
                    assert window.first_offset < state.next_offset
                    assert (device, start) in in_heap
