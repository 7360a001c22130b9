"""Suite-wide set-up: refuse to run with asserts stripped (they are part of the design),
and fixtures more than one test package uses."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

if not __debug__ or sys.flags.optimize:
    raise SystemExit(
        "the test suite refuses to run under `python -O`: asserts are part of the design"
    )


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def http_server() -> Iterator[int]:
    """The port of an HTTP server on 127.0.0.1 (something that is not a broker)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
