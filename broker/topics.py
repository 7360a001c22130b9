"""Topics: names, per-topic configs, and the partitions each one owns.

The list of topics lives in ``<data_dir>/topics.json`` (written atomically: temp
file, fsync, rename, fsync the directory).  It is the source of truth: a
partition directory belongs to a topic only if the file names the topic.  So a
create writes the file first and then opens the logs (a crash in between leaves
a topic whose logs are created at the next start); a delete writes the file
first and then closes and removes the directories (a crash in between leaves
orphan directories that are logged at start and removed by the next create of
that name).

Per-topic configs are stored as the key=value strings the client sent (only the
overrides); the effective LogConfig is the broker's ``topic_defaults`` with them
applied, so changing a default in the broker config reaches every topic that did
not override it.

A ``batch_bytes_max`` that a topic sets must leave room for the frame that
carries its biggest batch: a batch plus :data:`FRAME_ROOM_BYTES` (frame header
and a metadata body) must fit under the broker's ``frame_bytes_max``.  It is
checked where it is set -- at creation and at an alter (INVALID_CONFIG), in the
config file's ``topic_defaults`` (broker/config.py) -- and a stored topic that no
longer fits (the frame limit was lowered) is logged at start-up.  The built-in
default (16 MiB) is not checked: under a smaller frame limit the frame limit is
simply the tighter of the two.

An alter (:meth:`TopicManager.alter_configs`) replaces the stored overrides and
hands the new LogConfig to the topic's open partitions at once; an
add-partitions (:meth:`TopicManager.add_partitions`) raises the count, writes
the file, then opens the new logs (a crash in between creates them at the next
start, as for a create).

Concurrency: create, delete, alter and add-partitions hold ``_change_lock`` so
metadata writes never interleave; lookups are plain dict reads on the
event-loop thread.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from broker.logging import get_logger
from broker.partition import Partition, partition_directory
from broker.storage.atomic_file import write_atomic
from broker.storage.config import LogConfig
from client.errors import (
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    LogCorruptError,
    StorageError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from client.protocol.frames import (
    BODY_BYTES_MAX_DEFAULT,
    FRAME_BYTES_MAX_DEFAULT,
    FRAME_HEADER_BYTES,
)

TOPICS_FILE: Final = "topics.json"
TOPICS_FILE_VERSION: Final = 1
# Kafka's limit: a topic name becomes a directory name plus "-<partition>".
TOPIC_NAME_BYTES_MAX: Final = 249
_TOPIC_NAME: Final = re.compile(r"^[a-zA-Z0-9._-]+$")
# Partitions named in the one error a failed close raises.
_CLOSE_FAILURES_NAMED: Final = 5
# What a frame holds besides one batch: its header and a metadata body (bounded
# by the body limit).  batch_bytes_max + this must fit under frame_bytes_max.
FRAME_ROOM_BYTES: Final = FRAME_HEADER_BYTES + BODY_BYTES_MAX_DEFAULT
# The value of an alter that removes an override (the broker default applies).
DEFAULT_VALUE: Final = "default"

_logger = get_logger()


class TopicRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One topic as stored in topics.json."""

    partitions: int
    configs: dict[str, str] = {}
    created_ms: int = 0


class TopicsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: int = TOPICS_FILE_VERSION
    topics: dict[str, TopicRecord] = {}


def validate_topic_name(name: str) -> None:
    """Raise InvalidTopicError unless ``name`` is 1..249 of [a-zA-Z0-9._-] and not
    "." or ".." (which are directory names)."""
    if not name:
        raise InvalidTopicError("topic name is empty")
    if len(name) > TOPIC_NAME_BYTES_MAX:
        raise InvalidTopicError(
            f"topic name is {len(name)} characters, more than {TOPIC_NAME_BYTES_MAX}"
        )
    if name in (".", ".."):
        raise InvalidTopicError(f"topic name {name!r} is not allowed")
    if _TOPIC_NAME.match(name) is None:
        raise InvalidTopicError(f"topic name {name!r} may only hold [a-zA-Z0-9._-]")


def log_config_for(defaults: LogConfig, overrides: Mapping[str, str]) -> LogConfig:
    """The defaults with a topic's key=value overrides applied.

    Keys may be spelled like ours (``retention_ms``) or like Kafka's
    (``retention.ms``).  The value ``none`` (or ``null``) means "no limit" where a
    key allows it.  Raises InvalidConfigError naming an unknown key or bad value.
    """
    fields = {info.name: info.type for info in msgspec.structs.fields(LogConfig)}
    changes: dict[str, Any] = {}
    for raw_key, raw_value in overrides.items():
        key = raw_key.strip().replace(".", "_").replace("-", "_").lower()
        if key not in fields:
            raise InvalidConfigError(f"unknown topic config key {raw_key!r}")
        value = raw_value.strip()
        if value.lower() == "none":
            value = "null"
        try:
            changes[key] = msgspec.convert(value, fields[key], strict=False)
        except msgspec.ValidationError as error:
            message = str(error).partition(" - at `$")[0]
            raise InvalidConfigError(f"topic config {raw_key}={raw_value!r}: {message}") from error
    return defaults.with_changes(**changes) if changes else defaults


def batch_bytes_max_limit(frame_bytes_max: int) -> int:
    """The largest ``batch_bytes_max`` a broker with this ``frame_bytes_max`` can carry."""
    return frame_bytes_max - FRAME_ROOM_BYTES


def check_fits_frame(config: LogConfig, frame_bytes_max: int) -> None:
    """Raise InvalidConfigError, naming both limits, when a batch of the config's
    ``batch_bytes_max`` could not travel in a frame of ``frame_bytes_max`` bytes."""
    limit = batch_bytes_max_limit(frame_bytes_max)
    if config.batch_bytes_max > limit:
        raise InvalidConfigError(
            f"batch_bytes_max={config.batch_bytes_max} does not fit in the broker's "
            f"limits.frame_bytes_max={frame_bytes_max} (at most {limit}: a frame also "
            f"holds {FRAME_ROOM_BYTES} bytes of header and body); raise "
            "limits.frame_bytes_max first"
        )


def config_strings(config: LogConfig) -> dict[str, str]:
    """Every LogConfig field as a string, for DescribeTopics."""
    values = msgspec.to_builtins(config)
    return {key: "none" if value is None else str(value) for key, value in values.items()}


class Topic:
    """A topic and its open partitions."""

    def __init__(self, name: str, record: TopicRecord, config: LogConfig) -> None:
        self.name = name
        self.record = record
        self.config = config
        self.partitions: list[Partition] = []


class TopicManager:
    """Creates, deletes, finds and persists topics.  One per broker."""

    def __init__(
        self,
        data_dir: Path,
        defaults: LogConfig,
        clock_ms: Callable[[], int],
        partitions_max: int,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
    ) -> None:
        self.data_dir = data_dir
        self.defaults = defaults
        self.partitions_max = partitions_max
        self.frame_bytes_max = frame_bytes_max
        self._clock_ms = clock_ms
        self._topics: dict[str, Topic] = {}
        self._change_lock = trio.Lock()

    # -- start-up ---------------------------------------------------------------------

    async def load(self) -> None:
        """Read topics.json and open every partition's log (recovering as needed),
        before serving.  A partition whose log is corrupt or unreadable is logged
        (one "partition is corrupt" line naming it) and kept as a failed partition
        (:meth:`Partition.failed`): requests for it get its error, every other
        partition serves.  Raises StorageError (unreadable topics file)."""
        stored = await trio.to_thread.run_sync(self._read_file)
        for name, record in sorted(stored.topics.items()):
            try:
                config = log_config_for(self.defaults, record.configs)
            except InvalidConfigError as error:
                raise StorageError(f"{TOPICS_FILE}: topic {name}: {error.message}") from error
            try:
                self._check_set_batch_bytes_max(record.configs, config)
            except InvalidConfigError as error:
                _logger.warning(
                    "topic config does not fit the frame limit", topic=name, error=error.message
                )
            topic = Topic(name, record, config)
            self._topics[name] = topic
            for index in range(record.partitions):
                try:
                    partition = await Partition.open(
                        self.data_dir, name, index, config, self._clock_ms
                    )
                except (LogCorruptError, StorageError) as error:
                    failure = type(error)(f"partition {name}-{index} is corrupt: {error.message}")
                    if isinstance(error, StorageError):
                        failure = StorageError(
                            f"partition {name}-{index} cannot be opened: {error.message}"
                        )
                    _logger.error(
                        "partition is corrupt"
                        if isinstance(error, LogCorruptError)
                        else "partition cannot be opened",
                        topic=name,
                        partition=index,
                        error=error.message,
                    )
                    partition = Partition.failed(name, index, config, failure)
                topic.partitions.append(partition)
        await trio.to_thread.run_sync(self._warn_about_orphans)

    def _read_file(self) -> TopicsFile:
        path = self.data_dir / TOPICS_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return TopicsFile()
        except OSError as error:
            raise StorageError(f"cannot read {path}: {error.strerror}") from error
        try:
            stored = msgspec.json.decode(data, type=TopicsFile)
        except msgspec.DecodeError as error:
            raise StorageError(f"{path} is not a valid topics file: {error}") from error
        if stored.version != TOPICS_FILE_VERSION:
            raise StorageError(f"{path} has unknown version {stored.version}")
        return stored

    def _warn_about_orphans(self) -> None:
        for entry in sorted(self.data_dir.iterdir()):
            topic, dash, index = entry.name.rpartition("-")
            if not entry.is_dir() or not dash or not index.isdigit():
                continue
            known = self._topics.get(topic)
            if known is None or int(index) >= len(known.partitions):
                _logger.warning("orphan partition directory", directory=str(entry))

    # -- lookups ----------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._topics)

    def get(self, name: str) -> Topic | None:
        return self._topics.get(name)

    def partition(self, topic: str, index: int) -> Partition:
        """Raises UnknownTopicOrPartitionError."""
        found = self._topics.get(topic)
        if found is None:
            raise UnknownTopicOrPartitionError(f"unknown topic {topic!r}")
        if not 0 <= index < len(found.partitions):
            raise UnknownTopicOrPartitionError(
                f"topic {topic!r} has no partition {index} (it has {len(found.partitions)})"
            )
        return found.partitions[index]

    def all_partitions(self) -> list[Partition]:
        return [p for topic in self._topics.values() for p in topic.partitions]

    def corrupt_partitions(self) -> list[tuple[str, int]]:
        """(topic, index) of every partition that failed to open."""
        return [(p.topic, p.index) for p in self.all_partitions() if p.failure is not None]

    # -- changes ----------------------------------------------------------------------

    def check_new_topic(self, name: str, partitions: int, configs: Mapping[str, str]) -> LogConfig:
        """Validate a create without doing it.  Raises InvalidTopicError,
        TopicAlreadyExistsError, InvalidPartitionsError, InvalidConfigError."""
        validate_topic_name(name)
        if name in self._topics:
            raise TopicAlreadyExistsError(f"topic {name!r} already exists")
        if not 1 <= partitions <= self.partitions_max:
            raise InvalidPartitionsError(
                f"partition count {partitions} is outside [1, {self.partitions_max}]"
            )
        config = log_config_for(self.defaults, configs)
        self._check_set_batch_bytes_max(configs, config)
        return config

    def _check_set_batch_bytes_max(self, overrides: Mapping[str, str], config: LogConfig) -> None:
        """Raises InvalidConfigError when ``overrides`` set a batch_bytes_max that
        does not fit the frame limit."""
        if any(_canonical_key(key) == "batch_bytes_max" for key in overrides):
            check_fits_frame(config, self.frame_bytes_max)

    async def create(self, name: str, partitions: int, configs: Mapping[str, str]) -> Topic:
        """Create a topic and open its partitions.  Raises like :meth:`check_new_topic`,
        and StorageError."""
        async with self._change_lock:
            config = self.check_new_topic(name, partitions, configs)
            now_ms = self._clock_ms()
            record = TopicRecord(partitions, dict(configs), now_ms)
            stale = [partition_directory(self.data_dir, name, i) for i in range(partitions)]
            await trio.to_thread.run_sync(_remove_directories, stale)
            await self._write_file({**self._records(), name: record})
            topic = Topic(name, record, config)
            self._topics[name] = topic
            try:
                for index in range(partitions):
                    partition = await Partition.open(
                        self.data_dir, name, index, config, self._clock_ms
                    )
                    topic.partitions.append(partition)
            except BaseException:
                # Leave no half-open topic behind: the file still names it, so the
                # next start opens (and creates) its logs.
                del self._topics[name]
                for partition in topic.partitions:
                    with trio.CancelScope(shield=True):
                        await partition.close()
                raise
        _logger.info("topic created", topic=name, partitions=partitions, configs=dict(configs))
        return topic

    async def delete(self, name: str) -> None:
        """Delete a topic: forget it, close its logs, remove its directories.
        Raises UnknownTopicOrPartitionError, StorageError."""
        async with self._change_lock:
            topic = self._topics.get(name)
            if topic is None:
                raise UnknownTopicOrPartitionError(f"unknown topic {name!r}")
            records = self._records()
            del records[name]
            await self._write_file(records)
            del self._topics[name]
            directories = []
            for partition in topic.partitions:
                await partition.close()
                directories.append(partition_directory(self.data_dir, name, partition.index))
            await trio.to_thread.run_sync(_remove_directories, directories)
        _logger.info("topic deleted", topic=name)

    def check_alter(
        self, name: str, changes: Mapping[str, str]
    ) -> tuple[dict[str, str], LogConfig]:
        """The topic's overrides after ``changes`` (a value of ``default`` removes
        one) and the LogConfig they make, validated as at creation.  Raises
        UnknownTopicOrPartitionError, InvalidConfigError."""
        topic = self._topics.get(name)
        if topic is None:
            raise UnknownTopicOrPartitionError(f"unknown topic {name!r}")
        return self.altered_overrides(topic.record.configs, changes)

    def altered_overrides(
        self, current: Mapping[str, str], changes: Mapping[str, str]
    ) -> tuple[dict[str, str], LogConfig]:
        """Overrides ``current`` after ``changes`` (a value of ``default`` removes
        one) and the LogConfig they make, validated as at creation: the check of
        :meth:`check_alter`, also used by a cluster, whose topics' overrides live in
        the metadata store.  Raises InvalidConfigError."""
        overrides = dict(current)
        for key, value in changes.items():
            canonical = _canonical_key(key)
            for existing in [k for k in overrides if _canonical_key(k) == canonical]:
                del overrides[existing]
            if value.strip().lower() != DEFAULT_VALUE:
                overrides[key] = value
        config = log_config_for(self.defaults, overrides)
        self._check_set_batch_bytes_max(changes, config)
        return overrides, config

    async def alter_configs(self, name: str, changes: Mapping[str, str]) -> Topic:
        """Change a topic's overrides (see :meth:`check_alter`), persist them and
        give the open partitions the new config.  Raises like :meth:`check_alter`,
        and StorageError."""
        async with self._change_lock:
            overrides, config = self.check_alter(name, changes)
            topic = self._topics[name]
            record = TopicRecord(topic.record.partitions, overrides, topic.record.created_ms)
            await self._write_file({**self._records(), name: record})
            topic.record = record
            topic.config = config
            for partition in topic.partitions:
                partition.set_config(config)
        _logger.info("topic config altered", topic=name, configs=overrides)
        return topic

    def check_add_partitions(self, name: str, count: int) -> Topic:
        """Validate raising ``name`` to ``count`` partitions in total.  Raises
        UnknownTopicOrPartitionError, InvalidPartitionsError."""
        topic = self._topics.get(name)
        if topic is None:
            raise UnknownTopicOrPartitionError(f"unknown topic {name!r}")
        current = len(topic.partitions)
        if count <= current:
            raise InvalidPartitionsError(
                f"topic {name!r} has {current} partitions; the new count {count} must be "
                "higher (partitions cannot be removed)"
            )
        if count > self.partitions_max:
            raise InvalidPartitionsError(
                f"partition count {count} is above the broker's topic_partitions_max "
                f"{self.partitions_max}"
            )
        return topic

    async def add_partitions(self, name: str, count: int) -> Topic:
        """Raise a topic's partition count to ``count``: persist it, then open the
        new (empty) logs.  Raises like :meth:`check_add_partitions`, and
        StorageError, LogCorruptError."""
        async with self._change_lock:
            topic = self.check_add_partitions(name, count)
            first_new = len(topic.partitions)
            stale = [partition_directory(self.data_dir, name, i) for i in range(first_new, count)]
            await trio.to_thread.run_sync(_remove_directories, stale)
            record = TopicRecord(count, dict(topic.record.configs), topic.record.created_ms)
            await self._write_file({**self._records(), name: record})
            topic.record = record
            # Appended one by one: lookups see a partition only once its log is open.
            for index in range(first_new, count):
                partition = await Partition.open(
                    self.data_dir, name, index, topic.config, self._clock_ms
                )
                topic.partitions.append(partition)
        _logger.info("partitions added", topic=name, partitions=count)
        return topic

    async def close(self) -> None:
        """Flush and close every partition (clean-shutdown markers).  Keeps going
        past a partition that fails, then raises one StorageError naming how many
        failed, which, and the first error (a full disk fails them all alike; they
        are recovered at the next start)."""
        failed: list[tuple[Partition, StorageError]] = []
        partitions = self.all_partitions()
        for partition in partitions:
            try:
                await partition.close()
            except StorageError as error:
                partition.logger.debug("close failed", error=error.message)
                failed.append((partition, error))
        if failed:
            first_error = failed[0][1]
            names = ", ".join(f"{p.topic}-{p.index}" for p, _ in failed[:_CLOSE_FAILURES_NAMED])
            if len(failed) > _CLOSE_FAILURES_NAMED:
                names += ", ..."
            raise StorageError(
                f"{len(failed)} of {len(partitions)} partitions not closed cleanly "
                f"({names}): {first_error.message}; they are recovered at the next start"
            ) from first_error

    def _records(self) -> dict[str, TopicRecord]:
        return {name: topic.record for name, topic in self._topics.items()}

    async def _write_file(self, records: dict[str, TopicRecord]) -> None:
        data = msgspec.json.format(msgspec.json.encode(TopicsFile(topics=records)))
        await trio.to_thread.run_sync(write_atomic, self.data_dir / TOPICS_FILE, data)


def _canonical_key(key: str) -> str:
    return key.strip().replace(".", "_").replace("-", "_").lower()


def _remove_directories(directories: list[Path]) -> None:
    """Raises StorageError."""
    for directory in directories:
        try:
            shutil.rmtree(directory)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise StorageError(f"cannot remove {directory}: {error}") from error
