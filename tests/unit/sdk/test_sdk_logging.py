"""The SDK stays quiet inside other programs, and speaks when asked to."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import logging, socket, sys, trio
    from client import BrokerUnavailableError, Producer

    if sys.argv[1] == "verbose":
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        try:
            async with Producer(f"127.0.0.1:{port}", reconnect_attempts_max=2) as producer:
                await producer.send("t", b"x")
        except BrokerUnavailableError:
            print("typed error")

    trio.run(main)
    """
)


def run(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sdk_prints_nothing_into_an_unconfigured_program() -> None:
    """Proves retries and reconnects log nothing to stdout/stderr by default
    (structlog unconfigured): the host program's output is its own."""
    result = run("quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "typed error\n"
    assert result.stderr == ""


def test_sdk_logs_through_stdlib_logging_when_enabled() -> None:
    """Proves an application that enables logging sees the SDK's lines under
    the `distributary.` logger names."""
    result = run("verbose")
    assert result.returncode == 0, result.stderr
    assert "distributary.client.cluster" in result.stderr
    assert "connect failed" in result.stderr
