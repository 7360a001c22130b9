"""The shipped monitoring files (deploy/) and how tests read them.

``dashboard_queries()`` lists every panel query of a Grafana dashboard (the
broker's by default, ``IOT_DASHBOARD`` for the IoT pipeline's) with Grafana's
variables replaced the way Grafana would for "all brokers" / "all jobs", so
Prometheus (or promtool) can run them.  ``PROMTOOL`` / ``PROMETHEUS`` are the
binaries (None when the Debian ``prometheus`` package is not installed:
scripts/install-system-packages.sh installs it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR: Final = ROOT / "deploy" / "prometheus"
GRAFANA_DIR: Final = ROOT / "deploy" / "grafana"
DASHBOARD: Final = GRAFANA_DIR / "dashboards" / "distributary.json"
IOT_DASHBOARD: Final = GRAFANA_DIR / "dashboards" / "distributary-iot.json"
PROMTOOL: Final = shutil.which("promtool")
PROMETHEUS: Final = shutil.which("prometheus")
MISSING_PROMETHEUS: Final = (
    "needs the prometheus and promtool binaries (Debian package prometheus; "
    "scripts/install-system-packages.sh installs it)"
)


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def dashboard_panels(path: Path = DASHBOARD) -> list[dict[str, Any]]:
    """Every panel with queries (rows left out)."""
    return [panel for panel in load_dashboard(path)["panels"] if panel.get("type") != "row"]


def dashboard_queries(rate_interval: str = "1m", path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, with ``$instance``
    and ``$job`` as "all" and ``$__rate_interval`` as ``rate_interval``."""
    queries = []
    for panel in dashboard_panels(path):
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            expr = expr.replace("$instance", ".+").replace("$job", ".+")
            queries.append((panel["title"], expr))
    return queries
