"""Storage benchmarks: ``python -m bench.storage`` (also ``make bench``).

Prints a table, then one JSON line per figure; every figure is the median of
``--reps`` runs in a fresh temporary directory (removed afterwards):

* ``storage.append.page_cache``: Log.append of 64 KiB batches (bytes, as a socket
  hands them over: validated, copied once, stamped, written), fsync off.
* ``storage.append.fsync_per_mib``: the same with a flush (fsync + checkpoint) after
  every 1 MiB.
* ``storage.read.sendfile`` / ``storage.read.pread``: the whole log read region by
  region (1 MiB max), sent with os.sendfile to /dev/null or copied with os.pread.
* ``storage.recovery.tail`` / ``storage.recovery.full``: Log.open after an unclean
  stop of a 1 GiB log, with the recovery checkpoint 8 MiB before the end (the normal
  case) and without any checkpoint (everything rescanned: the worst case).
* the records encode/decode figures of ``bench.records`` when it is importable.

Targets (issue "the partition log"): append with fsync off >= 1 GB/s, recovery of a
1 GB log after an unclean stop < 2 s.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from broker.storage.checkpoint import CHECKPOINT_FILE
from broker.storage.log import Log
from client.records.builder import build_batch

BATCH_BYTES_TARGET = 64 * 1024
MIB = 1 << 20


def make_batch_bytes() -> bytes:
    """One ~64 KiB uncompressed batch of 64 records of ~1 KiB each."""
    values = [os.urandom(1000) for _ in range(64)]
    return bytes(build_batch(values, timestamp_ms=1_700_000_000_000))


def fill(log: Log, batch: bytes, total_bytes: int, flush_every_bytes: int | None = None) -> int:
    """Append ``batch`` until ``total_bytes``; returns the bytes appended."""
    appended = 0
    since_flush = 0
    for _ in range(total_bytes // len(batch) + 1):
        if appended >= total_bytes:
            break
        log.append(batch)
        appended += len(batch)
        since_flush += len(batch)
        if flush_every_bytes is not None and since_flush >= flush_every_bytes:
            log.flush()
            since_flush = 0
    return appended


def crash(log: Log) -> None:
    """Drop the log's descriptors without flush or clean-shutdown marker."""
    for segment in log._segments:
        segment.close()
    log._closed = True


def figure(bench: str, seconds: list[float], payload_bytes: int, **extra: Any) -> dict[str, Any]:
    median = statistics.median(seconds)
    result: dict[str, Any] = {
        "bench": bench,
        "reps": len(seconds),
        "seconds_median": round(median, 4),
        "mb_per_s": round(payload_bytes / median / 1e6, 1) if payload_bytes else None,
        "mb_per_s_min": round(payload_bytes / max(seconds) / 1e6, 1) if payload_bytes else None,
    }
    result.update(extra)
    return result


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def bench_append(root: Path, reps: int, batch: bytes, total_bytes: int) -> list[dict[str, Any]]:
    results = []
    for name, flush_every, size in (
        ("storage.append.page_cache", None, total_bytes),
        ("storage.append.fsync_per_mib", MIB, min(total_bytes, 128 * MIB)),
    ):
        seconds = []
        # One untimed warm-up rep: on a fresh VM the first touch of page-cache memory
        # costs several times more than steady state (a broker runs warm).
        for rep in range(reps + 1):
            directory = root / f"append-{rep}"
            log = Log.open(directory)
            elapsed = timed(functools.partial(fill, log, batch, size, flush_every))
            if rep:
                seconds.append(elapsed)
            log.close()
            shutil.rmtree(directory)
        results.append(figure(name, seconds, size, batch_bytes=len(batch)))
    return results


def bench_read(root: Path, reps: int, batch: bytes, total_bytes: int) -> list[dict[str, Any]]:
    directory = root / "read"
    log = Log.open(directory)
    fill(log, batch, total_bytes)
    size = log.size_bytes

    def read_all(use_sendfile: bool) -> None:
        offset = log.start_offset
        with open(os.devnull, "wb") as sink:
            for _ in range(total_bytes // 1024 + 1):
                if offset >= log.end_offset:
                    return
                with log.read(offset, MIB) as region:
                    if use_sendfile:
                        assert region.send_blocking(sink.fileno()) == region.length
                    else:
                        os.pread(region.descriptor, region.length, region.position)
                    offset = region.next_offset

    results = []
    for name, use_sendfile in (("storage.read.sendfile", True), ("storage.read.pread", False)):
        read_all(use_sendfile)  # warm up
        seconds = [
            timed(lambda use_sendfile=use_sendfile: read_all(use_sendfile)) for _ in range(reps)
        ]
        results.append(figure(name, seconds, size, region_bytes_max=MIB))
    log.close()
    shutil.rmtree(directory)
    return results


def bench_recovery(root: Path, reps: int, batch: bytes, total_bytes: int) -> list[dict[str, Any]]:
    directory = root / "recovery"
    log = Log.open(directory)
    tail_bytes = 8 * MIB
    fill(log, batch, total_bytes - tail_bytes)
    log.flush()
    fill(log, batch, tail_bytes)
    size = log.size_bytes
    end_offset = log.end_offset
    crash(log)
    checkpoint = (directory / CHECKPOINT_FILE).read_bytes()
    results = []
    for name, keep_checkpoint in (
        ("storage.recovery.tail", True),
        ("storage.recovery.full", False),
    ):
        seconds = []
        for _ in range(reps):
            if keep_checkpoint:
                (directory / CHECKPOINT_FILE).write_bytes(checkpoint)
            else:
                (directory / CHECKPOINT_FILE).unlink(missing_ok=True)
            started = time.perf_counter()
            reopened = Log.open(directory)
            seconds.append(time.perf_counter() - started)
            assert reopened.end_offset == end_offset, (reopened.end_offset, end_offset)
            crash(reopened)  # stay unclean for the next rep
        results.append(figure(name, seconds, size, log_bytes=size, target_seconds=2.0))
    shutil.rmtree(directory)
    return results


def records_figures(reps: int) -> list[dict[str, Any]]:
    try:
        from bench import records
    except ImportError:
        return []
    return list(records.run(reps))


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'bench':<30} {'median s':>10} {'MB/s (median)':>14} {'MB/s (min)':>11}")
    for result in results:
        if "seconds_median" not in result:
            continue
        print(
            f"{result['bench']:<30} {result['seconds_median']:>10} "
            f"{result['mb_per_s'] or '-':>14} {result['mb_per_s_min'] or '-':>11}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--append-mib", type=int, default=512)
    parser.add_argument("--recovery-mib", type=int, default=1024)
    parser.add_argument("--no-records", action="store_true", help="skip bench.records")
    arguments = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    batch = make_batch_bytes()
    root = Path(tempfile.mkdtemp(prefix="distributary-bench-"))
    try:
        results = bench_append(root, arguments.reps, batch, arguments.append_mib * MIB)
        results += bench_read(root, arguments.reps, batch, arguments.append_mib * MIB)
        results += bench_recovery(root, arguments.reps, batch, arguments.recovery_mib * MIB)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    records_results = [] if arguments.no_records else records_figures(arguments.reps)
    if records_results:
        from bench import records

        print()
        records.print_table(records_results)
    for result in results + records_results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
