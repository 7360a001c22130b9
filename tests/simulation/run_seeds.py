"""Run many seeds of the replication simulation (``make simulate``): SEEDS=n seeds
from START (default 0), or SEED=n alone; prints every failing seed and a summary
(seeds per second, acknowledged records, elections), exit status 1 on a failure.
"""

from __future__ import annotations

import os
import sys
import time

from sim_world import run_seed


def main() -> int:
    if "SEED" in os.environ:
        seeds = range(int(os.environ["SEED"]), int(os.environ["SEED"]) + 1)
    else:
        start = int(os.environ.get("START", "0"))
        seeds = range(start, start + int(os.environ.get("SEEDS", "100000")))
    started = time.perf_counter()
    failed = acks = elections = 0
    for seed in seeds:
        try:
            world = run_seed(seed)
        except AssertionError as error:
            failed += 1
            print(error, flush=True)
            continue
        acks += world.checks.acks
        elections += world.checks.elections
    elapsed = time.perf_counter() - started
    print(
        f"{len(seeds)} seeds in {elapsed:.1f} s ({len(seeds) / elapsed:.0f} seeds/s), "
        f"{failed} failed; {acks} acks=all records acknowledged, {elections} leader changes"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
