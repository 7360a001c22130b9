"""``distributary topics``: create, list, describe, alter and delete topics (client.Admin).

Listings are data, so they go to stdout (a table on a terminal, plain columns
when piped, one JSON document with ``--json``); confirmations go to stderr.
"""

from __future__ import annotations

import sys
from typing import Final

import click
import msgspec

from client.admin import Admin
from client.cli.common import Terminal, client_options, format_bytes, run
from client.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError
from client.types import TopicDescription

CREATE_EXAMPLES: Final = """
\b
Examples:
  distributary topics create orders
  distributary topics create orders --partitions 6 --config retention.ms=604800000
"""
LIST_EXAMPLES: Final = """
\b
Examples:
  distributary topics list
  distributary topics list --json
"""
DELETE_EXAMPLES: Final = """
\b
Examples:
  distributary topics delete orders
  distributary topics delete scratch --if-exists
"""
ALTER_CONFIG_EXAMPLES: Final = """
\b
Examples:
  distributary topics alter-config orders -c retention.ms=86400000
  distributary topics alter-config orders -c batch_bytes_max=33554432 -c segment.bytes=default
"""
ADD_PARTITIONS_EXAMPLES: Final = """
\b
Examples:
  distributary topics add-partitions orders --partitions 12
"""
DESCRIBE_EXAMPLES: Final = """
\b
Examples:
  distributary topics describe orders
  distributary topics describe orders --json | jq '.partitions[].log_end_offset'
"""


def _parse_configs(items: tuple[str, ...]) -> dict[str, str]:
    configs: dict[str, str] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise click.UsageError(f"bad --config {item!r}: expected key=value")
        configs[key] = value
    return configs


@click.group()
def topics() -> None:
    """Create, list, describe and delete topics."""


@topics.command(epilog=CREATE_EXAMPLES)
@click.argument("name")
@click.option(
    "-p",
    "--partitions",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Number of partitions.",
)
@click.option(
    "-c",
    "--config",
    "configs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Topic config (repeatable), e.g. retention.ms=86400000.",
)
@click.option("--if-not-exists", is_flag=True, help="An existing topic is not an error.")
@client_options
def create(
    name: str,
    partitions: int,
    configs: tuple[str, ...],
    if_not_exists: bool,
    bootstrap: str,
    debug: bool,
) -> None:
    """Create topic NAME."""
    config_map = _parse_configs(configs)

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            try:
                await admin.create_topic(name, partitions, configs=config_map)
            except TopicAlreadyExistsError:
                if not if_not_exists:
                    raise
                click.echo(f"topic {name!r} already exists", err=True)
                return
        plural = "partition" if partitions == 1 else "partitions"
        click.echo(f"created topic {name!r} with {partitions} {plural}", err=True)

    run(body, bootstrap=bootstrap, debug=debug, topic=name)


@topics.command(name="list", epilog=LIST_EXAMPLES)
@click.option("--internal", is_flag=True, help="Include internal topics.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of names.")
@client_options
def list_topics(internal: bool, as_json: bool, bootstrap: str, debug: bool) -> None:
    """List topic names, one per line."""

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            names = await admin.list_topics(internal=internal)
        if as_json:
            sys.stdout.buffer.write(msgspec.json.encode(names) + b"\n")
        elif names:
            click.echo("\n".join(names))

    run(body, bootstrap=bootstrap, debug=debug)


class _PartitionJson(msgspec.Struct):
    partition: int
    leader: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int
    size_bytes: int
    segment_count: int


class _TopicJson(msgspec.Struct):
    name: str
    internal: bool
    configs: dict[str, str]
    partitions: list[_PartitionJson]


def _to_json(description: TopicDescription) -> _TopicJson:
    return _TopicJson(
        description.name,
        description.internal,
        description.configs,
        [_PartitionJson(*partition) for partition in description.partitions],
    )


_COLUMNS: Final = (
    "partition",
    "leader",
    "log start",
    "log end",
    "high watermark",
    "size",
    "segments",
)


def _rows(description: TopicDescription) -> list[tuple[str, ...]]:
    return [
        (
            str(p.partition),
            str(p.leader),
            str(p.log_start_offset),
            str(p.log_end_offset),
            str(p.high_watermark),
            format_bytes(p.size_bytes),
            str(p.segment_count),
        )
        for p in description.partitions
    ]


def _print_plain(description: TopicDescription) -> None:
    total = sum(p.size_bytes for p in description.partitions)
    click.echo(
        f"topic {description.name}  partitions {len(description.partitions)}  "
        f"size {format_bytes(total)}  internal {'yes' if description.internal else 'no'}"
    )
    click.echo("config" + ("" if description.configs else " (defaults)"))
    for key, value in sorted(description.configs.items()):
        click.echo(f"  {key} = {value}")
    rows = [_COLUMNS, *_rows(description)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _print_rich(terminal: Terminal, description: TopicDescription) -> None:
    from rich.table import Table

    total = sum(p.size_bytes for p in description.partitions)
    console = terminal.console
    console.print(
        f"[bold]{description.name}[/bold]  {len(description.partitions)} partitions, "
        f"{format_bytes(total)} on disk"
        + ("  [yellow](internal)[/yellow]" if description.internal else "")
    )
    if description.configs:
        config = Table(show_header=True, header_style="bold", box=None)
        config.add_column("config")
        config.add_column("value")
        for key, value in sorted(description.configs.items()):
            config.add_row(key, value)
        console.print(config)
    table = Table(header_style="bold")
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column == "size" else "right")
    for row in _rows(description):
        table.add_row(*row)
    console.print(table)


@topics.command(epilog=DESCRIBE_EXAMPLES)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@client_options
def describe(name: str, as_json: bool, bootstrap: str, debug: bool) -> None:
    """Show NAME's partitions (leader, log start/end offsets, size on disk) and config."""

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            descriptions = await admin.describe_topics([name])
        if not descriptions:
            raise UnknownTopicOrPartitionError(name)
        description = descriptions[0]
        if as_json:
            sys.stdout.buffer.write(msgspec.json.encode(_to_json(description)) + b"\n")
            return
        terminal = Terminal(sys.stdout)
        if terminal.is_terminal:
            _print_rich(terminal, description)
        else:
            _print_plain(description)

    run(body, bootstrap=bootstrap, debug=debug, topic=name)


@topics.command(epilog=DELETE_EXAMPLES)
@click.argument("name")
@click.option("--if-exists", is_flag=True, help="A missing topic is not an error.")
@client_options
def delete(name: str, if_exists: bool, bootstrap: str, debug: bool) -> None:
    """Delete topic NAME and all its records."""

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            try:
                await admin.delete_topics([name])
            except UnknownTopicOrPartitionError:
                if not if_exists:
                    raise
                click.echo(f"topic {name!r} does not exist", err=True)
                return
        click.echo(f"deleted topic {name!r}", err=True)

    run(body, bootstrap=bootstrap, debug=debug, topic=name)


@topics.command(name="alter-config", epilog=ALTER_CONFIG_EXAMPLES)
@click.argument("name")
@click.option(
    "-c",
    "--config",
    "configs",
    multiple=True,
    required=True,
    metavar="KEY=VALUE",
    help="A topic config to set; VALUE 'default' removes the override.",
)
@click.option("--dry-run", is_flag=True, help="Validate on the broker, change nothing.")
@client_options
def alter_config(
    name: str, configs: tuple[str, ...], dry_run: bool, bootstrap: str, debug: bool
) -> None:
    """Change topic NAME's configs (the keys named; the others keep their value)."""
    config_map = _parse_configs(configs)

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            await admin.alter_topic_configs(name, config_map, validate_only=dry_run)
        changes = ", ".join(f"{key}={value}" for key, value in config_map.items())
        verb = "would set" if dry_run else "set"
        click.echo(f"topic {name!r}: {verb} {changes}", err=True)

    run(body, bootstrap=bootstrap, debug=debug, topic=name)


@topics.command(name="add-partitions", epilog=ADD_PARTITIONS_EXAMPLES)
@click.argument("name")
@click.option(
    "-p",
    "--partitions",
    "count",
    type=click.IntRange(min=1),
    required=True,
    metavar="N",
    help="The new total number of partitions (more than today).",
)
@click.option("--dry-run", is_flag=True, help="Validate on the broker, change nothing.")
@client_options
def add_partitions(name: str, count: int, dry_run: bool, bootstrap: str, debug: bool) -> None:
    """Raise topic NAME's partition count to N (partitions are never removed)."""

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            await admin.create_partitions(name, count, validate_only=dry_run)
        verb = "would now have" if dry_run else "now has"
        click.echo(f"topic {name!r} {verb} {count} partitions", err=True)

    run(body, bootstrap=bootstrap, debug=debug, topic=name)
