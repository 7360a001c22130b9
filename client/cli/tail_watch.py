"""What ``distributary tail`` watches besides records: its topics being deleted,
and start offsets outside a log.

A consumer that is not in a group cannot tell a deleted topic from a slow one
(its fetches fail as "unknown topic" and are retried), and when a topic of the
same name is created again it goes on reading the new one as if nothing had
happened.  :func:`watch_deletions` runs next to the consumer: every
``WATCH_INTERVAL_MS`` it describes the tailed topics (one DescribeTopics
request) and stops tail, with a line on stderr and exit status 1, when one is
gone, or when a partition's log end offset went backwards or the topic has
fewer partitions than before (it was deleted and created again between two
looks).  Connection trouble is not a deletion: the watcher looks again later;
nor is a topic it never saw (tail reports an unknown topic itself).

:func:`clamp_start` is the other note: an ``-o`` offset before the log start or
past its end starts at the nearest end, and says so on stderr.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Final

import anyio
import click

from client.admin import Admin
from client.cli.common import CommandError
from client.errors import DistributaryError, UnknownTopicOrPartitionError
from client.types import TopicDescription, TopicPartition

# How often the tailed topics are described (1 s): a deletion is noticed about
# this late, at the cost of one small request per second per tail.
WATCH_INTERVAL_MS: Final = 1_000


class TopicDeletedError(CommandError):
    """A tailed topic was deleted (or deleted and created again)."""


def changed(before: TopicDescription, now: TopicDescription) -> str | None:
    """Why ``now`` cannot be the topic ``before`` described, or None when it can."""
    if len(now.partitions) < len(before.partitions):
        return (
            f"has {len(now.partitions)} partitions, fewer than {len(before.partitions)}: "
            "it was deleted and created again"
        )
    for old, new in zip(before.partitions, now.partitions):
        if new.log_end_offset < old.log_end_offset:
            return (
                f"partition {new.partition} ends at offset {new.log_end_offset}, before "
                f"{old.log_end_offset}: it was deleted and created again"
            )
    return None


async def _watch(admin: Admin, topics: Sequence[str]) -> None:
    """Raises TopicDeletedError once a topic is gone or replaced."""
    seen: dict[str, TopicDescription] = {}
    while True:  # until a deletion is seen (or tail ends and cancels it)
        try:
            descriptions = await admin.describe_topics(topics)
        except UnknownTopicOrPartitionError as error:
            missing = [name for name in topics if repr(name) in str(error)] or list(topics)
            if missing[0] in seen:
                raise TopicDeletedError(f"topic {missing[0]!r} was deleted") from None
            # Never seen: tail itself reports an unknown topic.
            descriptions = []
        except DistributaryError as error:
            if not error.retriable:
                raise
            descriptions = []  # the broker is away: look again later
        for description in descriptions:
            before = seen.get(description.name)
            reason = None if before is None else changed(before, description)
            if reason is not None:
                raise TopicDeletedError(f"topic {description.name!r} {reason}")
            seen[description.name] = description
        await anyio.sleep(WATCH_INTERVAL_MS / 1000)


@contextlib.asynccontextmanager
async def watch_deletions(bootstrap: str, topics: Sequence[str]) -> AsyncIterator[None]:
    """Run the body while watching ``topics``; a deletion cancels the body and
    raises TopicDeletedError (the CLI prints it as one line and exits 1)."""
    async with Admin(bootstrap) as admin, anyio.create_task_group() as tasks:
        tasks.start_soon(_watch, admin, list(topics))
        yield
        tasks.cancel_scope.cancel()


def clamp_start(tp: TopicPartition, wanted: int, start: int, end: int) -> int:
    """``wanted`` moved into [start, end]; a move is told on stderr."""
    if wanted > end:
        click.echo(
            f"{tp.topic}/{tp.partition}: offset {wanted} is past the end; starting at {end}",
            err=True,
        )
        return end
    if wanted < start:
        click.echo(
            f"{tp.topic}/{tp.partition}: offset {wanted} is before the log start; "
            f"starting at {start}",
            err=True,
        )
        return start
    return wanted
