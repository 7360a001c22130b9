"""``distributary top``: a live terminal view of a broker, from its metrics endpoint.

Every second (``--interval``) it scrapes the broker's Prometheus endpoint
(``GET /metrics``, docs/monitoring.md), compares the scrape with the one before
(client/cli/top_snapshot.py) and redraws the screen (client/cli/top_view.py)
with rich's ``Live``, driven from the trio task (no refresh thread).  Reading
the metrics endpoint rather than an admin request means no new wire API, and
top shows exactly the numbers Prometheus and the dashboard see.

The endpoint's address: ``--metrics HOST:PORT``, else the first ``--bootstrap``
broker's host and port + 1 (the broker's default metrics port).  When a scrape
fails (the broker is down or restarting) the screen says DOWN with the reason
and top keeps scraping; once the broker answers again the view comes back, its
rates starting afresh (the counters restarted with the broker).

``--once`` takes two scrapes one interval apart and prints one view (``--json``:
as one JSON object, for scripts; exit status 1 when the broker is down).
``--json`` alone prints one JSON object per interval.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Final

import anyio
import click
import httpx
import msgspec

from client.address import AddressError, parse_address, parse_addresses
from client.cli.common import EXIT_ERROR, Terminal, client_options, run
from client.cli.top_snapshot import Scrape, TopView, compute_view, down_view, parse_scrape

# How long one scrape may take before the broker counts as down: well above
# the few milliseconds a scrape takes, well below the refresh interval's scale.
SCRAPE_TIMEOUT_S: Final = 2.0

EXAMPLES: Final = """
\b
Examples:
  distributary top
  distributary top --metrics 127.0.0.1:9393 --interval 2
  distributary top --once --json | jq '.groups[] | {group, lag_records, lag_seconds}'
"""


def metrics_address(bootstrap: str, metrics: str | None) -> str:
    """``metrics`` if given, else the first bootstrap broker's host and port + 1.
    Raises AddressError."""
    if metrics:
        host, port = parse_address(metrics)
    else:
        host, broker_port = parse_addresses(bootstrap)[0]
        port = broker_port + 1
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TopSession:
    """Scrapes one endpoint and keeps the scrape before, to compute rates.

    ``clock`` gives monotonic seconds (the running loop's, by default)."""

    def __init__(
        self, client: httpx.AsyncClient, address: str, clock: Callable[[], float] | None = None
    ) -> None:
        self.client = client
        self.address = address
        self.url = f"http://{address}/metrics"
        self._clock = clock or anyio.current_time
        self.previous: Scrape | None = None

    async def scrape(self) -> Scrape | str:
        """One scrape, or why there is none (the endpoint is down or not ours)."""
        try:
            response = await self.client.get(self.url, timeout=SCRAPE_TIMEOUT_S)
        except httpx.HTTPError as error:
            return describe_http_error(error)
        if response.status_code != 200:
            return f"HTTP {response.status_code} from {self.url}"
        try:
            return parse_scrape(response.text, self._clock())
        except ValueError as error:
            return f"not Prometheus metrics at {self.url} ({error})"

    async def tick(self) -> tuple[Scrape | None, Scrape | str]:
        """Scrape once: returns (the scrape before, this one), and keeps this one
        for the next tick (a failed scrape forgets it: rates restart)."""
        previous = self.previous
        current = await self.scrape()
        self.previous = current if isinstance(current, Scrape) else None
        return previous, current

    async def view(self) -> TopView:
        previous, current = await self.tick()
        return down_view(current) if isinstance(current, str) else compute_view(previous, current)


def describe_http_error(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.ConnectError):
        return "connection refused"
    if isinstance(error, httpx.TimeoutException):
        return f"no answer within {SCRAPE_TIMEOUT_S:g} s"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


@click.command(epilog=EXAMPLES)
@client_options
@click.option(
    "--metrics",
    metavar="HOST:PORT",
    help="The broker's metrics endpoint [the first bootstrap broker's port + 1].",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option(
    "--once", is_flag=True, help="Print one view (two scrapes an interval apart) and exit."
)
@click.option("--json", "as_json", is_flag=True, help="Print views as JSON objects, one a line.")
def top(
    bootstrap: str, debug: bool, metrics: str | None, interval: float, once: bool, as_json: bool
) -> None:
    """A live view of a broker: topics, groups and lag, request latency, connections.

    Reads the broker's Prometheus metrics endpoint (docs/monitoring.md)."""
    try:
        address = metrics_address(bootstrap, metrics)
    except AddressError as error:
        raise click.BadParameter(str(error), param_hint="--metrics") from None

    async def body() -> int:
        # One connection per scrape (no keep-alive): a scrape a second costs one
        # connect, and a broker that restarted or dropped an idle connection
        # never fails a scrape on a stale pooled one.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits) as client:
            session = TopSession(client, address)
            if once:
                return await _once(session, interval, as_json)
            if as_json:
                await _json_lines(session, interval)
            else:
                await _live(session, interval)
        return 0

    run(body, bootstrap=bootstrap, debug=debug)


async def _once(session: TopSession, interval: float, as_json: bool) -> int:
    first = await session.view()
    if first.up:
        await anyio.sleep(interval)
        view = await session.view()
    else:
        view = first
    if as_json:
        sys.stdout.write(msgspec.json.encode(view).decode() + "\n")
    else:
        from client.cli.top_view import render_view

        Terminal(sys.stdout).console.print(render_view(view, session.address))
    return 0 if view.up else EXIT_ERROR


async def _json_lines(session: TopSession, interval: float) -> None:
    while True:  # until Ctrl-C
        view = await session.view()
        sys.stdout.write(msgspec.json.encode(view).decode() + "\n")
        sys.stdout.flush()
        await anyio.sleep(interval)


async def _live(session: TopSession, interval: float) -> None:
    from rich.live import Live

    from client.cli.top_view import render

    terminal = Terminal(sys.stdout)
    if terminal.is_terminal:
        with Live(console=terminal.console, auto_refresh=False, screen=False) as live:
            while True:  # until Ctrl-C
                previous, current = await session.tick()
                live.update(render(previous, current, session.address), refresh=True)
                await anyio.sleep(interval)
    else:
        while True:  # not a terminal: print each view in turn, until Ctrl-C
            previous, current = await session.tick()
            terminal.console.print(render(previous, current, session.address))
            await anyio.sleep(interval)
