"""``distributary publish``: one record per input line, acknowledged before exit.

The input is read in chunks (``os.read``: whatever is available, so a slow pipe
such as ``tail -f app.log | distributary publish logs`` is sent line by line
as it arrives, and a file moves at disk speed), cut into lines, and each line
is turned into a record by one compiled splitter call (publish_input.py) or
one envelope decode (``--json``).  Records go to ``Producer.enqueue``; their
handles wait in a deque that is trimmed from the left as acknowledgements
arrive, so memory stays bounded by what is in flight.

Ctrl-C stops reading; what was already read is flushed and acknowledged, the
summary printed, and the exit code is 130.  A second Ctrl-C abandons the flush.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Final

import anyio
import click

from client.cli.common import EXIT_INTERRUPTED, CommandError, client_options, format_bytes, run
from client.cli.envelope import EnvelopeError, decode_record
from client.cli.publish_input import (
    PublishRecord,
    Splitter,
    compile_splitter,
    parse_header,
    unescape_option,
)
from client.producer import Producer, RecordHandle

READ_BYTES: Final = 256 * 1024  # per read1 call: large enough for file speed
ACKS_CHOICES: Final = ("none", "leader", "all")
COMPRESSION_CHOICES: Final = ("none", "gzip", "lz4", "zstd")

EXAMPLES: Final = """
\b
Examples:
  seq 1 1000 | distributary publish numbers
  distributary publish orders orders.txt --key-separator '\\t' -H source=import
  echo 'user-9:NULL' | distributary publish users -K : --null-marker NULL
  distributary tail orders -o beginning -e --json | distributary publish copy --json
"""


class _Counters:
    __slots__ = ("bytes", "interrupted", "line_number", "records")

    def __init__(self) -> None:
        self.records = 0
        self.bytes = 0
        self.line_number = 0
        self.interrupted = False


def _json_splitter(keep_partition: bool, partition: int | None) -> Splitter:
    def decode(line: bytes) -> PublishRecord:
        record = decode_record(line)
        if partition is not None:
            return record._replace(partition=partition)
        if not keep_partition:
            return record._replace(partition=None)
        return record

    return decode


def _check_acknowledged(handles: deque[RecordHandle]) -> None:
    """Drop acknowledged handles from the left; raise the first failure."""
    while handles and handles[0].done():
        handles.popleft().result()


async def _publish_stream(
    producer: Producer,
    topic: str,
    stream: IO[bytes],
    split: Splitter,
    partition: int | None,
    counters: _Counters,
    read_scope: anyio.CancelScope,
) -> deque[RecordHandle]:
    handles: deque[RecordHandle] = deque()
    append = handles.append
    enqueue = producer.enqueue

    async def publish_lines(lines: list[bytes]) -> None:
        for line in lines:
            counters.line_number += 1
            try:
                record = split(line)
            except EnvelopeError as error:
                raise CommandError(f"line {counters.line_number}: {error}") from None
            append(
                await enqueue(
                    topic,
                    record.value,
                    record.key,
                    record.headers,
                    record.partition if partition is None else partition,
                    record.timestamp_ms,
                )
            )
            counters.records += 1
            counters.bytes += len(line)

    read = _chunk_reader(stream)
    remainder = b""
    with read_scope:
        while True:
            chunk: bytes = await anyio.to_thread.run_sync(read, READ_BYTES, abandon_on_cancel=True)
            if not chunk:
                break
            lines = (remainder + chunk).split(b"\n")
            remainder = lines.pop()
            await publish_lines(lines)
            _check_acknowledged(handles)
    if remainder and not read_scope.cancelled_caught:  # a last line without "\n"
        await publish_lines([remainder])
    return handles


def _chunk_reader(stream: IO[bytes]) -> Callable[[int], bytes]:
    """``read(n)``: up to n bytes, as soon as any are available.

    A real file descriptor is read with ``os.read``: it takes no lock, so a read
    abandoned by Ctrl-C (still blocked in its worker thread) cannot deadlock the
    interpreter's shutdown the way a blocked ``BufferedReader.read1`` does."""
    try:
        descriptor = stream.fileno()
    except (OSError, AttributeError, ValueError):  # io.BytesIO and friends
        return getattr(stream, "read1", stream.read)
    return lambda size: os.read(descriptor, size)


def _summary(topic: str, counters: _Counters, elapsed_s: float) -> str:
    elapsed = max(elapsed_s, 1e-9)
    return (
        f"published {counters.records:,} records ({format_bytes(counters.bytes)}) to "
        f"{topic!r} in {elapsed_s:.2f} s: {counters.records / elapsed:,.0f} records/s, "
        f"{counters.bytes / elapsed / 1_000_000:,.2f} MB/s"
    )


@click.command(epilog=EXAMPLES)
@click.argument("topic")
@click.argument("input_file", metavar="[FILE|-]", type=click.File("rb"), default="-")
@click.option("-k", "--key", help="Fixed key for every record.")
@click.option(
    "-K",
    "--key-separator",
    metavar="SEP",
    help="Split each line at the first SEP into key and value (\\t escapes work).",
)
@click.option(
    "-H", "--header", "headers", multiple=True, metavar="NAME=VALUE", help="Header (repeatable)."
)
@click.option("-p", "--partition", type=click.IntRange(min=0), help="Write to this partition.")
@click.option("--acks", type=click.Choice(ACKS_CHOICES), default="all", show_default=True)
@click.option(
    "--compression", type=click.Choice(COMPRESSION_CHOICES), default="none", show_default=True
)
@click.option("--json", "json_input", is_flag=True, help="Input is the JSON-lines envelope.")
@click.option("--keep-partition", is_flag=True, help="With --json: use each record's 'partition'.")
@click.option("--null-marker", metavar="M", help="A value or key equal to M is null.")
@click.option("--linger-ms", type=click.IntRange(min=0), default=5, show_default=True)
@client_options
def publish(
    topic: str,
    input_file: IO[bytes],
    key: str | None,
    key_separator: str | None,
    headers: tuple[str, ...],
    partition: int | None,
    acks: str,
    compression: str,
    json_input: bool,
    keep_partition: bool,
    null_marker: str | None,
    linger_ms: int,
    bootstrap: str,
    debug: bool,
) -> None:
    """Publish each line of FILE (default: stdin) as one record to TOPIC.

    Exits once the input ends and every record is acknowledged; a summary
    (records, bytes, rate) goes to stderr.
    """
    try:
        header_list = [parse_header(text) for text in headers]
        if json_input:
            if key is not None or key_separator is not None or null_marker is not None:
                raise click.BadParameter("--json takes keys and values from the input")
            split = _json_splitter(keep_partition, partition)
        else:
            split = compile_splitter(
                key_separator=None if key_separator is None else unescape_option(key_separator),
                fixed_key=None if key is None else key.encode(),
                null_marker=None if null_marker is None else null_marker.encode(),
                headers=header_list,
            )
    except click.BadParameter as error:
        raise click.UsageError(error.message) from None

    async def body() -> int:
        counters = _Counters()
        read_scope = anyio.CancelScope()
        started = time.perf_counter()
        async with (
            Producer(
                bootstrap,
                acks=acks,  # type: ignore[arg-type]
                compression=compression,  # type: ignore[arg-type]
                linger_ms=linger_ms,
            ) as producer,
            anyio.create_task_group() as task_group,
        ):
            await producer.partitions_for(topic)  # unknown topic: fail before reading

            async def on_interrupt() -> None:
                with anyio.open_signal_receiver(signal.SIGINT) as signals:
                    async for _ in signals:
                        if counters.interrupted:  # second Ctrl-C: give up on flushing
                            raise KeyboardInterrupt
                        counters.interrupted = True
                        read_scope.cancel()
                        click.echo("interrupted: flushing what was read", err=True)

            task_group.start_soon(on_interrupt)
            handles = await _publish_stream(
                producer, topic, input_file, split, partition, counters, read_scope
            )
            await producer.flush()
            for handle in handles:
                handle.result()
            task_group.cancel_scope.cancel()
        click.echo(_summary(topic, counters, time.perf_counter() - started), err=True)
        return EXIT_INTERRUPTED if counters.interrupted else 0

    run(body, bootstrap=bootstrap, debug=debug, topic=topic)
