"""deploy/grafana: the dashboard JSON is well formed, and every panel query is valid PromQL
(checked by promtool as a recording rule; tests/integration/test_monitoring_stack.py runs
them against a live Prometheus)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from deploy_files import (
    DASHBOARD,
    GRAFANA_DIR,
    IOT_DASHBOARD,
    MISSING_PROMETHEUS,
    PROMTOOL,
    dashboard_panels,
    dashboard_queries,
    load_dashboard,
)


def test_dashboard_is_well_formed() -> None:
    """Proves the dashboard has a stable uid, unique panel ids, every panel reads the
    datasource variable and has at least one query, and the panels the issue asks
    for are there."""
    dashboard = load_dashboard()
    assert dashboard["uid"] == "distributary-overview"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    panels = dashboard_panels()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    titles = {panel["title"] for panel in panels}
    for wanted in (
        "Records in by topic",
        "Request p99 by API",
        "Lag by group (records)",
        "Lag by group (seconds)",
        "Connections open",
        "Log size by topic",
        "Data dir file system used",
        "CPU",
        "Resident memory",
        "Under-replicated and offline partitions",
        "ISR shrinks and expansions",
        "Leader elections by kind",
    ):
        assert wanted in titles
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}


def test_provisioning_files_point_at_the_dashboard_and_prometheus() -> None:
    """Proves the provisioning files are Grafana's apiVersion 1 format naming a file
    provider and a Prometheus datasource."""
    datasource = (GRAFANA_DIR / "provisioning" / "datasources" / "distributary.yml").read_text()
    assert "apiVersion: 1" in datasource and "type: prometheus" in datasource
    provider = (GRAFANA_DIR / "provisioning" / "dashboards" / "distributary.yml").read_text()
    assert "apiVersion: 1" in provider and "type: file" in provider


def test_iot_dashboard_is_well_formed() -> None:
    """Proves the IoT pipeline dashboard has its own stable uid, unique panel ids, every
    panel reads the datasource variable and has queries, and the panels the issue asks
    for (ingest by stage, lag, end-to-end latency, dead letters, in flight) are there."""
    dashboard = load_dashboard(IOT_DASHBOARD)
    assert dashboard["uid"] == "distributary-iot"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    panels = dashboard_panels(IOT_DASHBOARD)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    titles = {panel["title"] for panel in panels}
    for wanted in (
        "Ingest rate by stage",
        "Lag by group (records)",
        "Lag by group (seconds)",
        "End-to-end latency",
        "Dead letters by reason",
        "Bridge in flight",
        "Group members and rebalances",
    ):
        assert wanted in titles
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job"}


@pytest.mark.skipif(PROMTOOL is None, reason=MISSING_PROMETHEUS)
@pytest.mark.parametrize("dashboard", [DASHBOARD, IOT_DASHBOARD], ids=lambda p: p.name)
def test_every_panel_query_is_valid_promql(tmp_path: Path, dashboard: Path) -> None:
    """Proves every panel query of each dashboard parses: promtool check rules on a rule
    file holding each one as a recording rule."""
    assert PROMTOOL is not None
    rules = [
        {"record": f"dashboard:panel_{index}", "expr": expr}
        for index, (_title, expr) in enumerate(dashboard_queries(path=dashboard))
    ]
    rule_file = tmp_path / "dashboard-rules.yml"
    # JSON is YAML: promtool reads it as a rule file.
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout + result.stderr
