"""The IoT pipeline end to end at CI scale: 200 devices at 2 readings/s for 30 s
through mosquitto, the bridge, two validate members, aggregate, alerts and the
sink, with the simulator's fault menu, a clean mosquitto restart and one validate
member SIGKILLed (and replaced), reconciled exactly against the simulator's ledger
(examples/iot/reconcile.py does the checking; this test asserts each check)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from examples.iot import faults
from examples.iot.demo import DemoConfig, run_demo
from examples.iot.mqtt import find_mosquitto
from examples.iot.scrape import read_ticks
from examples.iot.timeseries import group_lag

pytestmark = pytest.mark.skipif(
    find_mosquitto() is None,
    reason="needs mosquitto (Debian package mosquitto; scripts/install-system-packages.sh installs it)",
)

DEVICES = 200
RATE_PER_S = 2.0
DURATION_S = 30.0
# A short grace, so that the windows of a 30 s run close (the demo puts a minute
# boundary a quarter into the run) and can be compared with the oracle.
GRACE_S = 5.0


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One CI-scale demo run, shared by the assertions below (its summary)."""
    import trio

    out = tmp_path_factory.mktemp("iot") / "run"
    config = DemoConfig(
        out=out,
        devices=DEVICES,
        rate=RATE_PER_S,
        duration_s=DURATION_S,
        faults=[faults.MQTT_RESTART, faults.VALIDATE_KILL],
        grace_s=GRACE_S,
        live=False,
    )
    summary: dict[str, Any] = trio.run(run_demo, config)
    summary["_out"] = out
    return summary


def _check(summary: dict[str, Any], name: str) -> dict[str, Any]:
    check: dict[str, Any] = summary["checks"][name]
    assert check["ok"], json.dumps(check, indent=2, default=str)
    return check


@pytest.mark.timeout(240)
def test_sink_rows_equal_the_valid_unique_readings(ci_run: dict[str, Any]) -> None:
    """Proves every valid reading reached the sink exactly once with its values, and
    nothing else did, across a mosquitto restart and a validate member's kill."""
    check = _check(ci_run, "readings")
    assert check["rows"] == ci_run["counts"]["valid_unique"] > 0
    assert ci_run["lost_at_mqtt"] == 0
    _check(ci_run, "no_unexplained_loss")


@pytest.mark.timeout(240)
def test_dead_letters_equal_the_malformed_and_invalid_publishes(ci_run: dict[str, Any]) -> None:
    """Proves the dead-letter topic holds exactly the malformed, out-of-range and
    unknown-version payloads, each with its reason."""
    check = _check(ci_run, "dead_letters")
    assert (
        sum(r["got"] for r in check["by_reason"].values())
        == (ci_run["counts"]["dead_letters_distinct"])
    )
    assert ci_run["counts"]["dead_letters_distinct"] > 0


@pytest.mark.timeout(240)
def test_per_device_order_in_the_raw_topic_is_the_send_order(ci_run: dict[str, Any]) -> None:
    """Proves each device's readings first appear in iot.raw in the order it sent them."""
    check = _check(ci_run, "per_device_order")
    assert check["devices"] == DEVICES


@pytest.mark.timeout(240)
def test_windows_equal_the_oracle_recomputation(ci_run: dict[str, Any]) -> None:
    """Proves the sink's one-minute windows equal a recomputation from the ledger
    (every closed window, and 5 sampled ones shown in the summary)."""
    check = _check(ci_run, "windows")
    assert check["windows"] > 0
    assert len(check["sampled"]) == 5
    for sample in check["sampled"]:
        assert sample["sink"] is not None


@pytest.mark.timeout(240)
def test_scraped_counters_equal_the_ledger_counts(ci_run: dict[str, Any]) -> None:
    """Proves the stages' Prometheus counters agree with the ledger (published per
    fault, rows written, valid, dead-lettered, late drops, windows)."""
    check = _check(ci_run, "counters")
    names = {row["counter"] for row in check["counters"]}
    assert 'iot_sink_rows_written_total{table="readings"}' in names
    assert "iot_aggregate_late_dropped_total" in names


@pytest.mark.timeout(240)
def test_pipeline_drains_to_zero_lag_and_stops_cleanly(ci_run: dict[str, Any]) -> None:
    """Proves every group caught up (lag 0) after the faults and every stage exited 0
    on SIGTERM."""
    _check(ci_run, "drained")
    _check(ci_run, "stages_exit_cleanly")
    fault_names = [f["name"] for f in ci_run["faults"]]
    assert fault_names == [faults.MQTT_RESTART, faults.VALIDATE_KILL, faults.POISON]
    assert all(f["ok"] for f in ci_run["faults"]), ci_run["faults"]


@pytest.mark.timeout(240)
def test_replay_rebuilds_an_identical_database(ci_run: dict[str, Any]) -> None:
    """Proves resetting the sink's group to the beginning and rebuilding a fresh
    database gives the same ordered dump as the first run."""
    _check(ci_run, "replay_identical")


@pytest.mark.timeout(240)
def test_report_has_its_panels(ci_run: dict[str, Any]) -> None:
    """Proves report.png was drawn with at least the four panels."""
    out: Path = ci_run["_out"]
    assert (out / "report.png").stat().st_size > 20_000
    assert ci_run["report"]["axes"] >= 4
    assert ci_run["ok"]


@pytest.mark.timeout(240)
def test_validate_lag_rose_during_the_member_kill(ci_run: dict[str, Any]) -> None:
    """Proves the killed member's partitions were visibly held up: the broker's
    iot-validate lag, as scraped, rose above 0 between the kill and 20 s later."""
    out: Path = ci_run["_out"]
    kill = next(f for f in ci_run["faults"] if f["name"] == faults.VALIDATE_KILL)
    ticks = read_ticks(out / "metrics.jsonl")
    during = [
        lag
        for tick in ticks
        if kill["start_t"] <= tick["t"] <= kill["start_t"] + 20
        and (lag := group_lag(tick, "iot-validate")) is not None
    ]
    assert during and max(during) > 0
