"""The shipped pytest plugin (broker/pytest_plugin.py), run as a user's test suite would
run it: pytester writes a test file, runs pytest on it, and we read the outcome."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import os
from pathlib import Path

from client.sync import Consumer, Producer


def test_round_trip(distributary_broker, distributary_admin):
    distributary_admin.create_topic("orders", partitions=2)
    with Producer(distributary_broker.address) as producer:
        producer.send("orders", b"one", partition=0)
        producer.send("orders", b"two", partition=1)
    with Consumer(distributary_broker.address, auto_offset_reset="earliest") as consumer:
        consumer.assign(["orders"])
        values = set()
        for _ in range(50):
            for records in consumer.getmany(timeout_ms=200).values():
                values.update(record.value for record in records)
            if len(values) == 2:
                break
    assert values == {b"one", b"two"}
    Path("pids.txt").open("a").write(f"{distributary_broker.process.pid}\\n")


def test_sees_topics(distributary_broker, distributary_admin):
    Path("topics.txt").open("a").write(",".join(sorted(distributary_admin.list_topics())) + "\\n")
    Path("pids.txt").open("a").write(f"{distributary_broker.process.pid}\\n")
"""


def _pids(pytester: pytest.Pytester) -> list[int]:
    return [int(line) for line in (pytester.path / "pids.txt").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_function_scope_gives_each_test_a_fresh_broker(pytester: pytest.Pytester) -> None:
    """Proves the default scope starts one broker per test (the second test does not see the
    first test's topic), the fixtures work for a produce/consume round trip, and every
    broker is stopped when its test ends."""
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-q")
    result.assert_outcomes(passed=2)
    pids = _pids(pytester)
    assert len(set(pids)) == 2
    assert "orders" not in (pytester.path / "topics.txt").read_text()
    assert not any(_alive(pid) for pid in pids)


def test_session_scope_shares_one_broker(pytester: pytest.Pytester) -> None:
    """Proves --distributary-scope=session runs every test against the same broker (the
    second test sees the first one's topic) and stops it at the end of the run."""
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-q", "--distributary-scope=session"
    )
    result.assert_outcomes(passed=2)
    pids = _pids(pytester)
    assert len(set(pids)) == 1
    assert "orders" in (pytester.path / "topics.txt").read_text()
    assert not _alive(pids[0])


def test_ini_scope_and_config_file(pytester: pytest.Pytester) -> None:
    """Proves the ini options choose the scope and hand the broker a config file (here a
    default partition count that the created topic then has)."""
    pytester.makeini("[pytest]\ndistributary_scope = session\ndistributary_config = broker.toml\n")
    (pytester.path / "broker.toml").write_text("default_partitions = 3\n")
    pytester.makepyfile(
        test_user="""
def test_default_partitions(distributary_admin):
    distributary_admin.create_topic("events", partitions=-1)
    assert len(distributary_admin.describe_topics(["events"])[0].partitions) == 3
"""
    )
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=1)


def test_bad_scope_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """Proves an unknown scope in the ini file fails the run with one clear line."""
    pytester.makeini("[pytest]\ndistributary_scope = module\n")
    pytester.makepyfile(test_user="def test_x(distributary_broker):\n    pass\n")
    result = pytester.runpytest_subprocess("-q")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*distributary_scope must be one of function, session*"])
