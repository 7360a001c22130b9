"""`topics alter-config`, `topics add-partitions`, `cluster describe`, and one-line
errors for bad addresses and config files, run as real subprocesses against a real
broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_cli_commands import Cli, assert_one_line_error, clean_env, cli_prefix


@pytest.fixture
def cli(broker: Any) -> Cli:
    return Cli(broker.address)


def describe(cli: Cli, topic: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cli.ok("topics", "describe", topic, "--json").stdout)
    return result


def test_alter_config_changes_and_resets_a_topic_config(cli: Cli) -> None:
    """alter-config sets the keys named, keeps the others, and 'default' restores
    the broker default."""
    cli.ok("topics", "create", "orders", "-c", "retention.ms=5000", "-c", "segment.bytes=65536")
    result = cli.ok("topics", "alter-config", "orders", "-c", "retention.ms=86400000")
    assert b"retention.ms=86400000" in result.stderr
    configs = describe(cli, "orders")["configs"]
    assert configs["retention_ms"] == "86400000"
    assert configs["segment_bytes"] == "65536"
    cli.ok("topics", "alter-config", "orders", "-c", "segment_bytes=default")
    assert describe(cli, "orders")["configs"]["segment_bytes"] == str(1 << 30)


def test_alter_config_refuses_bad_values_in_one_line(cli: Cli) -> None:
    """An unknown key, a bad value, a missing topic: one line each, exit 1."""
    cli.ok("topics", "create", "orders")
    assert_one_line_error(
        cli.run("topics", "alter-config", "orders", "-c", "colour=blue"), "unknown topic config"
    )
    assert_one_line_error(
        cli.run("topics", "alter-config", "orders", "-c", "retention.ms=soon"), "retention.ms"
    )
    assert_one_line_error(
        cli.run("topics", "alter-config", "orders", "-c", "batch_bytes_max=1073741824"),
        "frame_bytes_max",
    )
    assert_one_line_error(
        cli.run("topics", "alter-config", "missing", "-c", "retention.ms=1"), "missing"
    )


def test_add_partitions_raises_the_count_and_producers_use_them(cli: Cli) -> None:
    """add-partitions takes the new total; records can be published to the new
    partitions; a count that is not higher is refused."""
    cli.ok("topics", "create", "events", "--partitions", "2")
    result = cli.ok("topics", "add-partitions", "events", "--partitions", "5")
    assert b"5 partitions" in result.stderr
    assert len(describe(cli, "events")["partitions"]) == 5
    cli.ok("publish", "events", "-p", "4", input=b"on four\n")
    tailed = cli.ok("tail", "events", "-p", "4", "-o", "beginning", "-e", "-f", "%s\\n").stdout
    assert tailed == b"on four\n"
    refused = cli.run("topics", "add-partitions", "events", "--partitions", "3")
    assert_one_line_error(refused, "5 partitions", "cannot be removed")


def test_cluster_describe_lists_the_broker_and_its_partitions(cli: Cli) -> None:
    """cluster describe names the broker, marks it controller and counts the
    partitions it leads, in a table and in JSON."""
    cli.ok("topics", "create", "a", "--partitions", "3")
    argv = [*cli_prefix(), "cluster", "describe", "--bootstrap", cli.address]
    run = subprocess.run([*argv, "--json"], capture_output=True, env=clean_env(), timeout=60)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    (broker,) = summary["brokers"]
    assert broker["controller"] is True
    assert f"{broker['host']}:{broker['port']}" == cli.address
    assert broker["partitions_led"] == summary["partitions"] >= 3
    plain = subprocess.run(argv, capture_output=True, env=clean_env(), timeout=60)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.decode().splitlines()
    assert lines[0].startswith("cluster ") and "1 broker " in lines[0] + " "
    assert lines[1].split() == ["node", "address", "rack", "controller", "leads", "replicas"]
    assert broker["rack"] is None and lines[2].split()[2] == "-"


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        ("127.0.0.1:99999", "out of range"),
        ("127.0.0.1:http", "not a number"),
        ("::1:9392", "brackets"),
        ("bad host:1", "not a valid host name"),
    ],
)
def test_malformed_bootstrap_is_one_line(address: str, needle: str) -> None:
    """A malformed --bootstrap is a usage error in one line, before connecting."""
    result = subprocess.run(
        [*cli_prefix(), "topics", "list", "--bootstrap", address],
        capture_output=True,
        env=clean_env(),
        timeout=60,
    )
    assert result.returncode == 2
    assert_one_line_error(result, needle)
    assert len(result.stderr.decode().strip().splitlines()) == 1


def test_an_http_server_at_the_bootstrap_address_is_named(http_server: int) -> None:
    """Pointed at an HTTP server, a command says so in one line, without a hang."""
    result = subprocess.run(
        [*cli_prefix(), "topics", "list", "--bootstrap", f"127.0.0.1:{http_server}"],
        capture_output=True,
        env=clean_env(),
        timeout=30,
    )
    assert_one_line_error(result, f"127.0.0.1:{http_server} answered like an HTTP server")


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x81garbage", b"\x00\x01\x02" * 50])
def test_a_config_file_that_is_not_text_is_one_line(tmp_path: Path, content: bytes) -> None:
    """serve --config on binary garbage or bad UTF-8 exits 1 with one line."""
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--config", str(path)],
        capture_output=True,
        env=clean_env(),
        timeout=60,
    )
    assert_one_line_error(result, str(path))
    assert len(result.stderr.decode().strip().splitlines()) == 1
