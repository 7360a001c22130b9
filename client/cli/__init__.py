"""The client-side ``distributary`` commands: topics, groups, publish, tail, perf, cluster, top.

The ``distributary`` executable's click group lives in broker/cli.py (the
client never imports the broker); it calls :func:`register` to add these
commands.  ``python -m client.cli`` runs them standalone (client/cli/__main__.py).
docs/cli.md documents every command.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the client commands to ``group``."""
    from client.cli.cluster import cluster
    from client.cli.groups import groups
    from client.cli.perf import perf
    from client.cli.publish import publish
    from client.cli.tail import tail
    from client.cli.top import top
    from client.cli.topics import topics

    for command in (topics, groups, publish, tail, perf, cluster, top):
        group.add_command(command)
