"""The group coordinator's settings: timeout bounds, defaults and the offsets topic.

One frozen msgspec Struct, the ``[groups]`` table of the broker config.  A
consumer may ask for its own session timeout and heartbeat interval; the
coordinator clamps them into ``[*_min_ms, *_max_ms]`` and tells the consumer the
values it uses (in every heartbeat response), as Kafka's
``group.consumer.{min,max}.session.timeout.ms`` do.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

OFFSETS_TOPIC: Final = "__consumer_offsets"
ASSIGNOR_NAMES: Final = ("range", "sticky")

Positive = Annotated[int, msgspec.Meta(ge=1)]


class GroupConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Coordinator settings.  Every duration is in milliseconds."""

    # A member that sends no heartbeat for this long is expelled and its partitions
    # move (10 s: long enough for a GC pause or a slow batch, short enough that a
    # crashed consumer's partitions are picked up quickly; Kafka's KIP-848 uses 45 s).
    session_timeout_ms: Positive = 10_000
    # The bounds a consumer's own session timeout is clamped into.  The floor keeps
    # a typo from expelling members between two heartbeats; the ceiling keeps a
    # crashed member from holding its partitions for an hour.
    session_timeout_min_ms: Positive = 1_000
    session_timeout_max_ms: Positive = 300_000
    # How often a member heartbeats (1 s): a partition released by one member is
    # picked up by the next owner within about one interval.  Clamped like above.
    heartbeat_interval_ms: Positive = 1_000
    heartbeat_interval_min_ms: Positive = 100
    heartbeat_interval_max_ms: Positive = 30_000
    # How long a member may take to release partitions it was told to release
    # before it is expelled (Kafka's max.poll.interval.ms, 5 minutes; a member that
    # keeps heartbeating but never releases would otherwise stall the group).
    rebalance_timeout_ms: Positive = 300_000
    # Members per group (a guard: the assignors are O(members * partitions)).
    group_members_max: Positive = 1_000
    # The assignor a group uses when its members name none.
    default_assignor: str = "sticky"
    # Committed-offset metadata text, in characters (Kafka offset.metadata.max.bytes).
    offset_metadata_max_chars: Positive = 4_096
    # Partitions of __consumer_offsets (a group's commits all go to one of them,
    # chosen by a stable hash of its id); fixed once the topic exists.
    offsets_topic_partitions: Positive = 8
    # Segment size of __consumer_offsets: small, so the cleaner gets sealed
    # segments to compact soon (Kafka's offsets.topic.segment.bytes is 100 MiB).
    offsets_segment_bytes: Positive = 16 * 1024 * 1024
    # Roll an offsets segment at least this often (1 hour), for the same reason.
    offsets_segment_ms: Positive = 3_600_000
    # How often the cleaner looks at __consumer_offsets (30 s; Kafka's
    # log.cleaner.backoff.ms is 15 s).
    offsets_compaction_check_interval_ms: Positive = 30_000
    # Tombstones (deleted groups) stay this long before the cleaner drops them
    # (Kafka's delete.retention.ms, 1 day).
    offsets_delete_retention_ms: Positive = 86_400_000

    def __post_init__(self) -> None:
        """Raises ValueError when bounds contradict each other."""
        if (
            not self.session_timeout_min_ms
            <= self.session_timeout_ms
            <= (self.session_timeout_max_ms)
        ):
            raise ValueError("groups.session_timeout_ms is outside its [min, max] bounds")
        if (
            not self.heartbeat_interval_min_ms
            <= self.heartbeat_interval_ms
            <= (self.heartbeat_interval_max_ms)
        ):
            raise ValueError("groups.heartbeat_interval_ms is outside its [min, max] bounds")
        if self.default_assignor not in ASSIGNOR_NAMES:
            raise ValueError(f"groups.default_assignor must be one of {', '.join(ASSIGNOR_NAMES)}")

    def clamp_session_timeout_ms(self, requested_ms: int) -> int:
        """The session timeout a member gets when it asks for ``requested_ms``
        (<= 0: the default)."""
        if requested_ms <= 0:
            return self.session_timeout_ms
        return min(max(requested_ms, self.session_timeout_min_ms), self.session_timeout_max_ms)

    def clamp_heartbeat_interval_ms(self, requested_ms: int, session_timeout_ms: int) -> int:
        """The heartbeat interval for ``requested_ms`` (<= 0: the default), never more
        than a third of the session timeout (so two lost heartbeats do not expel)."""
        interval_ms = self.heartbeat_interval_ms if requested_ms <= 0 else requested_ms
        interval_ms = min(
            max(interval_ms, self.heartbeat_interval_min_ms), self.heartbeat_interval_max_ms
        )
        return max(1, min(interval_ms, session_timeout_ms // 3))
