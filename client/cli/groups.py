"""``distributary groups``: list, describe, reset the offsets of, and delete consumer groups.

Listings are data, so they go to stdout (a table on a terminal, plain columns
when piped, one JSON document with ``--json``); confirmations go to stderr.

``reset-offsets`` works on chosen partitions (``--topic orders:0,2``), on every
topic the group has commits for (``--all-topics``), or on the lines of a file
that ``export-offsets`` wrote (``--from-file``: also how a new group is seeded;
a group that does not exist yet is created by the reset).  It computes each
partition's new offset on the client
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
from client.errors import UnknownGroupError
from client.protocol.messages import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
from client.types import GroupDescription, TopicPartition

DESCRIBE_EXAMPLES: Final = """
\b
Examples:
  distributary groups describe billing
  distributary groups describe billing --json | jq '.partitions[] | .lag'
"""
LIST_EXAMPLES: Final = """
\b
Examples:
  distributary groups list
  distributary groups list --json
"""
EXPORT_EXAMPLES: Final = """
\b
Examples:
  distributary groups export-offsets billing > billing.csv
  distributary groups reset-offsets billing-replay --from-file billing.csv
"""
DELETE_EXAMPLES: Final = """
\b
Examples:
  distributary groups delete billing
"""
RESET_EXAMPLES: Final = """
\b
Examples:
  distributary groups reset-offsets billing --topic orders --to-earliest --dry-run
  distributary groups reset-offsets billing --topic orders --to-datetime 2024-05-01T00:00:00Z
  distributary groups reset-offsets billing --topic orders --shift-by -100
  distributary groups reset-offsets billing --topic orders:0,1 --to-offset 500
  distributary groups reset-offsets billing --all-topics --to-latest
  distributary groups reset-offsets new-group --from-file billing.csv   # seed a new group
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


@groups.command(name="list", epilog=LIST_EXAMPLES)
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@client_options
def list_groups(as_json: bool, bootstrap: str, debug: bool) -> None:
    """List consumer groups with their state and member count."""

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


def parse_topic_partitions(text: str) -> tuple[str, tuple[int, ...]]:
    """``orders`` (every partition) or ``orders:0,2`` (those partitions) ->
    (topic, partitions).  Raises click.BadParameter."""
    topic, colon, listed = text.rpartition(":") if ":" in text else (text, "", "")
    if not colon:
        return text, ()
    try:
        numbers = tuple(int(item) for item in listed.split(","))
    except ValueError:
        raise click.BadParameter(
            f"bad --topic {text!r}: expected TOPIC or TOPIC:P[,P...]", param_hint="--topic"
        ) from None
    if not topic or any(number < 0 for number in numbers):
        raise click.BadParameter(
            f"bad --topic {text!r}: expected TOPIC or TOPIC:P[,P...]", param_hint="--topic"
        )
    return topic, numbers


def read_offsets_file(path: str) -> dict[TopicPartition, int]:
    """``topic,partition,offset`` lines (what export-offsets writes).  Raises
    click.BadParameter naming the first bad line."""
    offsets: dict[TopicPartition, int] = {}
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise click.BadParameter(f"cannot read {path!r}: {error}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        topic, _, rest = line.rpartition(",")
        topic, _, partition = topic.rpartition(",")
        try:
            offsets[TopicPartition(topic, int(partition))] = int(rest)
        except ValueError:
            raise click.BadParameter(
                f"{path}:{number}: expected topic,partition,offset, not {line!r}"
            ) from None
    return offsets


async def _group_members(admin: Admin, group: str) -> int:
    """How many active members ``group`` has (0 for a group that does not exist yet:
    resetting its offsets seeds it)."""
    try:
        description = await admin.describe_group(group)
    except UnknownGroupError:
        return 0
    return len(description.members)


async def _chosen_partitions(
    admin: Admin, group: str, topics: tuple[str, ...], all_topics: bool
) -> list[TopicPartition]:
    """The partitions --topic (with optional partition lists) or --all-topics name."""
    if all_topics:
        committed = await admin.committed_offsets(group)
        names = sorted({tp.topic for tp in committed})
        if not names:
            fail(f"group {group!r} has no committed offsets: name the topics with --topic")
        selected: list[tuple[str, tuple[int, ...]]] = [(name, ()) for name in names]
    else:
        selected = [parse_topic_partitions(text) for text in topics]
    metadata = await admin.cluster_metadata(sorted({name for name, _ in selected}))
    existing = {topic.name: {p.partition for p in topic.partitions} for topic in metadata.topics}
    partitions: list[TopicPartition] = []
    for name, numbers in selected:
        if not existing.get(name):  # absent, or answered with an error and no partitions
            fail(f"unknown topic {name!r}")
        for number in numbers or sorted(existing[name]):
            if number not in existing[name]:
                fail(f"topic {name!r} has no partition {number}")
            partitions.append(TopicPartition(name, number))
    return sorted(set(partitions))


@groups.command(name="reset-offsets", epilog=RESET_EXAMPLES)
@click.argument("group")
@click.option(
    "--topic",
    "topics",
    multiple=True,
    metavar="TOPIC[:P,...]",
    help="Topic, or some of its partitions (topic:0,2); repeatable.",
)
@click.option("--all-topics", is_flag=True, help="Every topic the group has committed offsets for.")
@click.option("--to-earliest", is_flag=True, help="The log start of each partition.")
@click.option("--to-latest", is_flag=True, help="The log end of each partition.")
@click.option("--to-offset", type=int, metavar="N", help="This offset (clamped into each log).")
@click.option(
    "--to-datetime",
    metavar="TIME",
    help="The first record at or after TIME (ISO 8601, epoch ms, -1h; as tail -o @TIME).",
)
@click.option(
    "--shift-by", type=int, metavar="N", help="The committed offset plus N (N may be negative)."
)
@click.option(
    "--from-file",
    metavar="FILE|-",
    help="The offsets in FILE (topic,partition,offset lines, as export-offsets writes).",
)
@click.option("--dry-run", is_flag=True, help="Show the new offsets; change nothing.")
@client_options
def reset_offsets(
    group: str,
    topics: tuple[str, ...],
    all_topics: bool,
    to_earliest: bool,
    to_latest: bool,
    to_offset: int | None,
    to_datetime: str | None,
    shift_by: int | None,
    from_file: str | None,
    dry_run: bool,
    bootstrap: str,
    debug: bool,
) -> None:
    """Set GROUP's committed offsets on the chosen partitions.  Refused while the
    group has active members (stop its consumers first); a group that does not
    exist yet is created with these offsets (seeded)."""
    targets = [to_earliest, to_latest, to_offset is not None, to_datetime is not None]
    targets += [shift_by is not None, from_file is not None]
    if sum(targets) != 1:
        raise click.UsageError(
            "choose one of --to-earliest, --to-latest, --to-offset, --to-datetime, "
            "--shift-by, --from-file"
        )
    if from_file is None and bool(topics) == all_topics:
        raise click.UsageError("choose the partitions: --topic (repeatable) or --all-topics")
    if from_file is not None and (topics or all_topics):
        raise click.UsageError("--from-file names its own partitions: drop --topic/--all-topics")
    timestamp_ms: int | None = None
    try:
        for text in topics:
            parse_topic_partitions(text)
        if to_datetime is not None:
            spec = parse_offset_spec("@" + to_datetime.removeprefix("@"))
            assert isinstance(spec, AtTimestamp)
            timestamp_ms = max(0, spec.timestamp_ms)
        from_lines = None if from_file is None else read_offsets_file(from_file)
    except click.BadParameter as error:
        raise click.UsageError(error.message) from None

    async def body() -> None:
        async with Admin(bootstrap) as admin, Consumer(bootstrap) as consumer:
            members = await _group_members(admin, group)
            if members:
                fail(
                    f"group {group!r} has {members} active member{'s' if members > 1 else ''}; "
                    "stop them before resetting its offsets"
                )
            if from_lines is not None:
                partitions = sorted(from_lines)
            else:
                partitions = await _chosen_partitions(admin, group, topics, all_topics)
            starts = await consumer.list_offsets({tp: EARLIEST_TIMESTAMP for tp in partitions})
            ends = await consumer.list_offsets({tp: LATEST_TIMESTAMP for tp in partitions})
            current = await admin.committed_offsets(group, partitions)
            wanted: dict[TopicPartition, int] = {}
            if from_lines is not None:
                wanted = from_lines
            elif to_earliest:
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
        count = len(new)
        click.echo(f"reset {count} offset{'s' if count != 1 else ''} of group {group!r}", err=True)

    run(body, bootstrap=bootstrap, debug=debug)


@groups.command(name="export-offsets", epilog=EXPORT_EXAMPLES)
@click.argument("group")
@client_options
def export_offsets(group: str, bootstrap: str, debug: bool) -> None:
    """Print GROUP's committed offsets as topic,partition,offset lines (what
    reset-offsets --from-file reads back, e.g. to seed a new group)."""

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            await admin.describe_group(group)  # an unknown group is an error here
            committed = await admin.committed_offsets(group)
        sys.stdout.write(
            "".join(f"{tp.topic},{tp.partition},{committed[tp]}\n" for tp in sorted(committed))
        )

    run(body, bootstrap=bootstrap, debug=debug)


@groups.command(epilog=DELETE_EXAMPLES)
@click.argument("group")
@client_options
def delete(group: str, bootstrap: str, debug: bool) -> None:
    """Delete GROUP and its committed offsets (refused while it has members)."""

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            await admin.delete_groups([group])
        click.echo(f"deleted group {group!r}", err=True)

    run(body, bootstrap=bootstrap, debug=debug)
