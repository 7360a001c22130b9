"""``distributary cluster describe``: the brokers, the controller, and how many
partitions each broker leads and holds replicas of (client.Admin, from one
Metadata request).

Like the other listings, the data goes to stdout (a table on a terminal, plain
columns when piped, one JSON document with ``--json``).  Partition counts
include internal topics (``__consumer_offsets``), which brokers lead too; a
partition with no leader (-1) is counted under ``leaderless``.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Final

import click
import msgspec

from client.admin import Admin
from client.cli.common import Terminal, client_options, run
from client.errors import ErrorCode
from client.types import ClusterMetadata

DESCRIBE_EXAMPLES: Final = """
\b
Examples:
  distributary cluster describe
  distributary cluster describe --json | jq '.brokers[] | select(.controller)'
"""

_COLUMNS: Final = ("node", "address", "controller", "leads", "replicas")


class BrokerJson(msgspec.Struct):
    node_id: int
    host: str
    port: int
    controller: bool
    partitions_led: int
    replicas: int


class ClusterJson(msgspec.Struct):
    cluster_id: str
    controller_id: int
    brokers: list[BrokerJson]
    topics: int
    partitions: int
    leaderless_partitions: int


def summarize(metadata: ClusterMetadata) -> ClusterJson:
    """Per broker: partitions led and replicas held; totals over every topic."""
    led: Counter[int] = Counter()
    held: Counter[int] = Counter()
    partitions = 0
    for topic in metadata.topics:
        for partition in topic.partitions:
            partitions += 1
            led[partition.leader] += 1
            held.update(partition.replicas)
    brokers = [
        BrokerJson(
            broker.node_id,
            broker.host,
            broker.port,
            broker.node_id == metadata.controller_id,
            led[broker.node_id],
            held[broker.node_id],
        )
        for broker in sorted(metadata.brokers, key=lambda broker: broker.node_id)
    ]
    return ClusterJson(
        metadata.cluster_id,
        metadata.controller_id,
        brokers,
        len(metadata.topics),
        partitions,
        led[-1],
    )


def _rows(summary: ClusterJson) -> list[tuple[str, ...]]:
    return [
        (
            str(broker.node_id),
            f"{broker.host}:{broker.port}",
            "yes" if broker.controller else "",
            str(broker.partitions_led),
            str(broker.replicas),
        )
        for broker in summary.brokers
    ]


def _headline(summary: ClusterJson) -> str:
    brokers = len(summary.brokers)
    text = (
        f"cluster {summary.cluster_id}  {brokers} broker{'' if brokers == 1 else 's'}  "
        f"controller {summary.controller_id}  {summary.topics} "
        f"topic{'' if summary.topics == 1 else 's'}  {summary.partitions} "
        f"partition{'' if summary.partitions == 1 else 's'}"
    )
    if summary.leaderless_partitions:
        text += f"  leaderless {summary.leaderless_partitions}"
    return text


def _print_plain(summary: ClusterJson) -> None:
    click.echo(_headline(summary))
    rows = [_COLUMNS, *_rows(summary)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _print_rich(terminal: Terminal, summary: ClusterJson) -> None:
    from rich.table import Table

    terminal.console.print(_headline(summary))
    table = Table(header_style="bold")
    for column in _COLUMNS:
        table.add_column(column, justify="right" if column in ("leads", "replicas") else "left")
    for row in _rows(summary):
        table.add_row(*row)
    terminal.console.print(table)


@click.group()
def cluster() -> None:
    """Describe the cluster: brokers, controller, partition leadership."""


@cluster.command(epilog=DESCRIBE_EXAMPLES)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@client_options
def describe(as_json: bool, bootstrap: str, debug: bool) -> None:
    """List the brokers with the controller and the partitions each one leads."""

    async def body() -> None:
        async with Admin(bootstrap) as admin:
            metadata = await admin.cluster_metadata()
        summary = summarize(metadata)
        if as_json:
            sys.stdout.buffer.write(msgspec.json.encode(summary) + b"\n")
            return
        terminal = Terminal(sys.stdout)
        if terminal.is_terminal:
            _print_rich(terminal, summary)
        else:
            _print_plain(summary)

    run(body, bootstrap=bootstrap, debug=debug)


ELECT_EXAMPLES: Final = """
\b
Examples:
  distributary cluster elect-leaders
  distributary cluster elect-leaders --topic orders --partition 3
  distributary cluster elect-leaders --json
"""


class ElectionJson(msgspec.Struct):
    topic: str
    partition: int
    leader: int
    moved: bool
    error: str | None


class ElectionsJson(msgspec.Struct):
    partitions: list[ElectionJson]


@cluster.command("elect-leaders", epilog=ELECT_EXAMPLES)
@click.option("--topic", default=None, help="Only this topic's partitions.")
@click.option("--partition", type=int, default=None, help="Only this partition (needs --topic).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: every partition asked for.")
@client_options
def elect_leaders(
    topic: str | None, partition: int | None, as_json: bool, bootstrap: str, debug: bool
) -> None:
    """Move leadership back to each partition's preferred replica (its first) now.

    The controller does this by itself a few seconds after a preferred replica is
    back in sync; this asks for it at once.  Prints one line per partition whose
    leader changed (with --json, every partition asked for, with why it did not
    move)."""
    if partition is not None and topic is None:
        raise click.UsageError("--partition needs --topic")

    async def body() -> None:
        wanted = None if topic is None else [(topic, partition)]
        async with Admin(bootstrap) as admin:
            results = await admin.elect_leaders(wanted)
        if as_json:
            document = ElectionsJson(
                [
                    ElectionJson(
                        result.topic,
                        result.partition,
                        result.leader,
                        result.error is None,
                        None if result.error is None else result.error.message,
                    )
                    for result in results
                ]
            )
            sys.stdout.buffer.write(msgspec.json.encode(document) + b"\n")
            return
        moved = [result for result in results if result.error is None]
        for result in moved:
            click.echo(f"{result.topic}/{result.partition} leader {result.leader}")
        unknown = [
            r
            for r in results
            if r.error is not None and r.error.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        ]
        for result in unknown:
            click.echo(f"{result.topic}/{result.partition}: unknown", err=True)
        if not moved:
            click.echo("no leader changed", err=True)

    run(body, bootstrap=bootstrap, debug=debug)
