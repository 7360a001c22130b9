"""``python -m tests.chaos --seed S --minutes M [--faults kill,pause,...]``: one chaos
run (tests/chaos/runner.py); prints the faults applied and the checker's report,
exits 1 on any anomaly or client crash, 2 when the run cannot happen here.
``python -m tests.chaos --check history.jsonl`` checks the history of an earlier run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.chaos.checker import check
from tests.chaos.runner import FAULTS, RunConfig, loses_data_by_design, run, unavailable
from tests.chaos.workload import WorkloadConfig, read_history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=2.0, help="of faults, before healing")
    parser.add_argument(
        "--faults",
        default="kill,pause",
        help=f"comma-separated, of: {','.join(FAULTS)} ('' for none)",
    )
    parser.add_argument("--rf", type=int, default=3, help="replication factor of the topic")
    parser.add_argument(
        "--min-insync",
        type=int,
        default=2,
        help="min.insync.replicas (at most --rf; 0: the broker's default)",
    )
    parser.add_argument("--acks", choices=["leader", "all"], default="all")
    parser.add_argument("--rate", type=float, default=200.0, help="records/s, all producers")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--directory", type=Path, default=None, help="kept after the run")
    parser.add_argument(
        "--check", type=Path, default=None, help="only check this history.jsonl of an earlier run"
    )
    arguments = parser.parse_args(argv)
    if arguments.check is not None:
        verdict = check(read_history(arguments.check))
        print(verdict.report())
        return 0 if verdict.valid else 1
    faults = tuple(f for f in arguments.faults.split(",") if f)
    reason = unavailable(faults) or loses_data_by_design(faults, arguments.rf)
    if reason:
        print(f"chaos: cannot run: {reason}", file=sys.stderr)
        return 2
    config = RunConfig(
        seed=arguments.seed,
        duration_s=arguments.minutes * 60,
        faults=faults,
        workload=WorkloadConfig(
            partitions=arguments.partitions, records_per_s=arguments.rate, acks=arguments.acks
        ),
        replication_factor=arguments.rf,
        min_insync_replicas=min(arguments.min_insync, arguments.rf) or None,
        directory=arguments.directory,
    )
    result = run(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(result.report())
    return 0 if result.valid else 1


if __name__ == "__main__":
    sys.exit(main())
