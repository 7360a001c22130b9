"""``distributary publish``: one record per input line, acknowledged before exit.

The input is read in chunks (``os.read``: whatever is available, so a slow pipe
such as ``tail -f app.log | distributary publish logs`` is sent line by line
as it arrives, and a file moves at disk speed), cut at the delimiter (``\\n``,
or ``-D``), and each piece is turned into a record by one compiled splitter call
(publish_input.py) or one envelope decode (``--json``).  ``--whole`` makes the
whole input one record instead.  Records go to ``Producer.enqueue``; their
handles wait in a deque, with their input line numbers, trimmed from the left as
acknowledgements arrive, so memory stays bounded by what is in flight.

The rule for bad input (delivery.py has the reports): the first line that
cannot become a record (malformed ``--json``, a record over the size limit)
stops the reading; everything before it is still published and acknowledged,
and the error names the line.  A record the broker did not acknowledge is
reported with its line number (the first such line is where a rerun resumes),
and the exit code is 1.  The producer retries through broker outages for
``--delivery-timeout-ms`` per record, and a record that fails fails every later
record of its partition with it, and reading stops there, so a partition never
has a gap: everything before the reported line is written, and nothing after it
in its partition.  ``--report`` writes one JSON line per record (its partition
and offset, or its error).

Ctrl-C stops reading; what was already read is flushed and acknowledged, the
summary printed, and the exit code is 130.  A second Ctrl-C abandons the flush.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import IO, Final

import anyio
import click

from client.cli.common import EXIT_INTERRUPTED, client_options, run
from client.cli.delivery import DeliveryTracker, Stop
from client.cli.envelope import EnvelopeError, decode_record
from client.cli.offset_spec import parse_time_ms
from client.cli.publish_input import (
    PublishRecord,
    Splitter,
    compile_splitter,
    parse_header,
    unescape_option,
)
from client.errors import RecordBatchError
from client.producer import DELIVERY_TIMEOUT_MS_DEFAULT, Producer
from client.records.header import BATCH_BYTES_LIMIT

READ_BYTES: Final = 256 * 1024  # per read call: large enough for file speed
# --whole reads the input into memory: at most this much (the default frame limit,
# which no single record can exceed anyway).
WHOLE_INPUT_BYTES_MAX: Final = 64 * 1024 * 1024
ACKS_CHOICES: Final = ("none", "leader", "all")
COMPRESSION_CHOICES: Final = ("none", "gzip", "lz4", "zstd")

EXAMPLES: Final = """
\b
Examples:
  seq 1 1000 | distributary publish numbers
  distributary publish orders orders.txt --key-separator '\\t' -H source=import
  echo 'user-9:NULL' | distributary publish users -K : --null-marker NULL
  printf 'a;b;c' | distributary publish letters -D ';'
  distributary publish images photo.jpg --whole -k photo.jpg
  distributary publish events old.log -T 2024-05-01T00:00:00Z --report delivery.jsonl
  distributary tail orders -o beginning -e --json | distributary publish copy --json
"""


class DeliveryFailed(Exception):
    """A record failed for good: reading stops, so no later record is written."""


def _json_splitter(keep_partition: bool, partition: int | None) -> Splitter:
    def decode(line: bytes) -> PublishRecord:
        record = decode_record(line)
        if partition is not None:
            return record._replace(partition=partition)
        if not keep_partition:
            return record._replace(partition=None)
        return record

    return decode


def _with_timestamp(split: Splitter, timestamp_ms: int) -> Splitter:
    return lambda line: split(line)._replace(timestamp_ms=timestamp_ms)


async def _publish_stream(
    producer: Producer,
    topic: str,
    stream: IO[bytes],
    split: Splitter,
    partition: int | None,
    delimiter: bytes | None,
    tracker: DeliveryTracker,
    read_scope: anyio.CancelScope,
) -> None:
    """Read, split and enqueue until the input ends, Ctrl-C, the first bad line
    (raises Stop) or the first record that failed for good (raises
    DeliveryFailed).  ``delimiter`` None: the whole input is one record."""
    enqueue = producer.enqueue

    async def publish_pieces(pieces: list[bytes]) -> None:
        for piece in pieces:
            if producer.failed_batches:
                # Records enqueued from now on would be written after a failed one.
                raise DeliveryFailed
            line_number = tracker.line_number + 1
            try:
                record = split(piece)
                handle = await enqueue(
                    topic,
                    record.value,
                    record.key,
                    record.headers,
                    record.partition if partition is None else partition,
                    record.timestamp_ms,
                )
            except (EnvelopeError, RecordBatchError) as error:
                raise Stop(line_number, str(error)) from None
            tracker.add(handle, len(piece))

    read = _chunk_reader(stream)
    if delimiter is None:
        data = await anyio.to_thread.run_sync(_read_all, read, abandon_on_cancel=True)
        await publish_pieces([data])
        return
    remainder = b""
    with read_scope:
        while True:
            chunk: bytes = await anyio.to_thread.run_sync(read, READ_BYTES, abandon_on_cancel=True)
            if not chunk:
                break
            pieces = (remainder + chunk).split(delimiter)
            remainder = pieces.pop()
            await publish_pieces(pieces)
            tracker.trim()
    if remainder and not read_scope.cancelled_caught:  # a last piece without a delimiter
        await publish_pieces([remainder])


def _read_all(read: Callable[[int], bytes]) -> bytes:
    """The whole input.  Raises Stop when it is over WHOLE_INPUT_BYTES_MAX."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = read(READ_BYTES)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > WHOLE_INPUT_BYTES_MAX:
            raise Stop(1, f"--whole input is over {WHOLE_INPUT_BYTES_MAX:,} bytes")
        chunks.append(chunk)


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


@click.command(epilog=EXAMPLES)
@click.argument("topic")
@click.argument("input_file", metavar="[FILE|-]", type=click.File("rb"), default="-")
@click.option("-k", "--key", metavar="KEY", help="Fixed key for every record.")
@click.option(
    "-K",
    "--key-separator",
    metavar="SEP",
    help="Split each line at the first SEP into key and value (\\t escapes work).",
)
@click.option(
    "-H", "--header", "headers", multiple=True, metavar="NAME=VALUE", help="Header (repeatable)."
)
@click.option(
    "-p", "--partition", type=click.IntRange(min=0), metavar="N", help="Write to partition N."
)
@click.option(
    "-D",
    "--delimiter",
    metavar="SEP",
    default="\\n",
    show_default=True,
    help="What separates records in the input (\\n \\t \\r \\\\ escapes work).",
)
@click.option("--whole", is_flag=True, help="The whole input is one record (a file, an image ...).")
@click.option(
    "-T",
    "--timestamp",
    metavar="TIME",
    help="Timestamp of every record: ISO 8601, ms since the epoch, or -1h (default: now).",
)
@click.option(
    "--report",
    type=click.File("w"),
    metavar="FILE|-",
    help="Write a JSON line per record: its line, partition and offset, or its error.",
)
@click.option("--acks", type=click.Choice(ACKS_CHOICES), default="all", show_default=True)
@click.option(
    "--compression", type=click.Choice(COMPRESSION_CHOICES), default="none", show_default=True
)
@click.option("--json", "json_input", is_flag=True, help="Input is the JSON-lines envelope.")
@click.option("--keep-partition", is_flag=True, help="With --json: use each record's 'partition'.")
@click.option("--null-marker", metavar="M", help="A value or key equal to M is null.")
@click.option("--linger-ms", type=click.IntRange(min=0), default=5, show_default=True, metavar="MS")
@click.option(
    "--delivery-timeout-ms",
    type=click.IntRange(min=1),
    default=DELIVERY_TIMEOUT_MS_DEFAULT,
    show_default=True,
    metavar="MS",
    help="How long a record may take to be acknowledged, retries through broker "
    "outages included; then it and every later record of its partition fail.",
)
@click.option(
    "--batch-bytes-max",
    type=click.IntRange(min=1, max=BATCH_BYTES_LIMIT),
    default=1024 * 1024,
    show_default=True,
    metavar="BYTES",
    help="Largest batch, so largest record, sent; the topic's batch_bytes_max must allow it.",
)
@client_options
def publish(
    topic: str,
    input_file: IO[bytes],
    key: str | None,
    key_separator: str | None,
    headers: tuple[str, ...],
    partition: int | None,
    delimiter: str,
    whole: bool,
    timestamp: str | None,
    report: IO[str] | None,
    acks: str,
    compression: str,
    json_input: bool,
    keep_partition: bool,
    null_marker: str | None,
    linger_ms: int,
    delivery_timeout_ms: int,
    batch_bytes_max: int,
    bootstrap: str,
    debug: bool,
) -> None:
    """Publish each line of FILE (default: stdin) as one record to TOPIC.

    Exits once the input ends and every record is acknowledged; a summary
    (records, bytes, rate) goes to stderr.  The first bad input line stops the
    reading (what came before it is published) and is named in the error.
    """
    try:
        header_list = [parse_header(text) for text in headers]
        separator = unescape_option(delimiter)
        if not separator:
            raise click.BadParameter("-D/--delimiter must not be empty")
        if json_input:
            if key is not None or key_separator is not None or null_marker is not None:
                raise click.BadParameter("--json takes keys and values from the input")
            if whole or timestamp is not None:
                raise click.BadParameter("--json takes records and timestamps from the input")
            split = _json_splitter(keep_partition, partition)
        else:
            split = compile_splitter(
                key_separator=None if key_separator is None else unescape_option(key_separator),
                fixed_key=None if key is None else key.encode(),
                null_marker=None if null_marker is None else null_marker.encode(),
                headers=header_list,
            )
        if timestamp is not None:
            split = _with_timestamp(split, parse_time_ms(timestamp))
    except click.BadParameter as error:
        raise click.UsageError(error.message) from None

    async def body() -> int:
        tracker = DeliveryTracker(topic, report)
        read_scope = anyio.CancelScope()
        async with (
            Producer(
                bootstrap,
                acks=acks,  # type: ignore[arg-type]
                compression=compression,  # type: ignore[arg-type]
                linger_ms=linger_ms,
                delivery_timeout_ms=delivery_timeout_ms,
                batch_bytes_max=batch_bytes_max,
                # As Kafka's producers do: the broker's auto_create_topics decides.
                allow_auto_create_topics=True,
            ) as producer,
            anyio.create_task_group() as task_group,
        ):
            await producer.partitions_for(topic)  # unknown topic: fail before reading

            async def on_interrupt() -> None:
                with anyio.open_signal_receiver(signal.SIGINT) as signals:
                    async for _ in signals:
                        if tracker.interrupted:  # second Ctrl-C: give up on flushing
                            raise KeyboardInterrupt
                        tracker.interrupted = True
                        read_scope.cancel()
                        click.echo("interrupted: flushing what was read", err=True)

            task_group.start_soon(on_interrupt)
            try:
                await _publish_stream(
                    producer,
                    topic,
                    input_file,
                    split,
                    partition,
                    None if whole else separator,
                    tracker,
                    read_scope,
                )
            except Stop as stop:
                tracker.stopped = stop
            except DeliveryFailed:
                pass  # the tracker reports the first record that failed
            await producer.flush()
            await tracker.wait_all()
            task_group.cancel_scope.cancel()
        return tracker.finish(EXIT_INTERRUPTED if tracker.interrupted else 0)

    run(body, bootstrap=bootstrap, debug=debug, topic=topic)
