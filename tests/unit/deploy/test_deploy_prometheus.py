"""deploy/prometheus: the scrape configs and alert rules pass promtool's checks, and the
alerts fire exactly as rules_test.yml and iot-rules_test.yml say (promtool test rules)."""

from __future__ import annotations

import subprocess

import pytest
from deploy_files import MISSING_PROMETHEUS, PROMETHEUS_DIR, PROMTOOL

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason=MISSING_PROMETHEUS)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("config", sorted(p.name for p in PROMETHEUS_DIR.glob("prometheus*.yml")))
def test_scrape_config_is_valid(config: str) -> None:
    """Proves each shipped Prometheus config (and the rule file it loads) passes
    promtool check config."""
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_valid() -> None:
    """Proves rules.yml parses and every expression is valid PromQL (promtool check rules)."""
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_as_their_unit_tests_say() -> None:
    """Proves each alert fires for its failure and not for its look-alikes (broker down,
    p99 high but not for Fetch, lag growing as Burrow judges it, empty group, disk
    filling, under-replicated and offline partitions, unclean elections)."""
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_iot_rules_are_valid() -> None:
    """Proves iot-rules.yml (the IoT pipeline's alerts) parses and is valid PromQL."""
    result = promtool("check", "rules", "iot-rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_iot_alerts_fire_as_their_unit_tests_say() -> None:
    """Proves each IoT pipeline alert fires for its failure and not for its look-alikes
    (bridge receiving but not producing, devices quiet, lag growing vs draining, dead
    letters above 5 % vs 1 %, end-to-end p99 high vs low, a stage down)."""
    result = promtool("test", "rules", "iot-rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_iot_scrape_config_loads_both_rule_files() -> None:
    """Proves prometheus-iot.yml loads the broker's and the pipeline's rules and reads
    the demo's targets through file service discovery."""
    config = (PROMETHEUS_DIR / "prometheus-iot.yml").read_text()
    assert "- rules.yml" in config and "- iot-rules.yml" in config
    assert "file_sd_configs" in config and "iot-targets.json" in config
