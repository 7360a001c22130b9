"""A consumer-group member as its own process, for the integration tests.

    python tests/integration/group_consumer.py --bootstrap HOST:PORT --group G --topic T
        [--session-timeout-ms N] [--heartbeat-interval-ms N] [--assignor range|sticky]
        [--instance-id ID] [--offset-reset earliest|latest] [--no-commit]

It joins the group, consumes, and prints one JSON object per line on stdout
(flushed at once), in this order for each batch: the records, then the commit
that covers them (it commits after every batch, as an application that
processed them would).  Lines:

    {"event": "ready", "member_id": "..."}
    {"event": "assigned", "partitions": ["t-0", ...], "at": <monotonic s>}
    {"event": "revoked", "partitions": [...], "at": ...}
    {"event": "lost", "partitions": [...], "at": ...}
    {"event": "records", "partition": "t-0", "offsets": [..], "at": ...}
    {"event": "committed", "offsets": {"t-0": 12, ...}}
    {"event": "closed"}

SIGTERM closes it gracefully (commit, leave the group); SIGKILL is the crash.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from client import Consumer, DistributaryError, TopicPartition


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def names(partitions: set[TopicPartition]) -> list[str]:
    return sorted(str(tp) for tp in partitions)


async def main(arguments: argparse.Namespace) -> None:
    consumer = Consumer(
        arguments.bootstrap,
        group=arguments.group,
        client_id=arguments.client_id,
        auto_offset_reset=arguments.offset_reset,
        session_timeout_ms=arguments.session_timeout_ms,
        heartbeat_interval_ms=arguments.heartbeat_interval_ms,
        assignor=arguments.assignor,
        instance_id=arguments.instance_id,
        on_assign=lambda tps: emit("assigned", partitions=names(tps), at=time.monotonic()),
        on_revoke=lambda tps: emit("revoked", partitions=names(tps), at=time.monotonic()),
        on_lost=lambda tps: emit("lost", partitions=names(tps), at=time.monotonic()),
    )
    async with consumer, anyio.create_task_group() as tasks:

        async def stop_on_sigterm() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    tasks.cancel_scope.cancel()

        tasks.start_soon(stop_on_sigterm)
        await consumer.subscribe([arguments.topic])
        emit("ready", member_id=consumer.member_id)
        while True:  # until SIGTERM / SIGKILL
            batches = await consumer.getmany(timeout_ms=200)
            if not batches:
                continue
            for tp, records in batches.items():
                emit(
                    "records",
                    partition=str(tp),
                    offsets=[r.offset for r in records],
                    at=time.monotonic(),
                )
            if arguments.commit:
                positions = {tp: records[-1].offset + 1 for tp, records in batches.items()}
                try:
                    await consumer.commit(positions)
                except DistributaryError as error:
                    emit("commit_failed", error=type(error).__name__)
                    continue
                emit("committed", offsets={str(tp): o for tp, o in positions.items()})
    emit("closed")


if __name__ == "__main__":
    # The SDK's log lines go to stderr: stdout carries only the JSON events.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--client-id", default="group-consumer")
    parser.add_argument("--session-timeout-ms", type=int)
    parser.add_argument("--heartbeat-interval-ms", type=int)
    parser.add_argument("--assignor", choices=["range", "sticky"])
    parser.add_argument("--instance-id")
    parser.add_argument("--offset-reset", default="earliest")
    parser.add_argument("--no-commit", dest="commit", action="store_false")
    anyio.run(main, parser.parse_args(), backend="trio")
