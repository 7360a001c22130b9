"""Target assignment: which topics each member subscribes to, and what each should own.

:class:`Subscriptions` holds a snapshot of the topics that exist (name ->
partition count) with a version that goes up whenever the snapshot changes.  A
member's subscription (topic names and/or one regex) is resolved against the
snapshot once per version and remembered on the member.

:func:`rebalance` recomputes a group's target when its membership or a
subscription changed, or when a subscribed topic's partition count did: it
bumps the group epoch, picks the assignor most members ask for, and asks it
for the new target (assignors.py).  Members then reconcile towards it
(group.py).  :func:`epoch_records` turns a raised group epoch into the record
that keeps it across a restart.

Regexes are compiled by RE2 (the ``google-re2`` package, as Kafka's broker
does for its regex subscriptions): matching takes time linear in the topic
name whatever the pattern, so a pattern like ``(a+)+`` cannot stall the event
loop the way a backtracking engine would.  RE2 accepts Python's ``re`` syntax
except backreferences and lookarounds; a pattern it refuses is an
InvalidRequestError for the member that sent it.  A regex never matches an
internal topic (one whose name starts with ``__``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Protocol

import re2  # type: ignore[import-untyped]

from broker.groups.assignors import ASSIGNORS, MemberSubscription
from broker.groups.group import Group, Member
from broker.groups.records import (
    GroupMetadataKey,
    GroupMetadataValue,
    Record,
    encode_key,
    encode_value,
)
from client.errors import InvalidRequestError

# A regex is compiled by the broker, so its length is bounded; RE2 bounds the
# time to match it (linear in the topic name) and its memory (below).
TOPIC_REGEX_CHARS_MAX: Final = 1_000
# Compiled patterns kept (the cache is emptied when full): members of one group
# usually share one pattern, so this covers a thousand distinct subscriptions.
PATTERN_CACHE_MAX: Final = 1_000
# RE2's memory budget for one compiled pattern (its default, 8 MiB); a pattern
# that needs more is refused at compile time.
PATTERN_MEMORY_BYTES_MAX: Final = 8 * 1024 * 1024
# Internal topics start with this and never match a regex subscription.
INTERNAL_TOPIC_PREFIX: Final = "__"


class TopicPattern(Protocol):
    """A compiled subscription regex (what this module needs of RE2's pattern)."""

    def fullmatch(self, text: str) -> object | None: ...


def compile_topic_regex(regex: str) -> TopicPattern:
    """Compile a subscription regex with RE2.

    Raises InvalidRequestError: the pattern is longer than TOPIC_REGEX_CHARS_MAX,
    is not valid, or uses what RE2 does not support (backreferences, lookarounds).
    """
    if len(regex) > TOPIC_REGEX_CHARS_MAX:
        raise InvalidRequestError(f"topic regex longer than {TOPIC_REGEX_CHARS_MAX} characters")
    options = re2.Options()
    options.log_errors = False  # the member gets the error; the broker's stderr stays quiet
    options.max_mem = PATTERN_MEMORY_BYTES_MAX
    try:
        pattern: TopicPattern = re2.compile(regex, options)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise InvalidRequestError(
            f"topic regex {regex!r} is not supported: {reason} (the broker uses RE2 syntax: "
            "no backreferences or lookarounds)"
        ) from None
    return pattern


class Subscriptions:
    """The topics that exist (refreshed from an injected callable) and the
    compiled regexes of the members' subscriptions."""

    def __init__(self, topic_partitions: Callable[[], Mapping[str, int]]) -> None:
        self._topic_partitions = topic_partitions
        self.topics: dict[str, int] = {}
        self.version = 0
        self._patterns: dict[str, TopicPattern] = {}

    def refresh(self) -> None:
        """Take a new snapshot of the topics; the version goes up if it changed."""
        topics = dict(self._topic_partitions())
        if topics != self.topics:
            self.topics = topics
            self.version += 1

    def pattern(self, regex: str) -> TopicPattern:
        """The compiled ``regex`` (cached).  Raises InvalidRequestError (see
        :func:`compile_topic_regex`)."""
        pattern = self._patterns.get(regex)
        if pattern is not None:
            return pattern
        pattern = compile_topic_regex(regex)
        if len(self._patterns) >= PATTERN_CACHE_MAX:
            self._patterns.clear()
        self._patterns[regex] = pattern
        return pattern

    def resolve(self, member: Member) -> frozenset[str]:
        """The topics ``member`` subscribes to now: its names (existing or not)
        plus every non-internal topic its regex fully matches."""
        if member.resolved_version != self.version:
            topics = set(member.subscribed_topic_names)
            if member.subscribed_topic_regex is not None:
                pattern = self.pattern(member.subscribed_topic_regex)
                topics.update(
                    topic
                    for topic in self.topics
                    if not topic.startswith(INTERNAL_TOPIC_PREFIX) and pattern.fullmatch(topic)
                )
            member.resolved_topics = frozenset(topics)
            member.resolved_version = self.version
        return member.resolved_topics


def rebalance(
    group: Group, subscriptions: Subscriptions, default_assignor: str, *, changed: bool
) -> None:
    """Bump the group epoch and recompute the target if membership or a
    subscription changed (``changed``) or a subscribed topic's partition count did."""
    if group.topics_version != subscriptions.version or changed:
        subscribed: set[str] = set()
        for member in group.members.values():
            subscribed |= subscriptions.resolve(member)
        topics = subscriptions.topics
        metadata = {topic: topics[topic] for topic in sorted(subscribed) if topic in topics}
        group.topics_version = subscriptions.version
        changed |= metadata != group.subscription_metadata
        group.subscription_metadata = metadata
    if not changed:
        return
    group.bump_epoch()
    group.assignor_name = choose_assignor(group, default_assignor)
    members = {
        member.member_id: MemberSubscription(subscriptions.resolve(member), member.instance_id)
        for member in group.members.values()
    }
    target = ASSIGNORS[group.assignor_name].assign(
        members, group.subscription_metadata, group.target
    )
    group.target = dict(target.items())
    group.assignment_epoch = group.group_epoch


def choose_assignor(group: Group, default_assignor: str) -> str:
    """The assignor most members ask for (ties: by name), else ``default_assignor``."""
    votes: dict[str, int] = {}
    for member in group.members.values():
        if member.assignor is not None:
            votes[member.assignor] = votes.get(member.assignor, 0) + 1
    if not votes:
        return default_assignor
    return min(votes, key=lambda name: (-votes[name], name))


def epoch_records(group: Group) -> list[Record]:
    """The group's metadata record if its epoch went up since the last one handed
    out (none otherwise), so epochs never go back across a restart."""
    if group.group_epoch <= group.persisted_epoch:
        return []
    group.persisted_epoch = group.group_epoch
    key = encode_key(GroupMetadataKey(group.group_id))
    value = encode_value(GroupMetadataValue(group.group_epoch, group.assignor_name))
    return [(key, value)]
