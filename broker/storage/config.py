"""Per-log configuration: segment rolling, retention, indexing and the flush policy.

A frozen msgspec Struct, so a topic's config decodes from TOML/JSON/msgpack with
one typed call (:meth:`LogConfig.from_mapping`) and bad values fail there, as
InvalidConfigError, not deep inside the log.  Defaults follow Kafka's (named in
each comment), except where a Python broker argues otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from client.errors import InvalidConfigError
from client.records.header import BATCH_BYTES_MAX_DEFAULT, HEADER_BYTES

MIB: Final = 1024 * 1024
GIB: Final = 1024 * MIB
DAY_MS: Final = 24 * 60 * 60 * 1000

# Index entries store a file position and a relative offset as u32; we keep both
# below 2**31 like Kafka (which stores them as signed ints), so a segment file is
# at most 2 GiB - 1 plus the one append that crossed the limit.
SEGMENT_BYTES_LIMIT: Final = (1 << 31) - 1
SEGMENT_BYTES_MIN: Final = 1024  # small segments are for tests; Kafka's floor is 14 bytes


class FlushPolicy(enum.Enum):
    """When the log fsyncs.  Kafka's default is NEVER: durability comes from
    replication, and the OS writes the page cache back on its own schedule."""

    EVERY_APPEND = "every-append"  # fsync before an append is acknowledged
    INTERVAL = "interval"  # fsync when flush_interval_ms has passed since the last one
    NEVER = "never"  # leave it to the OS (and to close)


class CleanupPolicy(enum.Enum):
    """What keeps a log from growing forever (Kafka's cleanup.policy)."""

    DELETE = "delete"  # drop whole old segments by retention_ms / retention_bytes
    COMPACT = "compact"  # keep the newest record per key (see compaction.py); no retention


class LogConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configuration of one partition's log.  ``None`` means "no limit"."""

    # Roll to a new segment when the active one would exceed this (Kafka
    # segment.bytes, 1 GiB): big enough that opening a log touches few files.
    segment_bytes: int = GIB
    # ...or when its first batch is this old (Kafka segment.ms, 7 days), so
    # retention by age can delete whole segments of a slow topic.
    segment_ms: int = 7 * DAY_MS
    # Delete sealed segments whose newest timestamp is older (Kafka retention.ms).
    retention_ms: int | None = 7 * DAY_MS
    # Delete the oldest sealed segments while the log is bigger (Kafka
    # retention.bytes, unlimited by default).
    retention_bytes: int | None = None
    # One offset-index entry per this many log bytes (Kafka index.interval.bytes):
    # a lookup then scans at most ~4 KiB of batch headers.
    index_interval_bytes: int = 4096
    flush_policy: FlushPolicy = FlushPolicy.NEVER
    # Used by FlushPolicy.INTERVAL (Kafka flush.ms); 1 s bounds what a power loss
    # can take without fsyncing each tiny append.
    flush_interval_ms: int = 1000
    # How often the maintenance task checks retention, or compaction for a compacted
    # log (Kafka log.retention.check.interval.ms, 5 minutes).
    retention_check_interval_ms: int = 5 * 60 * 1000
    # The biggest batch this log accepts (Kafka max.message.bytes).
    batch_bytes_max: int = BATCH_BYTES_MAX_DEFAULT
    cleanup_policy: CleanupPolicy = CleanupPolicy.DELETE
    # Compacted logs: a tombstone (a record whose value is None) is kept this long
    # so readers see the deletion, then the cleaner drops it (Kafka
    # delete.retention.ms, 1 day).
    delete_retention_ms: int = DAY_MS
    # Replication (the log itself ignores these two).  acks=all is refused with
    # NOT_ENOUGH_REPLICAS while fewer replicas are in sync (Kafka
    # min.insync.replicas; a cluster stores 2 with each new topic of replication
    # factor 3 or more that does not set it).
    min_insync_replicas: int = 1
    # Elect a replica that was not in sync when none that was is alive, losing
    # what it lacks (Kafka unclean.leader.election.enable).
    unclean_leader_election_enable: bool = False

    def __post_init__(self) -> None:
        """Raises InvalidConfigError naming the first bad field."""
        _check_range("segment_bytes", self.segment_bytes, SEGMENT_BYTES_MIN, SEGMENT_BYTES_LIMIT)
        _check_range("segment_ms", self.segment_ms, 1, None)
        if self.retention_ms is not None:
            _check_range("retention_ms", self.retention_ms, 0, None)
        if self.retention_bytes is not None:
            _check_range("retention_bytes", self.retention_bytes, 0, None)
        _check_range("index_interval_bytes", self.index_interval_bytes, 1, SEGMENT_BYTES_LIMIT)
        _check_range("flush_interval_ms", self.flush_interval_ms, 1, None)
        _check_range("retention_check_interval_ms", self.retention_check_interval_ms, 1, None)
        _check_range("batch_bytes_max", self.batch_bytes_max, HEADER_BYTES, SEGMENT_BYTES_LIMIT)
        _check_range("delete_retention_ms", self.delete_retention_ms, 0, None)
        _check_range("min_insync_replicas", self.min_insync_replicas, 1, None)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LogConfig:
        """Decode a config table (e.g. parsed TOML).  Raises InvalidConfigError for an
        unknown key, a wrong type or a value out of range."""
        try:
            return msgspec.convert(dict(values), cls)
        except msgspec.ValidationError as error:
            raise InvalidConfigError(f"log config: {error}") from error

    def with_changes(self, **changes: Any) -> LogConfig:
        """A copy with some fields replaced (validated).  Raises InvalidConfigError."""
        return LogConfig.from_mapping({**msgspec.structs.asdict(self), **changes})


def _check_range(name: str, value: object, low: int, high: int | None) -> None:
    if type(value) is not int:
        raise InvalidConfigError(f"log config {name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidConfigError(f"log config {name}={value} is out of range {bound}")
