"""``distributary tail``: print topics' records, following the log by default.

The consumer (client.Consumer, no group) is assigned the chosen partitions of
every named topic (``-r``: every topic whose name matches one of the patterns,
resolved when tail starts) and positioned by the start of the ``-o`` range
(offset_spec.py).  Records arrive from ``getmany`` as per-partition lists; each
list goes to a writer in one call (tail_output.py): compiled format bytes, JSON
lines, or coloured terminal lines.

Where to stop is per partition (:class:`StopBounds`): the end of the ``-o``
range (``:end``, ``:N``, ``:+N``, ``:@TIME``), or with ``-e`` the log end as it
is when tail starts.  A partition that reached its bound is paused; tail exits
once every partition did (or after ``-n`` records in all).  Data goes to stdout,
errors to stderr.

Following (no ``-e``, no range end, no ``-n``) goes on through broker outages:
the consumer reconnects with backoff for as long as tail runs, positions kept
(a group member rejoins), and tail says once on stderr that the broker is
unreachable and why, and once that it is back (:class:`Outage`).  With ``-e``,
``-n`` or a range end, an outage that outlasts the consumer's reconnect attempts
(about ten seconds) ends tail with the error, as a command that must finish.

With ``-g GROUP`` tail is a member of that consumer group (docs/groups.md): the
broker assigns it its share of the partitions (a ``-r`` subscription follows
topics created later), it starts each at the group's committed offset (``-o
beginning|end`` where there is none) and commits what it printed (periodically,
and when it exits; never with ``--no-commit``).  Records it did not print (past
``-n`` or a bound) are not committed.  SIGTERM (like Ctrl-C) makes it commit and
leave the group before exiting, so its partitions move to the others at once.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

import anyio
import click

from client.admin import Admin
from client.cli.common import Terminal, client_options, run
from client.cli.offset_spec import (
    Absolute,
    AtTimestamp,
    Beginning,
    End,
    FromEnd,
    OffsetRange,
    OffsetRangeType,
    OffsetSpec,
    StopAtEnd,
    StopAtOffset,
    StopAtTimestamp,
    StopSpec,
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
from client.cli.tail_watch import clamp_start, watch_deletions
from client.consumer import Consumer
from client.errors import DistributaryError, UnknownTopicOrPartitionError
from client.protocol.messages import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
from client.types import TopicPartition

POLL_TIMEOUT_MS: Final = 500

EXAMPLES: Final = """
\b
Format tokens (-f):
  %t topic  %p partition  %o offset  %T timestamp (ms)  %k key  %s value
  %K key length  %S value length  %h headers  %% percent sign
  %T{iso}  %T{%Y-%m-%d %H:%M:%S} (UTC)  %k{hex}  %s{hex}  %k{base64}  %s{base64}
  escapes: \\n \\t \\r \\\\

\b
Examples:
  distributary tail orders                      # new records, until Ctrl-C
  distributary tail orders -o beginning -e      # everything there is, then exit
  distributary tail orders -o -10 -p 0 -f '%o %k=%s\\n'
  distributary tail orders -o @-15m --json | jq -r .value
  distributary tail orders -o @2024-05-01T00:00:00Z -n 1 --raw
  distributary tail orders -o 100:200           # offsets 100 to 199, then exit
  distributary tail orders -o @-2h:@-1h -f '%T{iso} %s\\n'
  distributary tail orders payments -f '%t %p:%o %s{hex}\\n'
  distributary tail -r 'orders\\..*' -o beginning -e
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
                wanted = clamp_start(tp, spec.offset, starts[tp], ends[tp])
            else:
                assert isinstance(spec, FromEnd)
                wanted = ends[tp] - spec.count
            consumer.seek(tp, min(max(wanted, starts[tp]), ends[tp]))


class StopBounds:
    """Where each partition stops (the ``-o`` range's end, or ``-e``), and which did."""

    def __init__(self, stop: StopSpec | None) -> None:
        self.stop = stop
        self._offsets: dict[TopicPartition, int] = {}  # stop before this offset
        self.resolved: set[TopicPartition] = set()
        self.done: set[TopicPartition] = set()

    async def resolve(
        self,
        consumer: Consumer,
        partitions: Sequence[TopicPartition],
        starts: Mapping[TopicPartition, int],
    ) -> None:
        """Fix the bound of partitions seen for the first time, from where each starts
        (``starts``: the first offset just fetched; else the consumer's position);
        those already at their bound are done (and paused)."""
        new = [tp for tp in partitions if tp not in self.resolved]
        self.resolved.update(new)
        if not new or self.stop is None or isinstance(self.stop, StopAtTimestamp):
            return
        begins = {tp: starts[tp] if tp in starts else await consumer.position(tp) for tp in new}
        if isinstance(self.stop, StopAtEnd):
            self._offsets.update(await consumer.list_offsets({tp: LATEST_TIMESTAMP for tp in new}))
        elif isinstance(self.stop, StopAtOffset):
            self._offsets.update({tp: self.stop.offset for tp in new})
        else:
            self._offsets.update({tp: begins[tp] + self.stop.count for tp in new})
        for tp in new:
            if begins[tp] >= self._offsets[tp]:
                self._finish(consumer, tp)

    def cut(self, consumer: Consumer, tp: TopicPartition, records: list[Any]) -> list[Any]:
        """The records before ``tp``'s bound; reaching it finishes the partition."""
        stop = self.stop
        if stop is None or not records:
            return records
        if tp in self.done:
            return []
        if isinstance(stop, StopAtTimestamp):
            for index, record in enumerate(records):
                if record.timestamp_ms >= stop.timestamp_ms:
                    self._finish(consumer, tp)
                    return records[:index]
            return records
        bound = self._offsets[tp]
        if records[-1].offset < bound - 1:
            return records
        self._finish(consumer, tp)
        return [record for record in records if record.offset < bound]

    def _finish(self, consumer: Consumer, tp: TopicPartition) -> None:
        self.done.add(tp)
        consumer.pause(tp)

    def all_done(self, assigned: set[TopicPartition]) -> bool:
        return self.stop is not None and bool(assigned) and assigned <= self.done


class Outage:
    """What a follower says about the broker on stderr: once that it is unreachable
    (when fetching has failed on two polls in a row, so a reconnect that succeeds
    at once says nothing), and once that it is back."""

    def __init__(self) -> None:
        self.failing_polls = 0
        self.said_unreachable = False

    def check(self, error: DistributaryError | None) -> None:
        """``error``: the consumer's ``fetch_error`` after a poll."""
        if error is None:
            self.failing_polls = 0
            if self.said_unreachable:
                self.said_unreachable = False
                click.echo("broker reachable again: following on", err=True)
            return
        self.failing_polls += 1
        if self.failing_polls >= 2 and not self.said_unreachable:
            self.said_unreachable = True
            reason = str(error)
            if not reason.startswith("broker unreachable"):
                reason = f"broker unreachable: {reason}"
            click.echo(f"{reason}; retrying until it is back", err=True)


async def consume(
    consumer: Consumer,
    writer: RecordWriter,
    bounds: StopBounds,
    count: int | None,
) -> None:
    """Print records until every partition reached its bound or ``count`` records
    were printed; records fetched but not printed are sought back to, so a group
    does not commit them."""
    remaining = count
    outage = Outage() if bounds.stop is None and count is None else None
    while True:
        try:
            batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
        except DistributaryError as error:
            if outage is None or not error.retriable:
                raise
            batches = {}  # following: the consumer keeps trying; say so once
        if outage is not None:
            outage.check(consumer.fetch_error)
        assigned = consumer.assignment()
        starts = {tp: fetched[0].offset for tp, fetched in batches.items() if fetched}
        await bounds.resolve(consumer, sorted(assigned), starts)
        for tp, fetched in batches.items():
            records = bounds.cut(consumer, tp, fetched)
            if remaining is not None:
                records = records[:remaining]
                remaining -= len(records)
            if len(records) < len(fetched) and tp in assigned:
                consumer.seek(tp, fetched[len(records)].offset)  # not printed: not consumed
            if records:
                writer.write_batch(tp.topic, tp.partition, records)
            if remaining == 0:
                return
        if bounds.all_done(assigned):
            return


async def matching_topics(bootstrap: str, patterns: Sequence[str]) -> list[str]:
    """Every (non-internal) topic whose whole name matches one of ``patterns``.
    Raises UnknownTopicOrPartitionError when none does."""
    compiled = [re.compile(pattern) for pattern in patterns]
    async with Admin(bootstrap) as admin:
        names = await admin.list_topics()
    matched = [name for name in names if any(p.fullmatch(name) for p in compiled)]
    if not matched:
        raise UnknownTopicOrPartitionError(
            f"no topic matches {' or '.join(repr(p) for p in patterns)}"
        )
    return matched


def check_patterns(patterns: Sequence[str]) -> None:
    """Raises click.BadParameter for a pattern that is not a regular expression."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise click.BadParameter(
                f"{pattern!r} is not a regular expression ({error})", param_hint="TOPIC"
            ) from None


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
@click.argument("topics", metavar="TOPIC...", nargs=-1, required=True)
@click.option(
    "-r",
    "--regex",
    is_flag=True,
    help="Each TOPIC is a regular expression matched against whole topic names.",
)
@click.option(
    "-o",
    "--offset",
    "offset_range",
    type=OffsetRangeType(),
    default="end",
    show_default=True,
    metavar="START[:END]",
    help="Start: beginning, end, N, -N, @ISO-TIME, @EPOCH-MS, @-1h ...; "
    "stop (optional): :end, :N, :+N, :@TIME.",
)
@click.option(
    "-p",
    "--partition",
    "partitions",
    type=click.IntRange(min=0),
    multiple=True,
    metavar="N",
    help="Only this partition of each topic (repeatable; default all).",
)
@click.option(
    "-g",
    "--group",
    metavar="GROUP",
    help="Consume as a member of consumer group GROUP (its share of the partitions, "
    "committed as it goes); -o then says where to start without a commit.",
)
@click.option(
    "--no-commit",
    is_flag=True,
    help="With -g: never commit offsets (read the group's position without moving it).",
)
@click.option(
    "-n", "--count", type=click.IntRange(min=1), metavar="N", help="Exit after N records."
)
@click.option(
    "-e", "--exit", "exit_at_end", is_flag=True, help="Exit at the end of the log (-o START:end)."
)
@click.option(
    "-f",
    "--format",
    "format_text",
    type=FormatType(),
    metavar="FORMAT",
    help="kcat-style format (tokens below).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines (see docs/cli.md).")
@click.option("--raw", is_flag=True, help="Values only, one per line.")
@click.option("--null-marker", metavar="M", help="What %k/%s print for null.")
@client_options
def tail(
    topics: tuple[str, ...],
    regex: bool,
    offset_range: OffsetRange,
    partitions: tuple[int, ...],
    group: str | None,
    no_commit: bool,
    count: int | None,
    exit_at_end: bool,
    format_text: str | None,
    as_json: bool,
    raw: bool,
    null_marker: str | None,
    bootstrap: str,
    debug: bool,
) -> None:
    """Print the records of TOPIC... (one or more), following new ones until Ctrl-C
    (or -n, -e, or the end of an -o range)."""
    offset_spec: OffsetSpec = offset_range.start
    stop = offset_range.stop
    if sum([format_text is not None, as_json, raw]) > 1:
        raise click.UsageError("choose one of -f/--format, --json and --raw")
    if exit_at_end and stop is not None:
        raise click.UsageError("-e cannot be combined with an -o range's end: use one of them")
    if exit_at_end:
        stop = StopAtEnd()
    if group is None and no_commit:
        raise click.UsageError("--no-commit needs -g: without a group nothing is committed")
    if group is not None and partitions:
        raise click.UsageError("-p cannot be used with -g: the group assigns partitions")
    if group is not None and not isinstance(offset_spec, Beginning | End):
        raise click.UsageError(
            "with -g, -o must start at beginning or end (for partitions without a commit)"
        )
    if regex:
        check_patterns(topics)
    writer = choose_writer(format_text, as_json, raw, null_marker)
    bounds = StopBounds(stop)
    topic_hint = topics[0] if len(topics) == 1 and not regex else None

    async def group_body() -> None:
        assert group is not None
        async with (
            Consumer(
                bootstrap,
                group=group,
                auto_offset_reset="earliest" if isinstance(offset_spec, Beginning) else "latest",
                enable_auto_commit=not no_commit,
                client_id="distributary-tail",
            ) as consumer,
            anyio.create_task_group() as tasks,
        ):

            async def stop_on_sigterm() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        tasks.cancel_scope.cancel()  # then the consumer commits and leaves

            tasks.start_soon(stop_on_sigterm)
            if regex:
                await consumer.subscribe(pattern="|".join(f"(?:{p})" for p in topics))
            else:
                await consumer.subscribe(list(topics))
            await consume(consumer, writer, bounds, count)
            tasks.cancel_scope.cancel()

    if group is not None:
        run(group_body, bootstrap=bootstrap, debug=debug, topic=topic_hint)

    async def body() -> None:
        names = await matching_topics(bootstrap, topics) if regex else list(dict.fromkeys(topics))
        async with (
            Consumer(bootstrap, auto_offset_reset="earliest") as consumer,
            watch_deletions(bootstrap, names),
        ):
            if partitions:
                chosen = sorted(set(partitions))
                await consumer.assign([TopicPartition(t, p) for t in names for p in chosen])
            else:
                await consumer.assign(names)
            assigned = sorted(consumer.assignment())
            await position_consumer(consumer, assigned, offset_spec)
            await bounds.resolve(consumer, assigned, {})
            if bounds.all_done(set(assigned)):
                return
            await consume(consumer, writer, bounds, count)

    run(body, bootstrap=bootstrap, debug=debug, topic=topic_hint)
