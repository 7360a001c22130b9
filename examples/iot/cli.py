"""The ``python -m examples.iot`` command group: one sub-command per stage, plus
``demo`` (the whole pipeline with scripted faults), ``reconcile``, ``report``
and ``watch``.

Each stage module exposes ``command: click.Command``.  The group imports a
module only when its command is asked for, so ``--help`` and each stage start
quickly and a stage never pays for another's imports (matplotlib, paho).
"""

from __future__ import annotations

import importlib
from typing import Final

import click

# Sub-command name -> (the module under examples.iot whose ``command`` it is,
# the one-line help ``--help`` prints without importing the module).
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "sim": ("sim", "Simulate devices publishing telemetry over MQTT; write the ledger."),
    "registry": ("registry", "Publish the device metadata to the compacted iot.devices topic."),
    "bridge": ("bridge", "MQTT devices/+/telemetry -> iot.raw, PUBACK after the log acked."),
    "validate": ("validate", "iot.raw -> iot.valid (decoded, upgraded, deduplicated) or iot.dlq."),
    "aggregate": ("aggregate", "iot.valid -> iot.agg.1m: one-minute windows per device."),
    "sink": ("sink", "iot.valid, iot.agg.1m, iot.alerts -> SQLite, idempotently."),
    "alerts": ("alerts", "iot.valid -> iot.alerts: threshold and silent-device rules."),
    "replay": ("replay", "Reset the sink's group and rebuild the database."),
    "demo": ("demo", "Run the whole pipeline with scripted faults into a run folder."),
    "reconcile": ("reconcile", "Check a run folder against its ledger; write summary.json."),
    "report": ("report", "Draw a run folder's report.png from its metrics.jsonl."),
    "watch": ("watch", "A live terminal view of a running pipeline's metrics."),
    "mqtt-broker": ("mqtt", "Run the MQTT broker (mosquitto, or the builtin fallback)."),
    "topology": ("topology", "Create the pipeline's topics (existing ones are left alone)."),
}


class StageGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name = COMMANDS[cmd_name][0]
        module = importlib.import_module(f"examples.iot.{module_name}")
        command = getattr(module, "command", None)
        if not isinstance(command, click.Command):
            raise click.ClickException(f"examples.iot.{module_name} has no click `command`")
        return command


@click.group(cls=StageGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The IoT ingestion pipeline example: devices over MQTT into Distributary,
    validated, aggregated, stored, alerted and replayable.

    `python -m examples.iot demo` runs it all; each stage also runs alone.
    """


def main() -> None:
    """Entry point of ``python -m examples.iot``."""
    cli(prog_name="python -m examples.iot")
