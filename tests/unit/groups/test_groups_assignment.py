"""Tests for broker.groups.assignment: subscription regexes (RE2), topic snapshots
and the resolution of a member's subscription."""

from __future__ import annotations

import pytest

from broker.groups.assignment import (
    TOPIC_REGEX_CHARS_MAX,
    Subscriptions,
    compile_topic_regex,
)
from broker.groups.coordinator import HeartbeatRequest
from broker.groups.group import Member
from client.errors import InvalidRequestError
from client.types import TopicPartition

from .harness import Harness


def test_catastrophic_pattern_matches_in_linear_time() -> None:
    """``(a+)+`` against a name that almost matches, which takes a backtracking engine
    exponential time (hours here), gives the right answers at once."""
    pattern = compile_topic_regex("(a+)+")
    assert pattern.fullmatch("a" * 200 + "-x") is None
    assert pattern.fullmatch("a" * 200) is not None


def test_overlong_regex_is_an_invalid_request() -> None:
    """A regex longer than TOPIC_REGEX_CHARS_MAX is refused before compiling."""
    compile_topic_regex("a" * TOPIC_REGEX_CHARS_MAX)
    with pytest.raises(InvalidRequestError, match="longer than"):
        compile_topic_regex("a" * (TOPIC_REGEX_CHARS_MAX + 1))


def test_resolve_follows_the_topic_snapshot() -> None:
    """A member's resolved topics are its names plus the non-internal regex matches,
    recomputed only when the snapshot's version moves."""
    topics = {"orders-eu": 1, "__internal": 1, "other": 1}
    subscriptions = Subscriptions(lambda: topics)
    subscriptions.refresh()
    member = Member("m", None, "", "", 1_000, 100, 1_000, 0, ("listed",), "orders-.*|__.*")
    assert subscriptions.resolve(member) == {"listed", "orders-eu"}
    version = subscriptions.version
    subscriptions.refresh()
    assert subscriptions.version == version  # nothing changed
    topics["orders-us"] = 2
    subscriptions.refresh()
    assert subscriptions.version == version + 1
    assert subscriptions.resolve(member) == {"listed", "orders-eu", "orders-us"}


def test_catastrophic_regex_cannot_stall_the_coordinator() -> None:
    """A subscription regex that makes a backtracking engine take exponential time
    (``(a+)+`` against a long topic name that almost matches) resolves at once:
    RE2 matches in linear time.  With Python's re this test would run for hours."""
    near_miss = "a" * 48 + "-x"
    harness = Harness({near_miss: 1, "aaaa": 2})
    member = harness.join(topics=(), subscribed_topic_regex="(a+)+")
    assert member.owned == {TopicPartition("aaaa", 0), TopicPartition("aaaa", 1)}
    harness.coordinator.check_invariants()


def test_regex_keeps_python_re_syntax() -> None:
    """Common Python re syntax (classes, escapes, named groups, alternation, inline
    flags) means the same thing to the broker's RE2 engine."""
    harness = Harness({"orders-eu": 1, "orders-us": 1, "Orders-7": 1, "audit.log": 1, "x": 1})
    member = harness.join(
        topics=(), subscribed_topic_regex=r"(?P<kind>orders)-(eu|us)|(?i:orders)-\d+|\w+\.log"
    )
    assert {tp.topic for tp in member.owned} == {"orders-eu", "orders-us", "Orders-7", "audit.log"}


@pytest.mark.parametrize("regex", [r"(a)\1", r"(?=orders)orders.*", r"(?<!x)orders", r"(?!__)\w+"])
def test_regex_re2_does_not_support_is_an_invalid_request(regex: str) -> None:
    """A pattern RE2 refuses (backreference, lookaround) is INVALID_REQUEST naming
    RE2, and the member is not added."""
    harness = Harness()
    with pytest.raises(InvalidRequestError, match="RE2"):
        harness.coordinator.heartbeat(HeartbeatRequest("g", subscribed_topic_regex=regex))
    assert harness.coordinator.group("g") is None
