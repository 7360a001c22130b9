"""What every IoT pipeline stage process shares: its /metrics endpoint, a
graceful stop on SIGTERM/SIGINT, and the common click options.

A stage's ``run`` loop takes a :class:`trio.Event` named ``stop``.  It checks the
event between batches: when it is set, the stage finishes the batch in hand,
commits its offsets and returns.  :func:`run_until_signalled` sets the event on
the first SIGTERM or SIGINT and, if the stage has not returned within
``stop_grace_s``, cancels it (a second signal cancels at once).  The process then
exits 0, so the demo can tell a clean stop from a crash by the exit status.

Metrics are served by prometheus_client's own HTTP thread on 127.0.0.1; the
stage's counters are prometheus_client objects in a per-process registry, which
are lock-protected, so scraping from that thread is safe.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import click
import trio
from prometheus_client import CollectorRegistry, start_http_server

BOOTSTRAP_DEFAULT: Final = "127.0.0.1:9392"
METRICS_HOST: Final = "127.0.0.1"
# How long a stage may take to finish its batch and commit after SIGTERM before
# it is cancelled.  A batch is at most a few thousand records, well under a second.
STOP_GRACE_S_DEFAULT: Final = 10.0

F = TypeVar("F", bound=Callable[..., Any])


def serve_metrics(registry: CollectorRegistry, host: str = METRICS_HOST, port: int = 0) -> int:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread and
    return the bound port (``port`` 0 picks a free one).  Prints
    ``metrics on http://HOST:PORT/metrics`` so a person (or the demo) can find it.

    Raises OSError when the port cannot be bound.
    """
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_port)
    print(f"metrics on http://{host}:{bound}/metrics", flush=True)
    return bound


async def run_until_signalled(
    main: Callable[[trio.Event], Awaitable[None]],
    *,
    stop_grace_s: float = STOP_GRACE_S_DEFAULT,
) -> None:
    """Run ``main(stop)`` until it returns; the first SIGTERM/SIGINT sets ``stop``,
    and ``main`` is cancelled if it is still running ``stop_grace_s`` later or on
    a second signal.  Must run in the main thread (signal handling).

    Raises whatever ``main`` raises.
    """
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for _signum in signals:
                    if stop.is_set():
                        nursery.cancel_scope.cancel()
                        return
                    stop.set()
                    nursery.cancel_scope.deadline = min(
                        nursery.cancel_scope.deadline, trio.current_time() + stop_grace_s
                    )

            async def run_main() -> None:
                await main(stop)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            nursery.start_soon(run_main)


def run_stage(
    main: Callable[[trio.Event], Awaitable[None]],
    *,
    stop_grace_s: float = STOP_GRACE_S_DEFAULT,
) -> None:
    """``trio.run`` a stage under :func:`run_until_signalled` and exit 0 once it
    stopped (a signalled stop is a clean stop).  Raises whatever ``main`` raises."""
    trio.run(lambda: run_until_signalled(main, stop_grace_s=stop_grace_s))
    sys.stdout.flush()


def parse_host_port(address: str, *, default_port: int) -> tuple[str, int]:
    """``"HOST:PORT"`` (or ``"HOST"``) as a (host, port) pair.

    Raises click.BadParameter when the port is not a number.
    """
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    try:
        return host, int(port)
    except ValueError:
        raise click.BadParameter(f"not HOST:PORT: {address!r}") from None


def bootstrap_option(function: F) -> F:
    """``--bootstrap HOST:PORT``: the Distributary broker(s) to start from."""
    return click.option(
        "--bootstrap",
        default=BOOTSTRAP_DEFAULT,
        show_default=True,
        help="Distributary bootstrap address(es), HOST:PORT[,HOST:PORT...].",
    )(function)


def metrics_port_option(function: F) -> F:
    """``--metrics-port P``: where this stage serves /metrics (0 = any free port)."""
    return click.option(
        "--metrics-port",
        type=int,
        default=0,
        show_default=True,
        help="Port of this stage's /metrics on 127.0.0.1 (0 picks a free one and prints it).",
    )(function)


def mqtt_option(function: F) -> F:
    """``--mqtt HOST:PORT``: the MQTT broker."""
    return click.option(
        "--mqtt",
        "mqtt_address",
        default="127.0.0.1:1883",
        show_default=True,
        help="MQTT broker HOST:PORT.",
    )(function)
