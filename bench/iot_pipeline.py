"""The IoT pipeline's highest sustained rate: ``python -m bench.iot_pipeline``.

Runs the whole pipeline (examples/iot/demo.py: a fresh ``distributary serve``,
mosquitto, the bridge, two validate members, aggregate, alerts, the sink, and the
simulator) once per rate step, without scripted faults (the simulator's data
faults stay on) and without the replay, and measures each step:

* ``offered``: readings/s the simulator published (ledger count over the time
  it took: on a loaded machine it falls behind its schedule, ``sim_late_s``);
* ``sink``: valid readings/s the sink inserted while it was busy;
* ``e2e p50 / p99``: bridge receive to sink commit (the sink's histogram,
  past the first 5 s of connecting and joining);
* ``behind_s``: how long after the simulator ended (its last reading
  acknowledged by MQTT) the sink inserted its last row (to the second).

A step is sustained when the simulator kept its schedule (ended at most 3 s
late) and the pipeline kept up: the sink was at most 2 s behind at the end, the
e2e p99 is at most 1 s, and every reconciliation check passed.  Steps run from the
lowest rate up and stop after the first step that is not sustained.  Prints a
table and one JSON line per step.  Figures are reported, not asserted: every
process of the pipeline shares this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from examples.iot.demo import DemoConfig, run_demo

RATES_DEFAULT = "1000,2000,3000,4000,5000,6000,8000"
BEHIND_MAX_S = 2.0
# The simulator may end this much after --duration (process start-up) and still
# count as having offered the rate.
SIM_LATE_MAX_S = 3.0
P99_MAX_S = 1.0


def step(out: Path, rate_per_s: float, devices: int, duration_s: float) -> dict[str, Any]:
    """One run at ``rate_per_s`` readings/s in total; its figures."""
    config = DemoConfig(
        out=out,
        devices=devices,
        rate=rate_per_s / devices,
        duration_s=duration_s,
        faults=[],
        live=False,
        replay=False,
        report=False,
    )
    started = time.monotonic()
    summary = trio.run(run_demo, config)
    counts = summary["counts"]
    # The simulator publishes on schedule unless the machine cannot keep up; its
    # real rate is what it published over the time it took (start-up included).
    sim_ended_t = summary["sim_ended_t"] or duration_s
    offered = counts["published"] / max(duration_s, sim_ended_t)
    sim_late_s = round(max(0.0, sim_ended_t - duration_s), 1)
    valid_share = counts["valid_unique"] / max(1, counts["published"])
    sink_rate = summary["throughput_per_s"]["sink_readings"] or 0.0
    p50 = summary["e2e_latency_s"]["calm"]["p50"]
    p99 = summary["e2e_latency_s"]["calm"]["p99"]
    last_row_t = summary["throughput_per_s"]["sink_last_row_t"]
    behind_s = None if last_row_t is None else round(max(0.0, last_row_t - sim_ended_t), 1)
    failed = [name for name, check in summary["checks"].items() if not check["ok"]]
    sustained = (
        sim_late_s <= SIM_LATE_MAX_S
        and behind_s is not None
        and behind_s <= BEHIND_MAX_S
        and p99 is not None
        and p99 <= P99_MAX_S
        and not failed
    )
    return {
        "bench": "iot_pipeline",
        "rate_target_per_s": rate_per_s,
        "offered_per_s": round(offered, 1),
        "sink_readings_per_s": sink_rate,
        "e2e_p50_s": p50,
        "e2e_p99_s": p99,
        "valid_share": round(valid_share, 3),
        "sim_late_s": sim_late_s,
        "behind_s": behind_s,
        "failed_checks": failed,
        "sustained": sustained,
        "wall_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default=RATES_DEFAULT, help="readings/s steps, comma-separated")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per step")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-iot-"))
    results = []
    try:
        for rate in [float(r) for r in args.rates.split(",")]:
            result = step(base / f"rate-{rate:g}", rate, args.devices, args.duration)
            results.append(result)
            print(json.dumps(result), flush=True)
            if not result["sustained"]:
                break
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(
        f"{'target/s':>9} {'offered/s':>10} {'sim late s':>10} {'sink/s':>8} {'p50 s':>7} "
        f"{'p99 s':>7} {'behind s':>8}  sustained"
    )
    for r in results:
        print(
            f"{r['rate_target_per_s']:>9g} {r['offered_per_s']:>10.0f} {r['sim_late_s']:>10.1f} "
            f"{r['sink_readings_per_s']:>8.0f} "
            f"{r['e2e_p50_s'] or float('nan'):>7.3f} {r['e2e_p99_s'] or float('nan'):>7.3f} "
            f"{r['behind_s'] if r['behind_s'] is not None else float('nan'):>8.1f}  {'yes' if r['sustained'] else 'no ' + ','.join(r['failed_checks'])}"
        )
    best = max((r["offered_per_s"] for r in results if r["sustained"]), default=None)
    print(f"highest sustained: {best} readings/s" if best else "no step was sustained")


if __name__ == "__main__":
    main()
