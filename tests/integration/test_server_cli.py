"""``distributary serve`` as an operator meets it: flags, config files, startup errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.errors import ErrorCode
from client.records.builder import build_batch

RawFactory = Callable[..., Any]


def run_serve(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m broker serve ARGS`` expecting it to fail fast."""
    return subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--log-format", "json", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("distributary: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    """A misspelled key in the TOML file stops startup with one line naming the key."""
    config = tmp_path / "broker.toml"
    config.write_text('listen = "127.0.0.1:0"\n[limits]\nconections_max = 5\n')
    result = run_serve("--config", str(config), "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert_one_line_error(result, "limits.conections_max", str(config))
    assert result.returncode == 1


def test_mistyped_config_value_is_named(tmp_path: Path) -> None:
    """A value of the wrong type names its key and the expected type."""
    config = tmp_path / "broker.toml"
    config.write_text('[limits]\nframe_bytes_max = "big"\n')
    result = run_serve("--config", str(config), cwd=tmp_path)
    assert_one_line_error(result, "limits.frame_bytes_max", "int")


def test_unreadable_config_file(tmp_path: Path) -> None:
    """A missing or non-TOML config file is a one-line error."""
    result = run_serve("--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert_one_line_error(result, "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = [unclosed\n")
    assert_one_line_error(run_serve("--config", str(broken), cwd=tmp_path), "not valid TOML")


def test_bad_flag_and_bad_env_value(tmp_path: Path) -> None:
    """An unknown flag exits 2 with one line; a bad environment value names the variable."""
    result = run_serve("--lisen", "x", cwd=tmp_path)
    assert_one_line_error(result, "--lisen")
    assert result.returncode == 2
    result = run_serve("--listen", "nope", cwd=tmp_path)
    assert_one_line_error(result, "listen")
    env = {"PATH": "/usr/bin:/bin", "DISTRIBUTARY_LIMITS__CONNECTIONS_MAX": "many"}
    result = run_serve("--listen", "127.0.0.1:0", cwd=tmp_path, env=env)
    assert_one_line_error(result, "DISTRIBUTARY_LIMITS__CONNECTIONS_MAX")


def test_port_in_use(tmp_path: Path) -> None:
    """Listening on a port another socket holds is a one-line error, exit 1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_serve(
            "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"), cwd=tmp_path
        )
    assert_one_line_error(result, f"127.0.0.1:{port}", "in use")
    assert result.returncode == 1


def test_data_dir_in_use_by_another_broker(broker: Any, tmp_path: Path) -> None:
    """A second broker on a running broker's data dir refuses to start."""
    result = run_serve("--listen", "127.0.0.1:0", "--data-dir", str(broker.data_dir), cwd=tmp_path)
    assert_one_line_error(result, "in use by another broker")


def test_corrupt_partition_is_reported_and_the_rest_serve(
    broker: Any, raw_client: RawFactory
) -> None:
    """After a crash, a damaged batch in a sealed segment makes that partition fail to
    open with one "partition is corrupt" line naming it; the broker starts, other
    partitions serve, and fetches of the damaged one get LOG_CORRUPT."""
    client = raw_client(broker.address)
    client.create_topic("fragile", 1, {"segment_bytes": "1024"})
    client.create_topic("sound", 1, {})
    client.produce("sound", {0: [build_batch([b"fine"])]})
    for index in range(8):
        client.produce("fragile", {0: [build_batch([bytes([index]) * 400])]})
    client.close()
    broker.kill()
    segments = sorted((broker.data_dir / "fragile-0").glob("*.log"))
    assert len(segments) >= 3
    data = bytearray(segments[0].read_bytes())
    data[200] ^= 0xFF
    segments[0].write_bytes(bytes(data))
    broker.start()
    logged = broker.wait_for_log("partition is corrupt")
    assert (logged["topic"], logged["partition"]) == ("fragile", 0)
    assert "position" in logged["error"]
    client = raw_client(broker.address)
    body, data_by_partition = client.fetch("sound", {0: 0})
    assert body.topics[0].partitions[0].error_code == 0 and data_by_partition[0]
    body, _ = client.fetch("fragile", {0: 0})
    assert body.topics[0].partitions[0].error_code == ErrorCode.LOG_CORRUPT
    assert "fragile-0" in body.topics[0].partitions[0].error_message


def test_help_and_version(tmp_path: Path) -> None:
    """``--help`` documents the serve flags and ``--version`` prints the version."""
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    for flag in ("--config", "--data-dir", "--listen", "--log-format"):
        assert flag in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "broker", "--version"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and "distributary" in result.stdout
