"""Create the pipeline's topics (names.TOPICS) on a Distributary broker.

Idempotent: a topic that already exists is left alone (its partition count is
checked, since keys map to partitions and a different count would break the
per-device order the pipeline promises).  ``python -m examples.iot topology``
runs it by hand; the demo calls :func:`create_topics` before starting a stage.
"""

from __future__ import annotations

import click
import trio

from client import Admin, NewTopic, TopicAlreadyExistsError
from examples.iot.names import TOPICS
from examples.iot.stage import bootstrap_option


async def create_topics(bootstrap: str, *, replication_factor: int = 1) -> list[str]:
    """Create every pipeline topic that does not exist yet; return the names created.

    Raises click.ClickException when an existing topic has another partition
    count than names.TOPICS says, and the SDK's typed errors (e.g.
    BrokerUnavailableError) when the broker cannot be reached.
    """
    created: list[str] = []
    async with Admin(bootstrap) as admin:
        existing = set(await admin.list_topics())
        for spec in TOPICS:
            if spec.name in existing:
                continue
            try:
                await admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, replication_factor, dict(spec.configs))]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # created by someone else in the meantime
        described = {d.name: d for d in await admin.describe_topics([t.name for t in TOPICS])}
    for spec in TOPICS:
        partitions = len(described[spec.name].partitions)
        if partitions != spec.partitions:
            raise click.ClickException(
                f"topic {spec.name} has {partitions} partitions, the pipeline needs {spec.partitions}"
            )
    return created


@click.command("topology")
@bootstrap_option
def command(bootstrap: str) -> None:
    """Create the pipeline's topics (those that exist are left alone)."""
    created = trio.run(create_topics, bootstrap)
    for spec in TOPICS:
        state = "created" if spec.name in created else "exists"
        print(f"{spec.name:<12} {spec.partitions} partition(s) {state}")
