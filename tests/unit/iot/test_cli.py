"""examples/iot/cli.py and stage.py: every sub-command resolves to its module's click
command, and a stage stops cleanly on SIGTERM after finishing its work."""

from __future__ import annotations

import os
import signal

import click
import trio
from click.testing import CliRunner

from examples.iot.cli import COMMANDS, cli
from examples.iot.stage import parse_host_port, run_until_signalled


def test_every_command_resolves_to_its_module() -> None:
    """Proves each listed sub-command imports and is the click command of that name."""
    context = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(context, name)
        assert isinstance(command, click.Command), name
        assert command.name == name
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in COMMANDS)


def test_parse_host_port() -> None:
    """Proves HOST:PORT and a bare HOST parse, and a non-numeric port is refused."""
    assert parse_host_port("127.0.0.1:1884", default_port=1883) == ("127.0.0.1", 1884)
    assert parse_host_port("localhost", default_port=1883) == ("localhost", 1883)
    try:
        parse_host_port("h:x", default_port=1)
    except click.BadParameter:
        pass
    else:
        raise AssertionError("a non-numeric port was accepted")


async def test_sigterm_sets_stop_and_lets_the_stage_finish() -> None:
    """Proves the first SIGTERM sets the stop event, and the stage's own ending code
    (finish the batch, commit) runs before run_until_signalled returns."""
    finished: list[str] = []

    async def stage(stop: trio.Event) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await stop.wait()
        await trio.sleep(0.01)  # the last batch
        finished.append("committed")

    with trio.fail_after(5):
        await run_until_signalled(stage)
    assert finished == ["committed"]


async def test_a_stage_stuck_after_stop_is_cancelled_after_the_grace() -> None:
    """Proves a stage that ignores the stop event is cancelled after stop_grace_s."""

    async def stuck(stop: trio.Event) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await trio.sleep_forever()

    with trio.fail_after(5):
        await run_until_signalled(stuck, stop_grace_s=0.1)
