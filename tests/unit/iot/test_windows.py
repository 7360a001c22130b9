"""examples/iot/windows.py: event-time tumbling windows, grace, late data, duplicates,
out-of-order readings, silent-device close, the commit offset and replay."""

from __future__ import annotations

import math
import random

from examples.iot.windows import ClosedWindow, TumblingWindows

T0 = 1_765_000_020  # a minute boundary (1765000020 % 60 == 0)
assert T0 % 60 == 0


class Feed:
    """Feeds readings of partition 0 with increasing offsets."""

    def __init__(self, windows: TumblingWindows, partition: int = 0) -> None:
        self.windows = windows
        self.partition = partition
        self.offset = 0

    def add(self, device: str, seq: int, ts: float, temperature_c: float = 20.0) -> int:
        offset = self.offset
        self.windows.add(self.partition, offset, device, seq, ts, temperature_c, 50.0, seq * 10)
        self.offset += 1
        self.windows.check_invariants()
        return offset


def make(**options: float) -> tuple[TumblingWindows, Feed]:
    windows = TumblingWindows(**options)  # type: ignore[arg-type]
    windows.assign(0)
    return windows, Feed(windows)


def test_windows_are_by_event_time_not_arrival() -> None:
    """Proves readings land in the minute of their own ts, and a window's statistics."""
    windows, feed = make()
    feed.add("a", 1, T0 + 1, 10.0)
    feed.add("a", 2, T0 + 59.999, 30.0)
    feed.add("a", 3, T0 + 60, 99.0)  # next window
    feed.add("a", 4, T0 + 60 + 30, 0.0)  # st = end of first + 30: closes it
    (closed,) = windows.take_closed()
    assert closed == ClosedWindow("a", T0, 2, 10.0, 30.0, 20.0, 50.0, 20, 0)
    assert windows.windows_closed == 1


def test_grace_boundary_closes_at_end_plus_grace_exactly() -> None:
    """Proves a window stays open while st < end + grace and closes when st == end + grace."""
    windows, feed = make()
    feed.add("a", 1, T0 + 10)
    feed.add("a", 2, T0 + 60 + 29.999)
    assert windows.take_closed() == []
    feed.add("a", 3, T0 + 60 + 30)
    assert [w.window_start for w in windows.take_closed()] == [T0]


def test_reading_within_grace_is_accepted() -> None:
    """Proves an out-of-order reading for a window still in its grace period counts."""
    windows, feed = make()
    feed.add("a", 1, T0 + 10)
    feed.add("a", 3, T0 + 60 + 20)  # st in the grace of [T0, T0+60)
    feed.add("a", 2, T0 + 50)  # older, but its window is open
    feed.add("a", 4, T0 + 120 + 30)
    closed = windows.take_closed()
    assert [(w.window_start, w.count) for w in closed] == [(T0, 2), (T0 + 60, 1)]
    assert windows.late_dropped == 0


def test_late_reading_past_grace_is_dropped_and_counted_once() -> None:
    """Proves a reading whose window is past end + grace is dropped, and the same late
    reading again is not counted a second time."""
    windows, feed = make()
    feed.add("a", 10, T0 + 200)
    feed.add("a", 1, T0 + 10)  # window [T0, T0+60): 60 + 30 <= 200 -> late
    feed.add("a", 1, T0 + 10)  # the same late reading again
    feed.add("a", 2, T0 + 15)  # another late one
    assert windows.late_dropped == 2
    feed.add("a", 11, T0 + 400)
    assert [w.window_start for w in windows.take_closed()] == [T0 + 180]


def test_stream_time_is_updated_before_the_late_check() -> None:
    """Proves a reading that itself advances st past its own window's grace is late
    (only possible when the window is long past: st includes the reading)."""
    windows, feed = make(grace_s=0)
    feed.add("a", 1, T0 + 60)  # window [T0+60, T0+120): end + 0 > st, accepted
    assert windows.late_dropped == 0
    feed.add("a", 2, T0 + 59)  # st = T0 + 60 >= end T0 + 60: late
    assert windows.late_dropped == 1


def test_duplicates_are_idempotent() -> None:
    """Proves a duplicate (device, seq) in an open or closed window never counts twice
    and is not a late drop."""
    windows, feed = make()
    feed.add("a", 1, T0 + 1, 10.0)
    feed.add("a", 1, T0 + 1, 10.0)
    feed.add("a", 2, T0 + 2, 20.0)
    feed.add("a", 3, T0 + 100)
    (closed,) = windows.take_closed()
    assert closed.count == 2 and closed.temperature_c_mean == 15.0
    feed.add("a", 2, T0 + 2, 20.0)  # re-read after the window closed
    assert windows.duplicates == 2
    assert windows.late_dropped == 0
    assert windows.take_closed() == []


def test_devices_have_their_own_stream_time() -> None:
    """Proves one device's progress does not close or late-drop another's windows."""
    windows, feed = make()
    feed.add("a", 1, T0 + 1)
    feed.add("b", 1, T0 + 95)  # b's st far ahead; a's window stays open
    feed.add("a", 2, T0 + 50)
    assert windows.take_closed() == [] and windows.late_dropped == 0
    feed.add("a", 3, T0 + 90)
    assert [(w.device, w.count) for w in windows.take_closed()] == [("a", 2)]


def test_out_of_order_results_equal_the_in_order_ones() -> None:
    """Proves the emitted windows do not depend on the order readings arrive in,
    as long as none is late."""
    rng = random.Random(7)
    readings = [(seq, T0 + seq * 0.7, rng.uniform(-10, 40)) for seq in range(300)]
    in_order, feed = make()
    for seq, ts, temperature in readings:
        feed.add("a", seq, ts, temperature)
    shuffled_windows, shuffled_feed = make()
    mixed = list(readings)
    for i in range(0, len(mixed) - 1, 2):  # swap neighbours: seq n+1 before n
        mixed[i], mixed[i + 1] = mixed[i + 1], mixed[i]
    for seq, ts, temperature in mixed:
        shuffled_feed.add("a", seq, ts, temperature)
    expected = in_order.take_closed()
    assert len(expected) == 2
    got = shuffled_windows.take_closed()
    assert [(w.window_start, w.count, w.temperature_c_min, w.temperature_c_max) for w in got] == [
        (w.window_start, w.count, w.temperature_c_min, w.temperature_c_max) for w in expected
    ]
    assert [w.temperature_c_mean for w in got] == [w.temperature_c_mean for w in expected]
    temps = [t for seq, ts, t in readings if ts < T0 + 60]
    assert expected[0].temperature_c_mean == math.fsum(temps) / len(temps)


def test_silent_device_closes_by_partition_stream_time() -> None:
    """Proves a device that stops sending has its window closed once the partition's
    stream time passes end + grace + silent_close_s (not before)."""
    windows, feed = make()
    feed.add("quiet", 1, T0 + 5)
    feed.add("busy", 1, T0 + 60 + 30 + 59)
    assert windows.take_closed() == []
    feed.add("busy", 2, T0 + 60 + 30 + 60)
    assert [w.device for w in windows.take_closed()] == ["quiet"]
    feed.add("quiet", 2, T0 + 6)  # its window was closed: late now
    assert windows.late_dropped == 1


def test_commit_offset_is_the_oldest_record_in_an_open_window() -> None:
    """Proves the commit offset is the first offset of the oldest open window, and the
    position once nothing is open."""
    windows, feed = make()
    assert windows.commit_offset(0) is None
    feed.add("a", 1, T0 + 1)  # offset 0
    feed.add("b", 1, T0 + 61)  # offset 1
    feed.add("a", 2, T0 + 2)  # offset 2
    assert windows.commit_offset(0) == 0
    feed.add("a", 3, T0 + 95)  # offset 3: closes a's first window
    windows.take_closed()
    assert windows.commit_offset(0) == 1
    feed.add("b", 2, T0 + 400)  # offset 4: closes b's and, silently, a's windows
    feed.add("b", 3, T0 + 500)
    assert windows.open_windows() == 1
    assert windows.commit_offset(0) == 5
    assert windows.position(0) == 6


def test_replay_from_the_commit_offset_rebuilds_the_same_windows() -> None:
    """Proves a restart that re-reads from the commit offset, with the position it had
    as replay_until, emits exactly the windows the first run had not emitted yet."""
    rng = random.Random(3)
    log: list[tuple[str, int, float, float]] = []
    seqs = {"a": 0, "b": 0, "c": 0}
    for i in range(900):
        device = rng.choice("abc")
        seqs[device] += 1
        ts = T0 + i * 0.5 + (rng.uniform(-200, 0) if rng.random() < 0.05 else 0.0)
        log.append((device, seqs[device], ts, rng.uniform(0, 30)))

    first = TumblingWindows()
    first.assign(0)
    cut = 600
    emitted: list[ClosedWindow] = []
    for offset, (device, seq, ts, temperature) in enumerate(log[:cut]):
        first.add(0, offset, device, seq, ts, temperature, 50.0, 1)
    emitted += first.take_closed()
    commit, position = first.commit_offset(0), first.position(0)
    assert commit is not None and position == cut and commit < cut

    second = TumblingWindows()
    second.assign(0, replay_until=position)
    for offset in range(commit, len(log)):
        device, seq, ts, temperature = log[offset]
        second.add(0, offset, device, seq, ts, temperature, 50.0, 1)
        second.check_invariants()
    emitted += second.take_closed()

    reference = TumblingWindows()
    reference.assign(0)
    for offset, (device, seq, ts, temperature) in enumerate(log):
        reference.add(0, offset, device, seq, ts, temperature, 50.0, 1)
    assert emitted == reference.take_closed()
    assert first.late_dropped + second.late_dropped == reference.late_dropped


def test_revoke_forgets_the_partition() -> None:
    """Proves a revoked partition's windows are dropped (its next owner rebuilds them)."""
    windows, feed = make()
    feed.add("a", 1, T0 + 1)
    windows.revoke(0)
    assert windows.open_windows() == 0
    windows.assign(0)
    windows.check_invariants()


def test_agrees_with_the_ledger_oracle_on_a_faulty_stream() -> None:
    """Proves windows.py and the independently written oracle in ledger.py emit the same
    windows and late drops for a seeded stream with out-of-order, late and silent devices."""
    from examples.iot.ledger import ReferenceWindows, Values

    rng = random.Random(11)
    devices = [f"dev-{n}" for n in range(12)]
    partition_of = {device: n % 3 for n, device in enumerate(devices)}
    oracle = ReferenceWindows(partition_of=partition_of.__getitem__)
    windows = TumblingWindows()
    offsets = {partition: 0 for partition in range(3)}
    for partition in offsets:
        windows.assign(partition)
    seqs = dict.fromkeys(devices, 0)
    for step in range(6000):
        device = rng.choice(devices)
        if device == "dev-5" and step > 2000:
            continue  # silent from a third of the run on
        seqs[device] += 1
        ts = T0 + step * 0.1
        if rng.random() < 0.01:
            ts -= rng.uniform(120, 300)  # late
        elif rng.random() < 0.02:
            ts -= rng.uniform(0, 40)  # out of order, maybe within grace
        temperature, humidity = rng.uniform(-5, 40), rng.uniform(10, 90)
        oracle.add(device, seqs[device], ts, Values(temperature, humidity, 3.7))
        partition = partition_of[device]
        windows.add(
            partition, offsets[partition], device, seqs[device], ts, temperature, humidity, 0
        )
        offsets[partition] += 1
    windows.check_invariants()
    got = {
        (w.device, w.window_start): (
            w.count,
            w.temperature_c_min,
            w.temperature_c_max,
            w.temperature_c_mean,
            w.humidity_pct_mean,
        )
        for w in windows.take_closed()
    }
    expected = {
        key: (
            r.count,
            r.temperature_min_c,
            r.temperature_max_c,
            r.temperature_mean_c,
            r.humidity_mean_pct,
        )
        for key, r in oracle.closed.items()
    }
    assert got == expected
    assert ("dev-5", int((T0 + 2000 * 0.1) // 60) * 60) in got  # closed by the silent rule
    assert windows.late_dropped == len(oracle.late) > 0


def test_a_record_fetched_again_is_ignored() -> None:
    """Proves a reading at an offset already added changes nothing (a consumer that
    fetched part of its partition again does not double-count or fail)."""
    windows, feed = make()
    feed.add("a", 1, T0 + 1)
    windows.add(0, 0, "a", 1, T0 + 1, 20.0, 50.0, 0)
    windows.add(0, 0, "a", 7, T0 + 500, 20.0, 50.0, 0)
    assert windows.refetched == 2 and windows.duplicates == 0
    assert windows.take_closed() == [] and windows.position(0) == 1
    windows.check_invariants()
