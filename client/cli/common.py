"""What every client command shares: --bootstrap, --debug, running async code, errors.

Each command is a thin click function that builds an ``async`` body and hands it
to :func:`run`.  ``run`` drives it on trio (through anyio, like the SDK), sends
client log lines to stderr (warnings only, everything with ``--debug``), and turns
failures into one line on stderr plus an exit code:

* 0 success, 1 an operating error (unknown topic, unreachable broker ...),
  2 a usage error (click's own), 130 interrupted by Ctrl-C.
* Operating errors are raised as ``click.ClickException`` so the group holding
  the commands prints them its way (``distributary: error: ...``).
* A traceback is printed only with ``--debug`` (or DISTRIBUTARY_DEBUG=1).

rich is imported only by :class:`Terminal` and only when the stream is a
terminal, so ``distributary tail ... | jq`` starts without it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Awaitable, Callable
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import anyio
import click
import structlog
import trio

from client.address import AddressError, parse_addresses
from client.errors import (
    BrokerUnavailableError,
    ConnectionClosedError,
    DistributaryError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_BOOTSTRAP: Final = "127.0.0.1:9392"
BOOTSTRAP_ENV: Final = "DISTRIBUTARY_BOOTSTRAP"
EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class OneLineErrors(click.Group):
    """A click group whose errors are one line on stderr (``distributary: error:
    ...``), never a usage dump or a traceback: usage errors exit 2, operating
    errors 1, Ctrl-C 130.  The ``distributary`` group (broker/cli.py) uses it."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            sys.exit(130)
        except click.ClickException as error:
            click.echo(f"distributary: error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


class CommandError(Exception):
    """A failure the command already described in one line (exit code 1)."""


def check_bootstrap(
    context: click.Context | None, parameter: click.Parameter | None, value: str
) -> str:
    """The click callback of ``--bootstrap``: a bad address is a usage error in one
    line (client/address.py says what is wrong), before anything connects."""
    try:
        parse_addresses(value)
    except AddressError as error:
        raise click.BadParameter(str(error), context, parameter) from None
    return value


def client_options(function: F) -> F:
    """Adds ``--bootstrap`` and ``--debug`` to a client command."""
    function = click.option(
        "--debug",
        is_flag=True,
        envvar="DISTRIBUTARY_DEBUG",
        help="Print tracebacks and client debug logs on stderr.",
    )(function)
    function = click.option(
        "--bootstrap",
        "-b",
        metavar="HOST:PORT",
        envvar=BOOTSTRAP_ENV,
        default=DEFAULT_BOOTSTRAP,
        show_default=True,
        show_envvar=True,
        help="Broker address(es) to bootstrap from, comma-separated.",
        callback=check_bootstrap,
    )(function)
    return function


def configure_client_logging(debug: bool) -> None:
    """Client log lines go to stderr (never stdout: it carries data)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if debug else logging.ERROR
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def single_error(error: BaseException) -> BaseException:
    """The one interesting exception inside (nested) exception groups, else the group.

    Cancellations and KeyboardInterrupt siblings are ignored when picking."""
    for _ in range(100):  # bounded: groups nest a few levels at most
        if not isinstance(error, BaseExceptionGroup):
            return error
        leaves = [e for e in error.exceptions if not isinstance(e, trio.Cancelled)]
        if len(leaves) != 1:
            return error
        error = leaves[0]
    return error


def describe(error: BaseException, bootstrap: str, topic: str | None = None) -> str:
    """A one-line, user-facing description of an operating error."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, BrokerUnavailableError | ConnectionClosedError | ConnectionError):
        # "cannot connect to broker HOST:PORT: why" -> "why": the address is said once.
        detail = re.sub(r"^cannot connect to broker \S+: ", "", text)
        return f"broker unreachable at {bootstrap} ({detail or 'connection refused'})"
    if isinstance(error, UnknownTopicOrPartitionError):
        if topic is not None and "partition" in text:
            return text if repr(topic) in text else f"topic {topic!r}: {text}"
        if topic is not None:
            return f"unknown topic {topic!r} at {bootstrap}"
        return f"unknown topic or partition: {text}"
    if isinstance(error, TopicAlreadyExistsError):
        return f"topic {topic!r} already exists" if topic else f"topic already exists: {text}"
    if isinstance(error, RequestTimedOutError):
        return f"request to {bootstrap} timed out ({text})"
    if isinstance(error, InvalidTopicError | InvalidPartitionsError | InvalidConfigError):
        return text
    if isinstance(error, DistributaryError):
        # The wire code's name in words ("offset out of range: ..."), never a class name.
        words = error.code.name.lower().replace("_", " ")
        return f"{words}: {text}" if text and not text.startswith(words) else text or words
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return f"{type(error).__name__}: {text}"


def fail(message: str) -> NoReturn:
    """Stop the command with a one-line error (exit 1).  The ``distributary`` group
    prints it as ``distributary: error: message``."""
    raise click.ClickException(message)


def run(
    body: Callable[[], Awaitable[int | None]],
    *,
    bootstrap: str,
    debug: bool,
    topic: str | None = None,
) -> NoReturn:
    """Run a command body on trio (the SDK is anyio; the CLI picks trio, like the
    broker) and exit with its code (None means 0).

    Operating errors become one line on stderr and exit 1; Ctrl-C exits 130.
    """
    configure_client_logging(debug)
    try:
        code = anyio.run(body, backend="trio")
    except BaseException as raised:  # every path below re-raises or exits
        error = single_error(raised)
        if isinstance(error, SystemExit | click.exceptions.Exit | click.ClickException):
            raise error from None
        if isinstance(error, KeyboardInterrupt):
            raise SystemExit(EXIT_INTERRUPTED) from None
        if isinstance(error, BrokenPipeError):  # e.g. `tail | head`: the reader left
            _silence_stdout()
            raise SystemExit(EXIT_OK) from None
        if isinstance(error, CommandError):
            if debug:
                traceback.print_exception(raised)
            fail(str(error))
        if isinstance(error, DistributaryError | OSError):
            if debug:
                traceback.print_exception(raised)
            fail(describe(error, bootstrap, topic))
        raise  # a programmer error: crash loudly with the traceback
    raise SystemExit(code or EXIT_OK)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class Terminal:
    """One output stream; colour and tables (rich) only when it is a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        self.is_terminal = bool(isatty is not None and isatty()) and not os.environ.get("NO_COLOR")

    @cached_property
    def console(self) -> Console:
        from rich.console import Console  # lazy: only terminals pay for rich

        return Console(file=self.stream, highlight=False, soft_wrap=True)


def plural(count: int, noun: str) -> str:
    """``plural(1, "record")`` -> "1 record", ``plural(1200, "record")`` -> "1,200 records"."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
