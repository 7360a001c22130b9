"""examples/iot/ledger.py: the ledger file, the expected outcome, and the reference
windowing oracle on hand-built sequences."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.iot.ledger import (
    FAULT_DUPLICATE,
    FAULT_MALFORMED,
    FAULT_NONE,
    LedgerEntry,
    LedgerMeta,
    LedgerWriter,
    ReferenceWindows,
    Values,
    expected_outcome,
    first_send_order,
    read_ledger,
    read_meta,
)

T0 = 1_765_000_020  # a minute boundary
assert T0 % 60 == 0


def values(temperature_c: float, humidity_pct: float = 50.0) -> Values:
    return Values(temperature_c, humidity_pct, 3.9)


def entry(index: int, device: str, seq: int, ts: float, fault: str = FAULT_NONE) -> LedgerEntry:
    valid = fault != FAULT_MALFORMED
    return LedgerEntry(
        index=index,
        sent_s=float(index),
        device=device,
        seq=seq,
        ts=ts,
        fault=fault,
        firmware=2,
        sha1=f"{device}/{seq}/{'ok' if valid else 'bad'}",
        reason="" if valid else "malformed",
        values=values(20.0 + seq) if valid else None,
    )


META = LedgerMeta(
    devices=2, rate_per_s=1.0, duration_s=10.0, seed=1, start_ts=T0, fault_rates={},
    silent_devices=["b"], silent_from_s=3.0, burst_devices=[], burst_from_s=5.0, burst_s=5.0,
)  # fmt: skip


def oracle() -> ReferenceWindows:
    return ReferenceWindows(partition_of=lambda _device: 0)


def feed(
    windows: ReferenceWindows, device: str, seq: int, ts: float, temperature_c: float = 20.0
) -> None:
    windows.add(device, seq, ts, values(temperature_c))
    windows.check_invariants()


def test_writer_and_reader_round_trip_entries_and_meta(tmp_path: Path) -> None:
    """Proves what the writer writes the reader returns, in order, with the meta beside it."""
    path = tmp_path / "ledger.jsonl"
    entries = [entry(0, "a", 0, T0), entry(1, "a", 1, T0 + 1, FAULT_MALFORMED)]
    with LedgerWriter(path, META) as writer:
        writer.write(entries)
    assert list(read_ledger(path)) == entries
    assert read_meta(path) == META


def test_reader_skips_a_last_line_cut_short(tmp_path: Path) -> None:
    """Proves a ledger whose writer was killed mid-line still reads, without that line."""
    path = tmp_path / "ledger.jsonl"
    with LedgerWriter(path, META) as writer:
        writer.write([entry(0, "a", 0, T0), entry(1, "a", 1, T0 + 1)])
    path.write_bytes(path.read_bytes()[:-10])
    assert [e.seq for e in read_ledger(path)] == [0]


def test_expected_outcome_counts_valid_unique_dead_letters_and_duplicates() -> None:
    """Proves the expected outcome: valid readings by (device, seq), dead letters by
    payload hash per reason, duplicates counted, silent devices from the meta."""
    entries = [
        entry(0, "a", 0, T0),
        entry(1, "a", 0, T0, FAULT_DUPLICATE),
        entry(2, "a", 1, T0 + 1, FAULT_MALFORMED),
        entry(3, "b", 0, T0 + 2),
    ]
    outcome = expected_outcome(entries, META)
    assert outcome.published == 4
    assert set(outcome.valid) == {("a", 0), ("b", 0)}
    assert outcome.valid[("a", 0)].index == 0
    assert outcome.dead_letters == {"malformed": {"a/1/bad"}}
    assert outcome.dead_letter_publishes == 1
    assert outcome.duplicates == 1
    assert outcome.published_by_fault == {"none": 2, "duplicate": 1, "malformed": 1}
    assert outcome.silent_devices == ["b"]


def test_first_send_order_drops_repeats() -> None:
    """Proves the per-device order iot.raw must show is first sends, repeats removed."""
    entries = [entry(0, "a", 0, T0), entry(1, "a", 0, T0, FAULT_DUPLICATE), entry(2, "a", 1, T0)]
    assert first_send_order(entries) == {"a": ["a/0/ok", "a/1/ok"]}


def test_window_closes_when_stream_time_passes_end_plus_grace() -> None:
    """Proves a window stays open until the device's stream time reaches end + grace,
    then closes with count, min, max and mean."""
    windows = oracle()
    feed(windows, "a", 0, T0 + 1, 20.0)
    feed(windows, "a", 1, T0 + 30, 24.0)
    feed(windows, "a", 2, T0 + 59.5, 22.0)
    feed(windows, "a", 3, T0 + 89.9, 21.0)  # end + grace = T0 + 90: still open
    assert windows.closed == {}
    feed(windows, "a", 4, T0 + 90, 21.0)
    result = windows.closed[("a", T0)]
    assert (result.count, result.temperature_min_c, result.temperature_max_c) == (3, 20.0, 24.0)
    assert result.temperature_mean_c == pytest.approx(22.0)
    assert windows.late == set()


def test_reading_is_late_exactly_at_end_plus_grace_and_counted_once() -> None:
    """Proves the late rule uses <= (a reading whose window end + grace equals the stream
    time is late), and a re-sent late reading is one late drop, not two."""
    windows = oracle()
    feed(windows, "a", 0, T0 + 10)
    feed(windows, "a", 1, T0 + 90)  # stream time T0 + 90 closes [T0, T0 + 60)
    feed(windows, "a", 2, T0 + 5)
    feed(windows, "a", 2, T0 + 5)
    assert windows.late == {("a", 2)}
    assert windows.closed[("a", T0)].count == 1


def test_reading_for_a_window_never_opened_is_late_past_end_plus_grace() -> None:
    """Proves lateness is decided by end + grace <= stream time even for a window that
    held no reading yet (no window is opened and emitted for it)."""
    windows = oracle()
    feed(windows, "a", 0, T0 + 70)
    feed(windows, "a", 1, T0 + 90)
    feed(windows, "a", 2, T0 + 5)
    assert windows.late == {("a", 2)}
    assert ("a", T0) not in windows.closed


def test_out_of_order_within_grace_is_counted_and_duplicates_are_not() -> None:
    """Proves a reading behind the stream time but within grace joins its window, and
    a repeated seq does not count twice."""
    windows = oracle()
    feed(windows, "a", 1, T0 + 61)
    feed(windows, "a", 0, T0 + 59)  # the previous window, 28 s behind: within grace
    feed(windows, "a", 0, T0 + 59)
    feed(windows, "a", 2, T0 + 200)
    assert windows.closed[("a", T0)].count == 1
    assert windows.closed[("a", T0 + 60)].count == 1
    assert windows.late == set()


def test_stream_time_is_per_device() -> None:
    """Proves one device's progress does not make another device's readings late."""
    windows = oracle()
    feed(windows, "a", 0, T0 + 10)
    feed(windows, "b", 0, T0 + 85)  # b is far ahead, but within the silent-close horizon
    feed(windows, "a", 1, T0 + 20)
    assert windows.late == set()
    assert windows.closed == {}


def test_silent_device_windows_close_on_partition_time() -> None:
    """Proves a silent device's window closes once its partition's stream time passes
    end + grace + 60 s, and a reading for that closed window is then late."""
    windows = oracle()
    feed(windows, "silent", 0, T0 + 1)
    feed(windows, "busy", 0, T0 + 149.9)  # T0 + 60 + 30 + 60 = T0 + 150
    assert ("silent", T0) not in windows.closed
    feed(windows, "busy", 1, T0 + 150)
    assert windows.closed[("silent", T0)].count == 1
    feed(windows, "silent", 1, T0 + 2)
    assert windows.late == {("silent", 1)}


def test_partitions_do_not_close_each_others_windows() -> None:
    """Proves the silent-close rule looks only at the device's own partition."""
    windows = ReferenceWindows(partition_of=lambda device: 0 if device == "silent" else 1)
    feed(windows, "silent", 0, T0 + 1)
    feed(windows, "busy", 0, T0 + 500)
    assert ("silent", T0) not in windows.closed


def test_expected_outcome_feeds_the_oracle_in_ledger_order() -> None:
    """Proves the expected outcome's late drops and closed windows come from the oracle."""
    entries = [entry(0, "a", 0, T0 + 1), entry(1, "a", 1, T0 + 95), entry(2, "a", 2, T0 + 2)]
    outcome = expected_outcome(entries, windows=oracle())
    assert outcome.late_dropped == 1
    assert outcome.windows_closed == 1
