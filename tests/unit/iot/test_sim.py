"""examples/iot/telemetry.py (the simulator's pure half): determinism, fault rates,
payload shapes and the per-run faults, checked from the publishes alone."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from examples.iot.ledger import (
    FAULT_BURST,
    FAULT_DUPLICATE,
    FAULT_LATE,
    FAULT_MALFORMED,
    FAULT_OUT_OF_ORDER,
    FAULT_OUT_OF_RANGE,
    FAULT_UNKNOWN_VERSION,
    LedgerWriter,
    payload_sha1,
    read_ledger,
)
from examples.iot.sim import FaultRates, Gateway, SimConfig, device_profiles, generate
from examples.iot.telemetry import Publish, ledger_meta

START_TS = 1_765_000_000.0
# The CI scale of the issue: 200 devices at 2 readings/s for 30 s.
CI = SimConfig(devices=200, rate_per_s=2.0, duration_s=30.0, seed=7, start_ts=START_TS)


@pytest.fixture(scope="module")
def ci_run() -> list[Publish]:
    return list(generate(CI))


def test_same_seed_gives_the_same_ledger_byte_for_byte(
    ci_run: list[Publish], tmp_path: object
) -> None:
    """Proves the run is a function of the config: same seed, same publishes and
    payloads; another seed, other payloads."""
    again = list(generate(CI))
    assert [p.payload for p in again] == [p.payload for p in ci_run]
    assert [p.entry for p in again] == [p.entry for p in ci_run]
    other = list(generate(SimConfig(CI.devices, CI.rate_per_s, CI.duration_s, 8, START_TS)))
    assert {p.entry.sha1 for p in other}.isdisjoint({p.entry.sha1 for p in ci_run})


def test_ledger_file_is_deterministic(tmp_path: pytest.TempPathFactory) -> None:
    """Proves two ledgers written from the same seed are identical files."""
    small = SimConfig(devices=20, rate_per_s=1.0, duration_s=10.0, seed=3, start_ts=START_TS)
    paths = [tmp_path / f"ledger-{n}.jsonl" for n in range(2)]  # type: ignore[operator]
    for path in paths:
        with LedgerWriter(path, ledger_meta(small)) as writer:
            writer.write(p.entry for p in generate(small))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert len(list(read_ledger(paths[0]))) > 150


def test_publishes_are_in_send_order_with_consecutive_indexes(ci_run: list[Publish]) -> None:
    """Proves the merge yields send times in order and the ledger indexes 0..n-1."""
    assert [p.send_s for p in ci_run] == sorted(p.send_s for p in ci_run)
    assert [p.entry.index for p in ci_run] == list(range(len(ci_run)))
    assert all(p.entry.sent_s == pytest.approx(p.send_s, abs=1e-6) for p in ci_run)


def test_fault_rates_are_close_to_the_flags(ci_run: list[Publish]) -> None:
    """Proves each per-reading fault occurs at about its flag's rate (12,000 readings)."""
    faults = Counter(p.entry.fault for p in ci_run)
    readings = len({(p.entry.device, p.entry.seq) for p in ci_run})
    rates = FaultRates()
    for fault, rate in [
        (FAULT_MALFORMED, rates.malformed),
        (FAULT_OUT_OF_RANGE, rates.out_of_range),
        (FAULT_UNKNOWN_VERSION, rates.unknown_version),
        (FAULT_DUPLICATE, rates.duplicate),
        (FAULT_OUT_OF_ORDER, rates.out_of_order),
        (FAULT_LATE, rates.late),
    ]:
        assert faults[fault] / readings == pytest.approx(rate, rel=0.35), fault
    v1 = sum(profile.firmware == 1 for profile in device_profiles(CI.seed, CI.devices))
    assert v1 / CI.devices == pytest.approx(rates.v1_devices, abs=0.05)


def test_no_faults_means_only_clean_readings() -> None:
    """Proves --faults none leaves only valid, unique, in-order readings."""
    config = SimConfig(20, 2.0, 10.0, 1, START_TS, FaultRates().none())
    run = list(generate(config))
    assert {p.entry.fault for p in run} == {"none"}
    assert len({p.entry.sha1 for p in run}) == len(run)


def test_payloads_are_unique_except_deliberate_duplicates(ci_run: list[Publish]) -> None:
    """Proves a payload's hash identifies it: repeats are exactly the duplicate fault,
    each sent right after its original."""
    seen: dict[str, Publish] = {}
    for publish in ci_run:
        assert payload_sha1(publish.payload) == publish.entry.sha1
        original = seen.get(publish.entry.sha1)
        if original is None:
            assert publish.entry.fault != FAULT_DUPLICATE
            seen[publish.entry.sha1] = publish
        else:
            assert publish.entry.fault == FAULT_DUPLICATE
            assert publish.entry.index == original.entry.index + 1 or (
                publish.send_s == original.send_s
            )


def test_ledger_values_are_what_the_payload_says(ci_run: list[Publish]) -> None:
    """Proves each valid entry's values and event time decode from its payload by the
    plan's rules (v1: Fahrenheit, millivolts, milliseconds upgraded)."""
    for publish in ci_run:
        entry = publish.entry
        if entry.values is None:
            assert entry.reason
            continue
        body = json.loads(publish.payload)
        if body["v"] == 1:
            assert body["id"] == entry.device and body["n"] == entry.seq
            assert entry.ts == body["t"] / 1000
            assert entry.values.temperature_c == (body["temp_f"] - 32) * 5 / 9
            assert entry.values.battery_v == body["bat_mv"] / 1000
        else:
            assert body["device"] == entry.device and body["seq"] == entry.seq
            assert (entry.ts, entry.values.temperature_c) == (body["ts"], body["temperature_c"])
        assert -40 <= entry.values.temperature_c <= 85
        assert 0 <= entry.values.humidity_pct <= 100
        assert 2.0 <= entry.values.battery_v <= 4.5


def test_invalid_payloads_are_invalid_for_their_reason(ci_run: list[Publish]) -> None:
    """Proves malformed payloads do not decode to a full reading, out-of-range ones
    carry a value outside its range, unknown versions have v=3 or none."""
    for publish in ci_run:
        fault = publish.entry.fault
        if fault == FAULT_UNKNOWN_VERSION:
            assert json.loads(publish.payload).get("v") in (3, None)
        elif fault == FAULT_OUT_OF_RANGE:
            body = json.loads(publish.payload)
            if body["v"] == 1:
                temperature = (body["temp_f"] - 32) * 5 / 9
                humidity, battery = body["hum"], body["bat_mv"] / 1000
            else:
                temperature, humidity = body["temperature_c"], body["humidity_pct"]
                battery = body["battery_v"]
            assert not (-40 <= temperature <= 85 and 0 <= humidity <= 100 and 2 <= battery <= 4.5)
        elif fault == FAULT_MALFORMED:
            try:
                body = json.loads(publish.payload)
            except ValueError:
                continue
            numbers = [value for value in body.values() if isinstance(value, int | float)]
            assert len(numbers) < 6 or any(isinstance(value, str) for value in body.values())


def test_per_device_order_is_seq_order_except_out_of_order_pairs(ci_run: list[Publish]) -> None:
    """Proves a device sends its readings in seq order, except out-of-order readings,
    each sent just after a later one."""
    by_device: dict[str, list[Publish]] = {}
    for publish in ci_run:
        if publish.entry.fault != FAULT_DUPLICATE:
            by_device.setdefault(publish.entry.device, []).append(publish)
    swaps = 0
    for publishes in by_device.values():
        seqs = [p.entry.seq for p in publishes]
        for position in range(1, len(seqs)):
            if seqs[position] < seqs[position - 1]:
                assert publishes[position].entry.fault == FAULT_OUT_OF_ORDER
                assert seqs[position] >= seqs[position - 1] - 2
                swaps += 1
        in_order = [p.entry.seq for p in publishes if p.entry.fault != FAULT_OUT_OF_ORDER]
        assert in_order == sorted(set(in_order))
    assert swaps > 0


def test_late_readings_are_minutes_old(ci_run: list[Publish]) -> None:
    """Proves a late reading's event time is 2 to 5 minutes behind its send time."""
    late = [p for p in ci_run if p.entry.fault == FAULT_LATE]
    assert late
    for publish in late:
        age = START_TS + publish.send_s - publish.entry.ts
        assert 119 <= age <= 301


def test_silent_device_stops_at_a_third_and_burst_flushes_at_once(ci_run: list[Publish]) -> None:
    """Proves the silent device sends nothing after a third of the run, and the burst
    group's readings of 5 s are held and all sent at the burst's end."""
    meta = ledger_meta(CI)
    assert len(meta.silent_devices) == 1
    silent = [p for p in ci_run if p.entry.device == meta.silent_devices[0]]
    assert silent and max(p.send_s for p in silent) < meta.silent_from_s
    burst = [p for p in ci_run if p.entry.fault == FAULT_BURST]
    assert burst
    assert {p.entry.device for p in burst} <= set(meta.burst_devices)
    assert {p.send_s for p in burst} == {meta.burst_from_s + meta.burst_s}
    held_ts = [p.entry.ts - START_TS for p in burst]
    assert meta.burst_from_s <= min(held_ts) and max(held_ts) < meta.burst_from_s + meta.burst_s


def test_gateway_holds_publishes_while_disconnected_and_keeps_their_order() -> None:
    """Proves publishes made while the connection is down wait in the backlog (paho
    would write them ahead of its own re-sends on the reconnecting socket) and go
    out in their order, before newer ones, once connected."""
    gateway = Gateway(0, "127.0.0.1", 1883, random.Random(1))
    sent: list[bytes] = []
    gateway.client.publish = lambda _topic, payload, qos: sent.append(payload)  # type: ignore[assignment,method-assign,misc]
    gateway.mqtt.connected = False
    for payload in (b"1", b"2"):
        gateway.publish("t", payload)
        gateway.check_invariants()
    assert sent == [] and list(gateway.backlog) == [("t", b"1"), ("t", b"2")]
    gateway.mqtt.connected = True
    gateway.publish("t", b"3")  # the backlog is not empty: it queues behind it
    assert sent == []
    gateway.flush_backlog()
    gateway.publish("t", b"4")
    assert sent == [b"1", b"2", b"3", b"4"]
    assert gateway.outstanding == 4
    gateway.check_invariants()
