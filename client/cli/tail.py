"""``distributary tail``: print a topic's records, following the log by default.

The consumer (client.Consumer, no group) is assigned the chosen partitions and
positioned by the ``-o`` spec (offset_spec.py).  Records arrive from
``getmany`` as per-partition lists; each list goes to a writer in one call
(tail_output.py): compiled format bytes, JSON lines, or coloured terminal lines.

``-e`` takes each partition's log end when tail starts and stops the partition
once its position reaches it; ``-n`` stops after that many records.  Data goes
to stdout, status (``-e`` / ``-n`` summaries are silent; errors) to stderr.

With ``-g GROUP`` tail is a member of that consumer group (docs/groups.md): the
broker assigns it its share of the partitions, it starts each at the group's
committed offset (``-o beginning|end`` where there is none) and commits what it
printed (periodically, and when it exits).  ``-e`` then exits once every
partition it holds is at its log end.  SIGTERM (like Ctrl-C) makes it commit and
leave the group before exiting, so its partitions move to the others at once.
"""

from __future__ import annotations

import signal
import sys
from typing import Final

import anyio
import click

from client.cli.common import Terminal, client_options, run
from client.cli.offset_spec import (
    Absolute,
    AtTimestamp,
    Beginning,
    End,
    FromEnd,
    OffsetSpec,
    OffsetSpecType,
)
from client.cli.record_format import FormatType
from client.cli.tail_output import (
    PLAIN_FORMAT,
    RAW_FORMAT,
    BytesWriter,
    JsonWriter,
    RecordWriter,
    TerminalWriter,
)
from client.consumer import Consumer
from client.protocol.messages import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
from client.types import TopicPartition

POLL_TIMEOUT_MS: Final = 500

EXAMPLES: Final = """
\b
Examples:
  distributary tail orders                      # new records, until Ctrl-C
  distributary tail orders -o beginning -e      # everything there is, then exit
  distributary tail orders -o -10 -p 0 -f '%o %k=%s\\n'
  distributary tail orders -o @-15m --json | jq -r .value
  distributary tail orders -o @2024-05-01T00:00:00Z -n 1 --raw
  distributary tail orders -g billing -o beginning  # a group member: its share
"""


async def position_consumer(
    consumer: Consumer, partitions: list[TopicPartition], spec: OffsetSpec
) -> None:
    """Seek every partition to where ``spec`` says (clamped into each log)."""
    if isinstance(spec, Beginning):
        await consumer.seek_to_beginning(*partitions)
    elif isinstance(spec, End):
        await consumer.seek_to_end(*partitions)
    elif isinstance(spec, AtTimestamp):
        await consumer.seek_to_timestamp(max(0, spec.timestamp_ms), *partitions)
    else:
        starts = await consumer.list_offsets({tp: EARLIEST_TIMESTAMP for tp in partitions})
        ends = await consumer.list_offsets({tp: LATEST_TIMESTAMP for tp in partitions})
        for tp in partitions:
            if isinstance(spec, Absolute):
                wanted = spec.offset
            else:
                assert isinstance(spec, FromEnd)
                wanted = ends[tp] - spec.count
            consumer.seek(tp, min(max(wanted, starts[tp]), ends[tp]))


async def tail_group(
    consumer: Consumer,
    topic: str,
    writer: RecordWriter,
    count: int | None,
    exit_at_end: bool,
) -> None:
    """Consume ``topic`` as a group member (the consumer commits when it closes)."""
    await consumer.subscribe([topic])
    ends: dict[TopicPartition, int] = {}
    remaining = count
    while True:
        batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
        for tp, records in batches.items():
            if remaining is not None and remaining < len(records):
                # Not printed, so not processed: the group must deliver them again.
                consumer.seek(tp, records[remaining].offset)
                records = records[:remaining]
            if remaining is not None:
                remaining -= len(records)
            if records:
                writer.write_batch(tp.topic, tp.partition, records)
        if remaining == 0:
            return
        if exit_at_end:
            assigned = consumer.assignment()
            new = [tp for tp in assigned if tp not in ends]
            if new:
                ends.update(await consumer.list_offsets({tp: LATEST_TIMESTAMP for tp in new}))
            caught_up = [await consumer.position(tp) >= ends[tp] for tp in sorted(assigned)]
            if assigned and all(caught_up):
                return


def choose_writer(
    format_text: str | None, as_json: bool, raw: bool, null_marker: str | None
) -> RecordWriter:
    null = b"" if null_marker is None else null_marker.encode()
    if as_json:
        return JsonWriter(sys.stdout.buffer)
    if raw:
        return BytesWriter(sys.stdout.buffer, RAW_FORMAT, null=null)
    if format_text is not None:
        return BytesWriter(sys.stdout.buffer, format_text, null=null)
    terminal = Terminal(sys.stdout)
    if terminal.is_terminal:
        return TerminalWriter(terminal.console)
    return BytesWriter(sys.stdout.buffer, PLAIN_FORMAT, null=null)


@click.command(epilog=EXAMPLES)
@click.argument("topic")
@click.option(
    "-o",
    "--offset",
    "offset_spec",
    type=OffsetSpecType(),
    default="end",
    show_default=True,
    help="Start: beginning, end, N, -N, @ISO-TIME, @EPOCH-MS, @-1h ...",
)
@click.option(
    "-p",
    "--partition",
    "partitions",
    type=click.IntRange(min=0),
    multiple=True,
    help="Only this partition (repeatable; default all).",
)
@click.option(
    "-g",
    "--group",
    help="Consume as a member of consumer group GROUP (its share of the partitions, "
    "committed as it goes); -o then says where to start without a commit.",
)
@click.option("-n", "--count", type=click.IntRange(min=1), help="Exit after COUNT records.")
@click.option("-e", "--exit", "exit_at_end", is_flag=True, help="Exit at the end of the log.")
@click.option("-f", "--format", "format_text", type=FormatType(), help="kcat-style format.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (see docs/cli.md).")
@click.option("--raw", is_flag=True, help="Values only, one per line.")
@click.option("--null-marker", metavar="M", help="What %k/%s print for null.")
@client_options
def tail(
    topic: str,
    offset_spec: OffsetSpec,
    partitions: tuple[int, ...],
    group: str | None,
    count: int | None,
    exit_at_end: bool,
    format_text: str | None,
    as_json: bool,
    raw: bool,
    null_marker: str | None,
    bootstrap: str,
    debug: bool,
) -> None:
    """Print TOPIC's records, following new ones until Ctrl-C (or -n / -e)."""
    if sum([format_text is not None, as_json, raw]) > 1:
        raise click.UsageError("choose one of -f/--format, --json and --raw")
    if group is not None and partitions:
        raise click.UsageError("-p cannot be used with -g: the group assigns partitions")
    if group is not None and not isinstance(offset_spec, Beginning | End):
        raise click.UsageError(
            "with -g, -o must be beginning or end (for partitions without a commit)"
        )
    writer = choose_writer(format_text, as_json, raw, null_marker)

    async def group_body() -> None:
        assert group is not None
        async with (
            Consumer(
                bootstrap,
                group=group,
                auto_offset_reset="earliest" if isinstance(offset_spec, Beginning) else "latest",
                client_id="distributary-tail",
            ) as consumer,
            anyio.create_task_group() as tasks,
        ):

            async def stop_on_sigterm() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        tasks.cancel_scope.cancel()  # then the consumer commits and leaves

            tasks.start_soon(stop_on_sigterm)
            await tail_group(consumer, topic, writer, count, exit_at_end)
            tasks.cancel_scope.cancel()

    if group is not None:
        run(group_body, bootstrap=bootstrap, debug=debug, topic=topic)

    async def body() -> None:
        async with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
            if partitions:
                assigned = [TopicPartition(topic, p) for p in sorted(set(partitions))]
                await consumer.assign(assigned)
            else:
                await consumer.assign([topic])
                assigned = sorted(consumer.assignment())
            await position_consumer(consumer, assigned, offset_spec)
            ends: dict[TopicPartition, int] = {}
            if exit_at_end:
                ends = await consumer.list_offsets({tp: LATEST_TIMESTAMP for tp in assigned})
                for tp in assigned:
                    if await consumer.position(tp) >= ends[tp]:
                        del ends[tp]
                if not ends:
                    return
            remaining = count
            while True:
                batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
                for tp, records in batches.items():
                    if exit_at_end:
                        end = ends.get(tp)
                        if end is None:
                            continue
                        if records[-1].offset >= end - 1:
                            records = [r for r in records if r.offset < end]
                            del ends[tp]
                    if remaining is not None:
                        records = records[:remaining]
                        remaining -= len(records)
                    if records:
                        writer.write_batch(tp.topic, tp.partition, records)
                    if remaining == 0:
                        return
                if exit_at_end:
                    for tp in list(ends):
                        if await consumer.position(tp) >= ends[tp]:
                            del ends[tp]
                    if not ends:
                        return

    run(body, bootstrap=bootstrap, debug=debug, topic=topic)
