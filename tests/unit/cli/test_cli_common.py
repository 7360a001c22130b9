"""Unit tests for client/cli/common.py: error descriptions, exception-group unwrapping."""

from __future__ import annotations

import trio

from client.cli.common import describe, format_bytes, single_error
from client.errors import (
    BrokerUnavailableError,
    GroupNotEmptyError,
    OffsetOutOfRangeError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)


def test_describe_names_the_broker_when_unreachable() -> None:
    """Proves an unreachable broker is reported with the bootstrap address."""
    message = describe(BrokerUnavailableError("refused"), "10.0.0.1:9392")
    assert message.startswith("broker unreachable at 10.0.0.1:9392")


def test_describe_says_the_unreachable_address_once() -> None:
    """Proves the SDK's "cannot connect to broker ADDRESS:" prefix is not repeated
    after the bootstrap address: only the reason and the attempts remain."""
    error = BrokerUnavailableError(
        "cannot connect to broker 10.0.0.1:9392: Connection refused; tried 5 times"
    )
    message = describe(error, "10.0.0.1:9392")
    assert message == "broker unreachable at 10.0.0.1:9392 (Connection refused; tried 5 times)"


def test_describe_unknown_topic_and_partition() -> None:
    """Proves a missing topic names the topic, a missing partition keeps the SDK's detail."""
    assert describe(UnknownTopicOrPartitionError("x"), "h:1", "orders") == (
        "unknown topic 'orders' at h:1"
    )
    detail = describe(UnknownTopicOrPartitionError("no partition orders-7"), "h:1", "orders")
    assert detail == "topic 'orders': no partition orders-7"


def test_describe_does_not_repeat_the_topic() -> None:
    """Proves a partition error whose text already names the topic is not prefixed again."""
    error = UnknownTopicOrPartitionError("topic 'j' has no partition 7")
    assert describe(error, "h:1", "j") == "topic 'j' has no partition 7"


def test_describe_uses_words_not_class_names() -> None:
    """Proves other typed errors read as the error code in words, never a Python class
    name, and a text that already starts with those words is not repeated."""
    message = describe(GroupNotEmptyError("group 'billing' has 2 members"), "h:1")
    assert message == "group not empty: group 'billing' has 2 members"
    assert "Error" not in describe(OffsetOutOfRangeError("offset 9 past 5"), "h:1")
    assert describe(OffsetOutOfRangeError("offset out of range: 9"), "h:1") == (
        "offset out of range: 9"
    )
    assert describe(FileNotFoundError(2, "No such file or directory", "in.txt"), "h:1") == (
        "No such file or directory: in.txt"
    )


def test_describe_is_one_line() -> None:
    """Proves multi-line error texts are cut to their first line."""
    message = describe(TopicAlreadyExistsError("first\nsecond"), "h:1")
    assert "\n" not in message and "first" in message


def test_single_error_unwraps_nested_groups_and_ignores_cancellations() -> None:
    """Proves the one real error inside nested exception groups (with Cancelled siblings) wins."""
    inner = UnknownTopicOrPartitionError("t")
    cancelled = trio.Cancelled._create()  # type: ignore[attr-defined]
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [inner]), cancelled])
    assert single_error(group) is inner
    two = ExceptionGroup("two", [ValueError(), KeyError()])
    assert single_error(two) is two


def test_format_bytes() -> None:
    """Proves byte counts are humanised with binary units."""
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"
