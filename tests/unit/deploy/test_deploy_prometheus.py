"""deploy/prometheus: the scrape config and alert rules pass promtool's checks, and the
alerts fire exactly as rules_test.yml says (promtool test rules)."""

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
