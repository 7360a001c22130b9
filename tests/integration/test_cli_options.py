"""Options every client command shares, run as real subprocesses against a real broker."""

from __future__ import annotations

import subprocess
from typing import Any

from test_cli_commands import Cli, clean_env, cli_prefix


def test_bootstrap_before_the_command(broker: Any) -> None:
    """Proves `distributary -b ADDRESS topics list` uses ADDRESS (the option is accepted
    before the subcommand), and one given after the subcommand still wins."""
    cli = Cli(broker.address)
    cli.ok("topics", "create", "early")
    before = subprocess.run(
        [*cli_prefix(), "-b", broker.address, "topics", "list"],
        capture_output=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert before.returncode == 0, before.stderr
    assert before.stdout.decode().split() == ["early"]
    overridden = subprocess.run(
        [*cli_prefix(), "-b", "127.0.0.1:1", "topics", "list", "-b", broker.address],
        capture_output=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert overridden.returncode == 0, overridden.stderr


def test_reset_offsets_to_datetime_accepts_the_tail_forms(broker: Any) -> None:
    """Proves `groups reset-offsets --to-datetime` takes the `-o @...` forms, with or
    without the @ (a relative time here), as documented."""
    cli = Cli(broker.address)
    cli.ok("topics", "create", "dated")
    cli.ok("publish", "dated", input=b"a\nb\n")
    for when in ("@-1h", "-1h", "@0"):
        result = cli.run(
            *("groups", "reset-offsets", "g", "--topic", "dated", "--to-datetime", when),
            *("--dry-run", "-b", broker.address),
            raw_argv=True,
        )
        assert result.returncode == 0 and b"dated" in result.stdout, result


def run_groups(
    cli: Cli, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return cli.run("groups", *args, "-b", cli.address, raw_argv=True, input=input)


def test_reset_offsets_seeds_a_new_group_on_chosen_partitions(broker: Any) -> None:
    """Proves reset-offsets creates a group that does not exist yet (as Admin.set_offsets
    does), and `--topic T:P` touches only the listed partitions."""
    cli = Cli(broker.address)
    cli.ok("topics", "create", "seeded", "--partitions", "3")
    for partition in range(3):
        cli.ok("publish", "seeded", "-p", str(partition), input=b"a\nb\nc\n")
    result = run_groups(cli, "reset-offsets", "fresh", "--topic", "seeded:0,2", "--to-offset", "2")
    assert result.returncode == 0, result.stderr
    exported = run_groups(cli, "export-offsets", "fresh")
    assert exported.stdout == b"seeded,0,2\nseeded,2,2\n", exported


def test_export_then_import_copies_a_groups_offsets(broker: Any) -> None:
    """Proves export-offsets writes topic,partition,offset lines that reset-offsets
    --from-file reads back into another group, and --all-topics covers every topic the
    group has commits for."""
    cli = Cli(broker.address)
    for topic in ("one", "two"):
        cli.ok("topics", "create", topic)
        cli.ok("publish", topic, input=b"x\ny\nz\n")
    assert (
        run_groups(
            cli, "reset-offsets", "src", "--topic", "one", "--topic", "two", "--to-latest"
        ).returncode
        == 0
    )
    assert (
        run_groups(cli, "reset-offsets", "src", "--all-topics", "--shift-by", "-1").returncode == 0
    )
    exported = run_groups(cli, "export-offsets", "src").stdout
    assert exported == b"one,0,2\ntwo,0,2\n"
    copied = run_groups(cli, "reset-offsets", "copy", "--from-file", "-", input=exported)
    assert copied.returncode == 0, copied.stderr
    assert run_groups(cli, "export-offsets", "copy").stdout == exported


def test_reset_offsets_bad_input_is_one_line(broker: Any) -> None:
    """Proves a bad --topic partition list, a missing partition, an unknown topic, a bad
    offsets file and a missing partition choice each give one clear line."""
    cli = Cli(broker.address)
    cli.ok("topics", "create", "small")
    cases = [
        (("--topic", "small:x", "--to-earliest"), "expected TOPIC or TOPIC:P"),
        (("--topic", "small:5", "--to-earliest"), "has no partition 5"),
        (("--topic", "nope", "--to-earliest"), "unknown topic 'nope'"),
        (("--to-earliest",), "choose the partitions"),
        (("--from-file", "-"), "expected topic,partition,offset"),
    ]
    for args, needle in cases:
        result = run_groups(cli, "reset-offsets", "g", *args, input=b"small,zero,1\n")
        assert result.returncode != 0 and needle in result.stderr.decode(), (args, result.stderr)
        assert b"Traceback" not in result.stderr


def test_unreachable_broker_is_tried_once_per_connect_attempt() -> None:
    """Proves a broker that cannot be reached is given up after one round of connect
    attempts (reconnect_attempts_max, 5), not that round multiplied by the retry
    layers above it (which made `topics list` take 9 s): a listener that closes
    every connection at once sees exactly 5 connections."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def accept_and_close() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            connection.close()

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        result = subprocess.run(
            [*cli_prefix(), "topics", "list", "-b", address],
            capture_output=True,
            timeout=60,
            env=clean_env(),
            check=False,
        )
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    assert len(accepted) == 5, (len(accepted), result.stderr)
