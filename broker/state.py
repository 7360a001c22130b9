"""The broker's state: config, topics, groups, metadata view, identity, clock.
What every handler reads.

``Broker.open`` takes the data directory's lock (a second process on the same
directory would corrupt it), loads the topics and opens their logs, then
rebuilds the consumer groups from ``__consumer_offsets``; ``close``
flushes and closes them, writing the clean-shutdown markers (each partition's,
and the broker's: ``clean_start`` says on the next open whether the previous
run stopped cleanly, broker/shutdown_marker.py).  The clock is
injected (``clock_ms``) so handlers and tests never read the wall clock
themselves.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Final, Protocol

import trio

from broker.config import BrokerConfig, ConfigError
from broker.groups.service import GroupService
from broker.logging import get_logger
from broker.metadata_view import LocalMetadataView, MetadataView
from broker.shutdown_marker import take_marker, write_marker
from broker.topics import TopicManager
from broker.waiting import WakeReason
from client.clock import wall_clock_ms
from client.protocol.messages import (
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
)

LOCK_FILE: Final = ".lock"


class ClusterAdmin(Protocol):
    """Topic administration of a cluster member (broker/cluster/member.py): topics
    are created and deleted in the cluster metadata, not in this data dir."""

    async def create_topics(self, body: CreateTopicsRequest) -> CreateTopicsResponse: ...

    async def delete_topics(self, body: DeleteTopicsRequest) -> DeleteTopicsResponse: ...

    async def create_topic_if_absent(self, name: str) -> None: ...

    async def create_offsets_topic_if_absent(self) -> None: ...


def broker_version() -> str:
    try:
        return metadata.version("distributary")
    except metadata.PackageNotFoundError:
        return "unknown"


class Broker:
    """One node's state.  Create with :meth:`open`; close with :meth:`close`."""

    def __init__(
        self,
        config: BrokerConfig,
        topics: TopicManager,
        clock_ms: Callable[[], int],
        lock_descriptor: int | None,
        groups: GroupService | None = None,
        *,
        clean_start: bool = True,
    ) -> None:
        self.config = config
        self.limits = config.limits
        self.topics = topics
        self.groups = groups or GroupService(topics, config.groups, clock_ms)
        self.clock_ms = clock_ms
        self.version = broker_version()
        # The address clients should use (set once the listener is bound).
        self.advertised_host = config.host
        self.advertised_port = config.port
        self.shutting_down = False
        # Who leads what (broker/metadata_view.py): handlers ask it, never assume.
        self.metadata: MetadataView = LocalMetadataView(
            config.node_id, topics, lambda: (self.advertised_host, self.advertised_port)
        )
        # Set by a cluster member (--cluster); None on a single node.
        self.cluster: ClusterAdmin | None = None
        self._lock_descriptor = lock_descriptor
        # Whether the previous run on this data dir stopped cleanly (or there was
        # none): a broker back from a crash may have lost acknowledged records.
        self.clean_start = clean_start
        self.logger = get_logger(node=config.node_id)

    @classmethod
    async def open(
        cls, config: BrokerConfig, clock_ms: Callable[[], int] = wall_clock_ms
    ) -> Broker:
        """Lock the data directory, load topics, open every log, rebuild the groups.

        Raises ConfigError (data dir unusable or locked by another process),
        StorageError, LogCorruptError.
        """
        data_dir = config.data_path
        lock_descriptor = await trio.to_thread.run_sync(lock_data_dir, data_dir)
        try:
            clean_start = await trio.to_thread.run_sync(take_marker, data_dir, (LOCK_FILE,))
        except BaseException:
            os.close(lock_descriptor)
            raise
        topics = TopicManager(
            data_dir,
            config.topic_defaults,
            clock_ms,
            config.topic_partitions_max,
            frame_bytes_max=config.limits.frame_bytes_max,
        )
        groups = GroupService(topics, config.groups, clock_ms)
        try:
            await topics.load()
            if config.cluster is None:
                # A cluster member loads each offsets partition when it leads it.
                await groups.load()
        except BaseException:
            with trio.CancelScope(shield=True):
                await topics.close()
            os.close(lock_descriptor)
            raise
        broker = cls(config, topics, clock_ms, lock_descriptor, groups, clean_start=clean_start)
        broker.logger.info("broker state opened", clean_start=clean_start)
        return broker

    def begin_shutdown(self) -> None:
        """Answer every long poll now; handlers see ``shutting_down``."""
        self.shutting_down = True
        for partition in self.topics.all_partitions():
            partition.wake_waiters(WakeReason.SHUTDOWN)

    async def close(self) -> None:
        """Flush and close every log, then -- when all closed cleanly -- write the
        broker's clean-shutdown marker, then release the data directory.
        Raises StorageError (after closing everything it could; no marker)."""
        try:
            await self.topics.close()
            if self._lock_descriptor is not None:
                await trio.to_thread.run_sync(write_marker, self.config.data_path)
        finally:
            if self._lock_descriptor is not None:
                os.close(self._lock_descriptor)
                self._lock_descriptor = None


def lock_data_dir(data_dir: Path) -> int:
    """Create ``data_dir`` if needed and take an exclusive lock on its lock file.
    Returns the descriptor (the lock lives as long as it is open).
    Raises ConfigError."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise ConfigError(f"data_dir {data_dir}: {error.strerror}") from error
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        raise ConfigError(f"data_dir {data_dir} is in use by another broker process") from error
    return descriptor
