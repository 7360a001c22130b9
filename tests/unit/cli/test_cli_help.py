"""Every client command's --help: examples in one layout (an "Examples:" block
after the options), and the capitalised names its text uses are its own
arguments or option metavars."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from client.cli import register

# Capitalised words in help text that are not placeholders.
_NOT_PLACEHOLDERS = {"JSON", "TOML", "ISO", "UTC", "RE2", "CSV", "SIGTERM", "IPV6", "HTTP"}


def _commands() -> list[tuple[str, click.Command]]:
    group = click.Group("distributary")
    register(group)
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found.extend((f"{name} {sub}", cmd) for sub, cmd in sorted(command.commands.items()))
        else:
            found.append((name, command))
    return found


def _help(path: str) -> str:
    group = click.Group("distributary")
    register(group)
    result = CliRunner().invoke(group, [*path.split(), "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("path", "command"), _commands(), ids=lambda value: str(value))
def test_examples_follow_the_options(path: str, command: click.Command) -> None:
    """Each command shows its examples in an epilog, after the options, once."""
    text = _help(path)
    assert text.count("Examples:") == 1, text
    assert text.index("Options:") < text.index("Examples:"), text
    assert f"distributary {path}" in text.split("Examples:")[1], text


@pytest.mark.parametrize(("path", "command"), _commands(), ids=lambda value: str(value))
def test_placeholders_in_the_text_are_metavars(path: str, command: click.Command) -> None:
    """An upper-case placeholder in a command's description names one of its
    arguments or option metavars."""
    names: set[str] = set()
    for parameter in command.params:
        if isinstance(parameter, click.Argument):
            names.add((parameter.name or "").upper())
        metavar = getattr(parameter, "metavar", None)
        if metavar:
            names.update(re.findall(r"[A-Z][A-Z_0-9]+", metavar))
    description = (command.help or "").split("\b")[0]
    used = set(re.findall(r"\b[A-Z][A-Z_0-9]{1,}\b", description)) - _NOT_PLACEHOLDERS
    assert used <= names, (path, used - names)
