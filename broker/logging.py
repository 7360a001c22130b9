"""structlog set-up: one line per event on stderr, console-rendered on a terminal,
JSON lines otherwise (or as ``log_format`` says).

Every module gets its logger from :func:`get_logger` and binds the context it
knows (``peer`` for a connection, ``topic``/``partition`` for a log), so each
line says where it comes from.  Configuration is process-wide and happens once,
in the CLI, before the server starts.
"""

from __future__ import annotations

import logging as stdlib_logging
import sys
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "console", "json"]

_LEVELS = {
    "debug": stdlib_logging.DEBUG,
    "info": stdlib_logging.INFO,
    "warning": stdlib_logging.WARNING,
    "error": stdlib_logging.ERROR,
}


def resolve_format(log_format: LogFormat, stream: TextIO) -> Literal["console", "json"]:
    """``auto`` means console on a terminal, JSON otherwise."""
    if log_format != "auto":
        return log_format
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def configure(
    log_format: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process.  ``level`` is a name in _LEVELS."""
    output = stream if stream is not None else sys.stderr
    renderer: Any
    if resolve_format(log_format, output) == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=output.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=output),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A logger bound with ``context`` (e.g. ``peer=...``, ``topic=...``).  Lazy: it
    follows :func:`configure` even when created at import time."""
    return structlog.get_logger("distributary", **context)
