"""``distributary perf produce|consume``: throughput and latency from the real SDK.

``perf produce`` enqueues N records of B bytes (slices of one random buffer, so
compression sees realistic, incompressible data) and measures acknowledgement
latency: from the ``enqueue`` call to the moment the ack task sees the record's
batch acknowledged.  Like Kafka's producer perf tool it samples: at full speed
every 16th record is timed (and counts for 16 in the histogram), under
``--rate`` every record is; failures are counted per batch.  The ack task walks
the sampled handles in order and parks on the first unfinished one, so it wakes
once per batch, and the per-record cost of the tool stays a few dozen
nanoseconds on top of ``enqueue``.
``perf consume`` reads N records from the beginning of every partition.

On a terminal (stderr) a progress line is redrawn twice a second; the summary
goes to stdout as one line, or one JSON object with ``--json`` (perf_stats.py).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Final

import anyio
import anyio.lowlevel
import click
import msgspec

from client.cli.common import EXIT_INTERRUPTED, CommandError, client_options, run
from client.cli.perf_stats import LatencyHistogram, Summary, pacing_delay_s, summarize, summary_line
from client.cli.publish import ACKS_CHOICES, COMPRESSION_CHOICES
from client.consumer import Consumer
from client.errors import DistributaryError, TooManyRequestsError
from client.producer import Producer, RecordHandle

PROGRESS_INTERVAL_S: Final = 0.5
RANDOM_POOL_EXTRA_BYTES: Final = 4096  # record i is pool[i % 4096 :][:size]: no two alike


@click.group()
def perf() -> None:
    """Measure produce and consume throughput and latency."""


def _progress_task(describe: Callable[[], str]) -> Callable[[], Coroutine[Any, Any, None]] | None:
    """A task that redraws a progress line on stderr (None when stderr is not a terminal)."""
    if not sys.stderr.isatty():
        return None

    async def redraw() -> None:
        try:
            while True:
                await anyio.sleep(PROGRESS_INTERVAL_S)
                sys.stderr.write("\r\x1b[2K" + describe())
                sys.stderr.flush()
        finally:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()

    return redraw


def _emit(summary: Summary, as_json: bool) -> None:
    if as_json:
        sys.stdout.buffer.write(msgspec.json.encode(summary) + b"\n")
        sys.stdout.flush()
    else:
        click.echo(summary_line(summary))


# A tight send loop lets the sender and ack tasks run every 512 records (every
# 4,096, as the SDK benchmark does, measured slower here: the ack task falls behind).
YIELD_EVERY_MASK: Final = 512 - 1
# At full speed one record in 16 is timed; each sample stands for 16 records.
SAMPLE_EVERY_FAST: Final = 16


class _ProduceState:
    __slots__ = (
        "acked",
        "errors",
        "failed_batches",
        "first_error",
        "histogram",
        "pending",
        "sending",
        "sent",
        "wake",
    )

    def __init__(self) -> None:
        # (handle, enqueue time, histogram weight) of the tracked records, in order.
        self.pending: deque[tuple[RecordHandle, int, int]] = deque()
        self.histogram = LatencyHistogram()
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.failed_batches: set[int] = set()
        self.first_error: DistributaryError | None = None
        self.sending = True
        self.wake: anyio.Event | None = None

    def count_failure(self, handle: RecordHandle, error: DistributaryError) -> None:
        """Count a failed batch's records once, however many samples it holds."""
        batch = handle.batch
        if id(batch) not in self.failed_batches:
            self.failed_batches.add(id(batch))
            self.errors += len(batch.builder)
            self.first_error = self.first_error or error


class _Interrupt:
    """The first Ctrl-C cancels :attr:`scope` (the sending or reading loop), so
    the command flushes and prints its summary so far (exit 130); a second one
    stops at once."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.interrupted = False

    async def watch(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                if self.interrupted:
                    raise KeyboardInterrupt
                self.interrupted = True
                self.scope.cancel()
                click.echo("interrupted: the summary covers what was done so far", err=True)


async def _ack_loop(state: _ProduceState) -> None:
    """Measure acknowledgement latency of the sampled records, in order."""
    pending = state.pending
    histogram = state.histogram
    while pending or state.sending:
        if not pending:
            state.wake = anyio.Event()
            await state.wake.wait()
            continue
        handle = pending[0][0]
        if not handle.done():
            try:
                await handle.wait()
            except DistributaryError:
                pass  # counted below, with the others of its batch
        now_ns = time.perf_counter_ns()
        while pending and pending[0][0].done():
            handle, sent_ns, weight = pending.popleft()
            error = handle.batch.error
            if error is not None:
                state.count_failure(handle, error)
                continue
            if weight:
                histogram.record((now_ns - sent_ns) / 1000, weight)
                state.acked += weight


PRODUCE_EXAMPLES: Final = """
\b
Examples:
  distributary perf produce bench --records 1000000 --record-size 100
  distributary perf produce bench --records 50000 --record-size 1024 --rate 10000 --json
"""
CONSUME_EXAMPLES: Final = """
\b
Examples:
  distributary perf consume bench --records 1000000
  distributary perf consume bench --records 1000000 --json | jq .mb_per_s
"""


@perf.command(name="produce", epilog=PRODUCE_EXAMPLES)
@click.argument("topic")
@click.option(
    "--records", type=click.IntRange(min=1), required=True, metavar="N", help="How many records."
)
@click.option(
    "--record-size",
    type=click.IntRange(min=0),
    required=True,
    metavar="BYTES",
    help="Value bytes per record.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="N",
    help="At most N records/s (every record is then timed).",
)
@click.option("--acks", type=click.Choice(ACKS_CHOICES), default="all", show_default=True)
@click.option(
    "--compression", type=click.Choice(COMPRESSION_CHOICES), default="none", show_default=True
)
@click.option("--linger-ms", type=click.IntRange(min=0), default=5, show_default=True, metavar="MS")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@client_options
def perf_produce(
    topic: str,
    records: int,
    record_size: int,
    rate: float | None,
    acks: str,
    compression: str,
    linger_ms: int,
    as_json: bool,
    bootstrap: str,
    debug: bool,
) -> None:
    """Publish N records (--records) of BYTES bytes (--record-size) to TOPIC; report
    the rate and acknowledgement latency.

    Ctrl-C stops sending: what was sent is flushed and the summary covers it
    (exit 130)."""
    pool = os.urandom(record_size + RANDOM_POOL_EXTRA_BYTES)

    async def body() -> int:
        sample_every = 1 if rate is not None else SAMPLE_EVERY_FAST
        sample_mask = sample_every - 1
        state = _ProduceState()
        started = time.perf_counter()
        async with Producer(
            bootstrap,
            acks=acks,  # type: ignore[arg-type]
            compression=compression,  # type: ignore[arg-type]
            linger_ms=linger_ms,
        ) as producer:
            await producer.partitions_for(topic)
            started = time.perf_counter()
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(_ack_loop, state)
                progress = _progress_task(
                    lambda: (
                        f"{state.sent:,} sent, {state.acked:,} acknowledged, "
                        f"{state.acked / max(time.perf_counter() - started, 1e-9):,.0f} records/s"
                    )
                )
                if progress is not None:
                    task_group.start_soon(progress)
                send_nowait = producer.send_nowait
                wait_for_space = producer.wait_for_space
                pending = state.pending
                clock_ns = time.perf_counter_ns
                # Distinct values made once: no slicing on the per-record path.
                values = [
                    pool[start : start + record_size] for start in range(RANDOM_POOL_EXTRA_BYTES)
                ]
                last_batch: object = None
                index = 0
                interrupt = _Interrupt()
                task_group.start_soon(interrupt.watch)
                with interrupt.scope:
                    for index in range(records):
                        if rate is not None:
                            delay = pacing_delay_s(index, time.perf_counter() - started, rate)
                            if delay > 0:
                                await anyio.sleep(delay)
                        if not index & YIELD_EVERY_MASK:
                            await anyio.lowlevel.checkpoint()  # let the sender run
                            state.sent = index
                            if state.wake is not None:
                                state.wake.set()
                                state.wake = None
                        value = values[index % RANDOM_POOL_EXTRA_BYTES]
                        # The synchronous per-record call (as the SDK's own benchmark,
                        # and Kafka's perf tool with its non-blocking send()); a full
                        # buffer waits for space, then the record goes.
                        if index & sample_mask:
                            try:
                                handle = send_nowait(topic, value)
                            except TooManyRequestsError:
                                await wait_for_space()
                                handle = send_nowait(topic, value)
                            if handle.batch is last_batch:
                                continue
                            # The first record of every batch is tracked too (weight
                            # 0), so a failed batch is always seen and counted.
                            pending.append((handle, 0, 0))
                        else:
                            sent_ns = clock_ns()
                            try:
                                handle = send_nowait(topic, value)
                            except TooManyRequestsError:
                                await wait_for_space()
                                handle = send_nowait(topic, value)
                            pending.append((handle, sent_ns, sample_every))
                        last_batch = handle.batch
                    index = records
                # Interrupted: every await above comes before its record is sent.
                state.sent = index
                state.sending = False
                if state.wake is not None:
                    state.wake.set()
                await producer.flush()
                await _wait_drained(state)
                task_group.cancel_scope.cancel()
        elapsed = time.perf_counter() - started
        acknowledged = state.sent - state.errors
        summary = summarize(
            mode="produce",
            topic=topic,
            records=acknowledged,
            total_bytes=acknowledged * record_size,
            elapsed_s=elapsed,
            latency=state.histogram,
            errors=state.errors,
        )
        _emit(summary, as_json)
        if state.first_error is not None:
            raise CommandError(f"{state.errors:,} records failed: {state.first_error}")
        return EXIT_INTERRUPTED if interrupt.interrupted else 0

    run(body, bootstrap=bootstrap, debug=debug, topic=topic)


async def _wait_drained(state: _ProduceState) -> None:
    while state.pending:  # the ack loop empties `pending` once the flush is acknowledged
        await anyio.sleep(0.001)


@perf.command(name="consume", epilog=CONSUME_EXAMPLES)
@click.argument("topic")
@click.option(
    "--records", type=click.IntRange(min=1), required=True, metavar="N", help="How many records."
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up after SECONDS without a new record.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@client_options
def perf_consume(
    topic: str, records: int, timeout_s: float, as_json: bool, bootstrap: str, debug: bool
) -> None:
    """Read N records (--records) of TOPIC from the beginning; report the rate.

    Ctrl-C stops reading; the summary covers what was read (exit 130)."""

    async def body() -> int:
        count = 0
        total_bytes = 0
        async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
            await consumer.assign([topic])
            await consumer.seek_to_beginning()
            started = time.perf_counter()
            last_progress_s = started
            async with anyio.create_task_group() as task_group:
                progress = _progress_task(
                    lambda: (
                        f"{count:,} records, "
                        f"{count / max(time.perf_counter() - started, 1e-9):,.0f} records/s"
                    )
                )
                if progress is not None:
                    task_group.start_soon(progress)
                interrupt = _Interrupt()
                task_group.start_soon(interrupt.watch)
                with interrupt.scope:
                    while count < records:
                        batches = await consumer.getmany(
                            timeout_ms=int(timeout_s * 1000), max_records=records - count
                        )
                        if not batches:
                            break
                        for batch in batches.values():
                            count += len(batch)
                            total_bytes += sum(
                                [len(r.value or b"") + len(r.key or b"") for r in batch]
                            )
                        last_progress_s = time.perf_counter()
                if interrupt.interrupted:
                    last_progress_s = time.perf_counter()
                task_group.cancel_scope.cancel()
            elapsed = last_progress_s - started
        summary = summarize(
            mode="consume", topic=topic, records=count, total_bytes=total_bytes, elapsed_s=elapsed
        )
        _emit(summary, as_json)
        if interrupt.interrupted:
            return EXIT_INTERRUPTED
        if count < records:
            raise CommandError(
                f"only {count:,} of {records:,} records arrived (none for {timeout_s:g} s)"
            )
        return 0

    run(body, bootstrap=bootstrap, debug=debug, topic=topic)
