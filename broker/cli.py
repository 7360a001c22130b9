"""The ``distributary`` command.  ``serve`` runs a broker; the client commands join
this group later.

Every failure an operator can cause (a bad flag, an unreadable or invalid config,
a port in use, a corrupt partition, a locked data directory) ends the process
with one line on stderr, ``distributary: error: ...``, and a non-zero status: 2
for usage errors, 1 for the rest.  Never a traceback for those.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import click

from broker.config import ENV_CONFIG_FILE, ConfigError, load_config, read_toml
from client.cli import register as register_client_commands
from client.cli.common import BOOTSTRAP_ENV, OneLineErrors
from client.errors import DistributaryError

EXAMPLES = """\b
Examples:
  distributary serve                                   # a broker on 127.0.0.1:9392
  distributary topics create orders --partitions 3
  printf 'a\\nb\\n' | distributary publish orders
  distributary tail orders -o beginning -e
  distributary perf produce bench --records 1000000 --record-size 100
"""


@click.group(cls=OneLineErrors, epilog=EXAMPLES)
@click.version_option(package_name="distributary", prog_name="distributary")
@click.option(
    "-b",
    "--bootstrap",
    metavar="HOST:PORT",
    help="Broker address(es) for every client command (also accepted after the command).",
)
def main(bootstrap: str | None) -> None:
    """Distributary: a commit-log message broker (Kafka's model, in Python)."""
    if bootstrap is not None:
        # Each client command reads its --bootstrap default from this variable; a
        # --bootstrap given after the command still wins.
        os.environ[BOOTSTRAP_ENV] = bootstrap


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar=ENV_CONFIG_FILE,
    help=f"TOML config file (or ${ENV_CONFIG_FILE}).",
)
@click.option("--data-dir", help="Directory for topic data [./distributary-data].")
@click.option("--listen", help="HOST:PORT to listen on [127.0.0.1:9392]; port 0 picks one.")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    help="Log lines as console text or JSON [auto: console on a terminal].",
)
@click.option(
    "--cluster",
    metavar="etcd://HOST:PORT[,...]/PREFIX",
    help="Join the cluster whose metadata is in this etcd, under PREFIX [single node].",
)
@click.option("--node-id", type=click.IntRange(min=0), help="This broker's id in the cluster [0].")
@click.option(
    "--advertise", metavar="HOST:PORT", help="Address clients use to reach this broker [listen]."
)
@click.option("--rack", help="Rack or zone of this broker (replicas spread across racks).")
@click.option(
    "--replica-lag-time-max-ms",
    type=click.IntRange(min=1),
    help="A follower this long behind its leader leaves the in-sync replicas [10000].",
)
def serve(
    config_file: Path | None,
    data_dir: str | None,
    listen: str | None,
    log_format: str | None,
    cluster: str | None,
    node_id: int | None,
    advertise: str | None,
    rack: str | None,
    replica_lag_time_max_ms: int | None,
) -> None:
    """Run a broker (a single node, or a cluster member with --cluster) until
    SIGINT/SIGTERM."""
    flags = {
        "data_dir": data_dir,
        "listen": listen,
        "log_format": log_format,
        "cluster": cluster,
        "node_id": node_id,
        "advertise": advertise,
        "rack": rack,
        "replica_lag_time_max_ms": replica_lag_time_max_ms,
    }
    try:
        loaded = load_config(
            file_values=read_toml(config_file) if config_file is not None else None,
            file_name=str(config_file),
            environ=os.environ,
            flags=flags,
        )
    except ConfigError as error:
        raise click.ClickException(error.message) from error
    # Imported here so the client commands (`tail ... | jq`) start without them.
    import trio

    from broker import logging as broker_logging
    from broker.server import serve as serve_broker

    config = loaded.config
    broker_logging.configure(config.log_format, config.log_level)
    logger = broker_logging.get_logger()
    for warning in loaded.warnings:
        logger.warning(warning)
    logger.debug("configuration", sources=loaded.sources)
    try:
        trio.run(partial(serve_broker, config, own_process=True))
    except KeyboardInterrupt:  # before the signal handler is installed
        sys.exit(130)
    except OSError as error:
        raise click.ClickException(
            f"cannot listen on {config.listen}: {error.strerror or error}"
        ) from error
    except DistributaryError as error:
        raise click.ClickException(error.message) from error


# The client commands (topics, publish, tail, perf) share the executable.
register_client_commands(main)
