"""Logging for the SDK: quiet inside other people's programs, structured in ours.

A library must not print into its host program's output.  structlog's default
(unconfigured) logger prints every level to stdout, so the SDK does not use it
blindly: each call goes

- through structlog when the process has configured it (our CLI and broker do,
  and so may an application that uses structlog), keeping its processors,
  levels and renderers;
- otherwise through the standard ``logging`` module, under the logger
  ``distributary.<name>``: silent below WARNING until the application opts in
  (``logging.getLogger("distributary").setLevel(logging.DEBUG)``).

Only rare events log here (retries, reconnects, protocol errors), never a
per-record path.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog


class SdkLogger:
    """A small structlog-style logger (``bind``, ``debug`` .. ``error``)."""

    __slots__ = ("_context", "_name")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = context or {}

    def bind(self, **context: Any) -> SdkLogger:
        return SdkLogger(self._name, {**self._context, **context})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, "error", event, fields)

    def _log(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            logger = structlog.get_logger(self._name)
            getattr(logger, method)(event, **self._context, **fields)
            return
        stdlib = logging.getLogger(f"distributary.{self._name}")
        if stdlib.isEnabledFor(level):
            pairs = " ".join(
                f"{key}={value!r}" for key, value in {**self._context, **fields}.items()
            )
            stdlib.log(level, "%s %s", event, pairs)


def get_logger(name: str) -> SdkLogger:
    return SdkLogger(name)
