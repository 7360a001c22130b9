"""``distributary groups``: list, describe, reset the offsets of, and delete consumer groups.

Listings are data, so they go to stdout (a table on a terminal, plain columns
when piped, one JSON document with ``--json``); confirmations go to stderr.

``reset-offsets`` computes each partition's new offset on the client
(ListOffsets for earliest / latest / a time, the committed offset for
``--shift-by``), clamps it into the partition's ``[log start, log end]``, and
commits the result as an admin commit, which the broker accepts only while the
group has no members (GROUP_NOT_EMPTY otherwise).  ``--dry-run`` shows the plan
and changes nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Final

import click
import msgspec

from client.admin import Admin
from client.cli.common import Terminal, client_options, fail, run
from client.cli.offset_spec import AtTimestamp, parse_offset_spec
from client.consumer import Consumer
from client.protocol.messages import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
from client.types import GroupDescription, TopicPartition

DESCRIBE_EXAMPLES: Final = """
\b
Examples:
  distributary groups describe billing
  distributary groups describe billing --json | jq '.partitions[] | .lag'
"""
RESET_EXAMPLES: Final = """
\b
Examples:
  distributary groups reset-offsets billing --topic orders --to-earliest --dry-run
  distributary groups reset-offsets billing --topic orders --to-datetime 2024-05-01T00:00:00Z
  distributary groups reset-offsets billing --topic orders --shift-by -100
"""


@click.group()
def groups() -> None:
    """List, describe, reset the offsets of, and delete consumer groups."""


def _print_table(
    terminal: Terminal, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]
) -> None:
    if terminal.is_terminal:
        from rich.table import Table

        table = Table(header_style="bold")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        terminal.console.print(table)
        return
    everything = [columns, *rows]
    widths = [max(len(row[number]) for row in everything) for number in range(len(columns))]
    for row in everything:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@groups.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@client_options
def list_groups(as_json: bool, bootstrap: str, debug: bool) -> None:
    """List consumer groups with their state and member count.

    \b
    Examples:
      distributary groups list
      distributary groups list --json
    """

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            listings = await admin.list_groups()
        if as_json:
            data = [
                {"group_id": g.group_id, "state": g.state, "members": g.member_count}
                for g in listings
            ]
            sys.stdout.buffer.write(msgspec.json.encode(data) + b"\n")
            return
        rows = [(g.group_id, g.state, str(g.member_count)) for g in listings]
        if rows:
            _print_table(Terminal(sys.stdout), ("group", "state", "members"), rows)

    run(body, bootstrap=bootstrap, debug=debug)


def _partitions_text(partitions: tuple[TopicPartition, ...]) -> str:
    return ",".join(str(tp) for tp in partitions) or "-"


def _describe_json(description: GroupDescription) -> bytes:
    data = {
        "group_id": description.group_id,
        "state": description.state,
        "group_epoch": description.group_epoch,
        "assignor": description.assignor,
        "members": [
            {
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "client_id": m.client_id,
                "member_epoch": m.member_epoch,
                "state": m.state,
                "subscribed_topics": list(m.subscribed_topics),
                "subscribed_pattern": m.subscribed_pattern,
                "assignment": [str(tp) for tp in m.assignment],
                "revoking": [str(tp) for tp in m.revoking],
            }
            for m in description.members
        ],
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "committed_offset": p.committed_offset,
                "log_end_offset": p.log_end_offset,
                "lag": p.lag,
                "member_id": p.member_id or None,
            }
            for p in description.partitions
        ],
    }
    return msgspec.json.encode(data) + b"\n"


@groups.command(epilog=DESCRIBE_EXAMPLES)
@click.argument("group")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@client_options
def describe(group: str, as_json: bool, bootstrap: str, debug: bool) -> None:
    """Show GROUP's state, members and assignment, and per partition the committed
    offset, log end offset and lag."""

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            description = await admin.describe_group(group)
        if as_json:
            sys.stdout.buffer.write(_describe_json(description))
            return
        terminal = Terminal(sys.stdout)
        click.echo(
            f"group {description.group_id}  state {description.state}  "
            f"epoch {description.group_epoch}  assignor {description.assignor}  "
            f"members {len(description.members)}"
        )
        clients = {m.member_id: m.client_id or m.member_id[:8] for m in description.members}
        if description.members:
            _print_table(
                terminal,
                ("member", "client", "epoch", "state", "assignment", "releasing"),
                [
                    (
                        m.member_id,
                        m.client_id,
                        str(m.member_epoch),
                        m.state,
                        _partitions_text(m.assignment),
                        _partitions_text(m.revoking),
                    )
                    for m in description.members
                ],
            )
        _print_table(
            terminal,
            ("topic", "partition", "committed", "log end", "lag", "member"),
            [
                (
                    p.topic,
                    str(p.partition),
                    "-" if p.committed_offset is None else str(p.committed_offset),
                    str(p.log_end_offset),
                    "-" if p.lag is None else str(p.lag),
                    clients.get(p.member_id, p.member_id) or "-",
                )
                for p in description.partitions
            ],
        )

    run(body, bootstrap=bootstrap, debug=debug)


@groups.command(name="reset-offsets", epilog=RESET_EXAMPLES)
@click.argument("group")
@click.option("--topic", "topics", multiple=True, required=True, help="Topic (repeatable).")
@click.option("--to-earliest", is_flag=True, help="The log start of each partition.")
@click.option("--to-latest", is_flag=True, help="The log end of each partition.")
@click.option("--to-offset", type=int, help="This offset (clamped into each log).")
@click.option("--to-datetime", metavar="ISO", help="The first record at or after this time.")
@click.option("--shift-by", type=int, help="The committed offset plus N (N may be negative).")
@click.option("--dry-run", is_flag=True, help="Show the new offsets; change nothing.")
@client_options
def reset_offsets(
    group: str,
    topics: tuple[str, ...],
    to_earliest: bool,
    to_latest: bool,
    to_offset: int | None,
    to_datetime: str | None,
    shift_by: int | None,
    dry_run: bool,
    bootstrap: str,
    debug: bool,
) -> None:
    """Set GROUP's committed offsets on every partition of the topics.  Refused
    while the group has active members (stop its consumers first)."""
    chosen = [to_earliest, to_latest, to_offset is not None, to_datetime is not None]
    if sum(chosen) + (shift_by is not None) != 1:
        raise click.UsageError(
            "choose one of --to-earliest, --to-latest, --to-offset, --to-datetime, --shift-by"
        )
    timestamp_ms: int | None = None
    if to_datetime is not None:
        spec = parse_offset_spec("@" + to_datetime)
        assert isinstance(spec, AtTimestamp)
        timestamp_ms = max(0, spec.timestamp_ms)

    async def body() -> None:
        async with Admin(bootstrap) as admin, Consumer(bootstrap) as consumer:
            description = await admin.describe_group(group)
            if description.members:
                fail(
                    f"group {group!r} has {len(description.members)} active members; "
                    "stop them before resetting its offsets"
                )
            metadata = await admin.cluster_metadata(list(topics))
            partitions = [
                TopicPartition(topic.name, p.partition)
                for topic in metadata.topics
                for p in topic.partitions
            ]
            missing = set(topics) - {tp.topic for tp in partitions}
            if missing:
                fail(f"unknown topic {sorted(missing)[0]!r}")
            starts = await consumer.list_offsets({tp: EARLIEST_TIMESTAMP for tp in partitions})
            ends = await consumer.list_offsets({tp: LATEST_TIMESTAMP for tp in partitions})
            current = await admin.committed_offsets(group, partitions)
            wanted: dict[TopicPartition, int] = {}
            if to_earliest:
                wanted = dict(starts)
            elif to_latest:
                wanted = dict(ends)
            elif to_offset is not None:
                wanted = {tp: to_offset for tp in partitions}
            elif timestamp_ms is not None:
                found = await consumer.list_offsets({tp: timestamp_ms for tp in partitions})
                wanted = {tp: ends[tp] if offset < 0 else offset for tp, offset in found.items()}
            else:
                assert shift_by is not None
                for tp in partitions:
                    base = current.get(tp)
                    if base is None:
                        fail(f"{tp} has no committed offset to shift")
                    wanted[tp] = base + shift_by
            new = {tp: min(max(offset, starts[tp]), ends[tp]) for tp, offset in wanted.items()}
            _print_table(
                Terminal(sys.stdout),
                ("topic", "partition", "current", "new"),
                [
                    (tp.topic, str(tp.partition), str(current.get(tp, "-")), str(new[tp]))
                    for tp in sorted(new)
                ],
            )
            if dry_run:
                click.echo("dry run: nothing changed", err=True)
                return
            await admin.set_offsets(group, new)
        click.echo(f"reset {len(new)} offsets of group {group!r}", err=True)

    run(body, bootstrap=bootstrap, debug=debug)


@groups.command()
@click.argument("group")
@client_options
def delete(group: str, bootstrap: str, debug: bool) -> None:
    """Delete GROUP and its committed offsets (refused while it has members).

    \b
    Examples:
      distributary groups delete billing
    """

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            await admin.delete_groups([group])
        click.echo(f"deleted group {group!r}", err=True)

    run(body, bootstrap=bootstrap, debug=debug)
