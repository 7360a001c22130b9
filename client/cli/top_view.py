"""``distributary top``'s screen: a :class:`~client.cli.top_snapshot.TopView` as rich tables.

:func:`render` is a pure function of the two scrapes top compares (or of the
error that stands for a broker that is down): it builds rich renderables and
never touches a terminal, so tests render it into a string console.  Numbers
are shown with units (records/s, B/s, ms); a rate that cannot be known yet
(the first refresh, or the one after a restart) shows as "-".  A group's lag
trend is an arrow with the change per second: up when it grows, down when it
shrinks.  The header counts under-replicated and offline partitions, in red when
not 0.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from client.cli.common import format_bytes
from client.cli.top_snapshot import Scrape, TopView, compute_view, down_view

DASH = "-"


def render(previous: Scrape | None, current: Scrape | str, address: str) -> RenderableType:
    """The screen for ``current`` (a scrape, or why the endpoint at ``address``
    did not answer) compared with ``previous``."""
    view = down_view(current) if isinstance(current, str) else compute_view(previous, current)
    return render_view(view, address)


def render_view(view: TopView, address: str) -> RenderableType:
    if not view.up:
        return Group(
            Text.assemble(
                ("distributary top", "bold"),
                f"  {address}  ",
                ("DOWN", "bold red"),
                f"  {view.error}",
            ),
            Text("retrying every second; the view comes back when the broker does"),
        )
    header = Text.assemble(
        ("distributary top", "bold"),
        f"  {address}  ",
        ("up", "bold green"),
        f"  version {view.version or '?'}",
        f"  connections {view.connections}",
        f" (+{_number(view.connections_opened_per_s)}/s)",
        f"  cpu {_number(view.cpu_percent)} %",
        f"  rss {_bytes(view.resident_bytes)}",
        f"  fds {view.open_fds if view.open_fds is not None else DASH}",
        "  under-replicated ",
        _partition_count(view.under_replicated_partitions),
        "  offline ",
        _partition_count(view.offline_partitions),
    )
    return Group(header, _topics(view), _groups(view), _apis(view))


def _topics(view: TopView) -> Table:
    table = Table(title="topics", title_justify="left", expand=True)
    for heading in ("topic", "partitions", "in rec/s", "in B/s", "out rec/s", "out B/s", "on disk"):
        table.add_column(heading, justify="left" if heading == "topic" else "right")
    for row in view.topics:
        table.add_row(
            row.topic,
            str(row.partitions),
            _number(row.in_records_per_s),
            _bytes(row.in_bytes_per_s),
            _number(row.out_records_per_s),
            _bytes(row.out_bytes_per_s),
            _bytes(row.log_bytes),
        )
    return table


def _groups(view: TopView) -> Table:
    table = Table(title="consumer groups", title_justify="left", expand=True)
    for heading in ("group", "state", "members", "lag (records)", "lag (s)", "trend"):
        table.add_column(heading, justify="left" if heading in ("group", "state") else "right")
    for row in view.groups:
        table.add_row(
            row.group,
            row.state or DASH,
            str(row.members),
            f"{row.lag_records:,.0f}",
            f"{row.lag_seconds:,.1f}",
            trend(row.lag_trend_per_s),
        )
    return table


def _apis(view: TopView) -> Table:
    table = Table(title="requests", title_justify="left", expand=True)
    for heading in ("api", "req/s", "p50 ms", "p99 ms"):
        table.add_column(heading, justify="left" if heading == "api" else "right")
    for row in view.apis:
        table.add_row(
            row.api,
            _number(row.requests_per_s),
            _milliseconds(row.p50_seconds),
            _milliseconds(row.p99_seconds),
        )
    return table


def trend(per_s: float | None) -> Text:
    """A lag trend: a red up arrow when it grows, green down when it shrinks."""
    if per_s is None:
        return Text(DASH)
    if per_s > 0:
        return Text(f"▲ +{per_s:,.0f}/s", style="red")
    if per_s < 0:
        return Text(f"▼ {per_s:,.0f}/s", style="green")
    return Text("= 0/s")


def _partition_count(count: int | None) -> Text:
    """A count of partitions in trouble: red when some are."""
    if count is None:
        return Text(DASH)
    return Text(str(count), style="bold red" if count else "")


def _number(value: float | None) -> str:
    return DASH if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _bytes(value: float | None) -> str:
    return DASH if value is None else format_bytes(value)


def _milliseconds(seconds: float | None) -> str:
    return DASH if seconds is None else f"{seconds * 1000:,.2f}"
