"""The client's view of the cluster: bootstrap, connections per broker, metadata cache.

A :class:`Cluster` belongs to one Producer, Consumer or Admin and lives inside
its task group (connection reader tasks run there).  It keeps one connection
per broker address, reconnecting with exponential backoff for a bounded number
of attempts, and a cache of topic metadata (partition count, leaders) that is
refreshed on demand -- callers ask for a refresh after NOT_LEADER or
UNKNOWN_TOPIC_OR_PARTITION.

A client may also refresh the cached topics in the background
(:meth:`Cluster.refresh_metadata_periodically`, Kafka's ``metadata.max.age.ms``):
whenever the last refresh that covered every cached topic is older than the
maximum age, so added partitions and moved leaders are learned without an error
having happened first.

The cache keeps (leader, leader epoch) per partition and never goes back: a
metadata answer that names an older leader epoch for a partition than the one
already known (a broker that has not heard of the new leader yet) leaves that
partition's leader as it was.  Dropping a topic from the cache (``invalidate``)
keeps its epochs, so the next answer is held to them too; only a topic the
cluster says is gone forgets them.

Group requests go to the group's coordinator, found with FindCoordinator and
cached per group until a request to it fails on the connection or is answered
COORDINATOR_NOT_AVAILABLE.

Raises only typed errors: BrokerUnavailableError when no broker answers,
UnknownTopicOrPartitionError for topics the cluster does not have.
"""

from __future__ import annotations

import abc
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import anyio
import anyio.abc
import msgspec

from client._io.connection import (
    INFLIGHT_REQUESTS_MAX_DEFAULT,
    BrokerConnection,
    open_connection,
)
from client._logging import get_logger
from client.address import parse_addresses
from client.errors import (
    BrokerUnavailableError,
    ConnectionClosedError,
    DistributaryError,
    ErrorCode,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.protocol.messages import (
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    HelloRequest,
    HelloResponse,
    MetadataRequest,
    MetadataResponse,
    PartitionMetadata,
    Request,
    TopicMetadata,
)

log = get_logger("client.cluster")

DEFAULT_PORT: Final = 9392
CLIENT_SOFTWARE: Final = "distributary-python"
CLIENT_VERSION: Final = "0.1.0"
# The background refresh of cached topics: Kafka's metadata.max.age.ms default.
# Errors (NOT_LEADER, unknown partition) refresh at once; this bounds how long an
# added partition goes unused when nothing fails.
METADATA_MAX_AGE_MS_DEFAULT: Final = 300_000

T = TypeVar("T")


def parse_bootstrap(bootstrap: str | Sequence[str]) -> list[tuple[str, int]]:
    """``"host:port,host2:port"`` or a list of ``host[:port]`` -> addresses.

    Raises AddressError (a ValueError saying what is wrong) on an unparsable
    address (client/address.py)."""
    return parse_addresses(bootstrap)


def backoff_ms(attempt: int, base_ms: int, max_ms: int, rng: random.Random) -> float:
    """Exponential backoff with +-20 % jitter: base, 2*base, 4*base ... capped at max."""
    delay = min(max_ms, base_ms * (1 << min(attempt, 20)))
    return float(delay * (0.8 + 0.4 * rng.random()))


class Cluster:
    """Connections and metadata for one client.  See the module docstring."""

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        task_group: anyio.abc.TaskGroup,
        *,
        client_id: str = "",
        connect_timeout_ms: int = 5_000,
        request_timeout_ms: int = 30_000,
        reconnect_attempts_max: int = 5,
        reconnect_backoff_ms: int = 50,
        reconnect_backoff_max_ms: int = 1_000,
        inflight_requests_max: int = INFLIGHT_REQUESTS_MAX_DEFAULT,
        rng: random.Random | None = None,
    ) -> None:
        assert reconnect_attempts_max >= 1
        self.bootstrap = parse_bootstrap(bootstrap)
        self.client_id = client_id
        self.connect_timeout_ms = connect_timeout_ms
        self.request_timeout_ms = request_timeout_ms
        self.reconnect_attempts_max = reconnect_attempts_max
        self.reconnect_backoff_ms = reconnect_backoff_ms
        self.reconnect_backoff_max_ms = reconnect_backoff_max_ms
        self.inflight_requests_max = inflight_requests_max
        self.random = rng if rng is not None else random.Random()
        self._task_group = task_group
        # Leaves the task group entered by open() (None: the caller owns it).
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._connections: dict[tuple[str, int], BrokerConnection] = {}
        self._connect_locks: dict[tuple[str, int], anyio.Lock] = {}
        self.brokers: dict[int, tuple[str, int]] = {}
        self.controller_id = -1
        self.cluster_id = ""
        self.topics: dict[str, TopicMetadata] = {}
        # Partition counts, read on the producer's hot path.
        self.partition_counts: dict[str, int] = {}
        self._leaders: dict[tuple[str, int], int] = {}
        # The highest leader epoch seen per partition (see the module docstring).
        self._leader_epochs: dict[tuple[str, int], int] = {}
        # Each group's coordinator's address, as FindCoordinator answered.
        self._coordinators: dict[str, tuple[str, int]] = {}
        # When (anyio.current_time, s) a refresh last covered every cached topic.
        self._metadata_refreshed_s: float | None = None
        self._closed = False

    # -- connections ----------------------------------------------------------------

    async def connection_to(
        self, address: tuple[str, int], *, attempts_max: int | None = None
    ) -> BrokerConnection:
        """A live connection to ``address``, connecting (with retries) if needed.

        Raises BrokerUnavailableError after ``attempts_max`` failures (default
        ``reconnect_attempts_max``; 1 for a caller that retries on its own)."""
        connection = self._connections.get(address)
        if connection is not None and not connection.closed:
            return connection
        lock = self._connect_locks.setdefault(address, anyio.Lock())
        async with lock:
            connection = self._connections.get(address)
            if connection is not None and not connection.closed:
                return connection
            connection = await self._connect(address, attempts_max or self.reconnect_attempts_max)
            self._connections[address] = connection
            return connection

    async def _connect(self, address: tuple[str, int], attempts_max: int) -> BrokerConnection:
        if self._closed:
            raise BrokerUnavailableError("the client is closed")
        host, port = address
        last_error: DistributaryError | None = None
        for attempt in range(attempts_max):
            if attempt:
                delay = backoff_ms(
                    attempt - 1,
                    self.reconnect_backoff_ms,
                    self.reconnect_backoff_max_ms,
                    self.random,
                )
                await anyio.sleep(delay / 1000)
            try:
                connection = await open_connection(
                    host,
                    port,
                    self._task_group,
                    connect_timeout_ms=self.connect_timeout_ms,
                    request_timeout_ms=self.request_timeout_ms,
                    inflight_requests_max=self.inflight_requests_max,
                )
                await self._hello(connection)
                return connection
            except DistributaryError as error:
                if not error.retriable:
                    raise
                last_error = error
                log.debug(
                    "connect failed", broker=f"{host}:{port}", attempt=attempt, error=str(error)
                )
        assert last_error is not None
        if attempts_max == 1:
            raise BrokerUnavailableError(last_error.message)
        raise BrokerUnavailableError(f"{last_error.message}; tried {attempts_max} times")

    async def _hello(self, connection: BrokerConnection) -> None:
        response = await connection.request(
            HelloRequest(self.client_id, CLIENT_SOFTWARE, CLIENT_VERSION),
            timeout_ms=self.connect_timeout_ms,
        )
        body = response.body
        assert isinstance(body, HelloResponse)
        if body.error_code:
            await connection.aclose()
            raise error_for_code(body.error_code, body.error_message)

    async def connection_for_node(
        self, node_id: int, *, attempts_max: int | None = None
    ) -> BrokerConnection:
        """A live connection to broker ``node_id`` (any broker when it is unknown).
        Raises BrokerUnavailableError (see :meth:`connection_to`)."""
        address = self.brokers.get(node_id)
        if address is None:
            return await self.any_connection()
        return await self.connection_to(address, attempts_max=attempts_max)

    def open_connection_for_node(self, node_id: int) -> BrokerConnection | None:
        """The live connection to a known broker, or None when reaching it needs
        awaiting (unknown node, not connected yet, closed): the synchronous
        lookup of :meth:`connection_for_node`."""
        address = self.brokers.get(node_id)
        if address is None:
            return None
        connection = self._connections.get(address)
        if connection is None or connection.closed:
            return None
        return connection

    def open_leader_connection(self, topic: str, partition: int) -> BrokerConnection | None:
        """The live connection to the partition's cached leader, or None when reaching
        it needs awaiting or a metadata refresh (leader unknown, broker unknown, not
        connected yet, closed): :meth:`leader_for` then :meth:`open_connection_for_node`
        in one call, for the producer's per-batch path."""
        leader = self._leaders.get((topic, partition))
        if leader is None or leader < 0:
            return None
        return self.open_connection_for_node(leader)

    async def any_connection(self) -> BrokerConnection:
        """A connection to any broker: a live one if there is one, else the first
        known or bootstrap address that answers.  Raises BrokerUnavailableError."""
        for connection in self._connections.values():
            if not connection.closed:
                return connection
        candidates = list(dict.fromkeys([*self.brokers.values(), *self.bootstrap]))
        last_error: DistributaryError | None = None
        for address in candidates:
            try:
                return await self.connection_to(address)
            except BrokerUnavailableError as error:
                last_error = error
        assert last_error is not None
        raise last_error

    async def request_any(self, body: Request, *, timeout_ms: int | None = None) -> object:
        """Send ``body`` to any broker, retrying once on a fresh connection if the
        connection dies under it.  Returns the response body."""
        return await self.call_with_retries(
            lambda: self._request_any_once(body, timeout_ms), attempts_max=2
        )

    async def _request_any_once(self, body: Request, timeout_ms: int | None) -> object:
        connection = await self.any_connection()
        response = await connection.request(body, timeout_ms=timeout_ms)
        return response.body

    # -- group coordinators -----------------------------------------------------------

    async def coordinator_address(self, group_id: str) -> tuple[str, int]:
        """The address of ``group_id``'s coordinator: cached, or asked with
        FindCoordinator.  Raises the answer's typed error (e.g.
        CoordinatorNotAvailableError) or BrokerUnavailableError."""
        address = self._coordinators.get(group_id)
        if address is not None:
            return address
        body = await self.request_any(FindCoordinatorRequest(group_id))
        assert isinstance(body, FindCoordinatorResponse)
        if body.error_code:
            raise error_for_code(body.error_code, body.error_message or group_id)
        address = (body.host, body.port)
        self._coordinators[group_id] = address
        if body.node_id >= 0:
            self.brokers.setdefault(body.node_id, address)
        return address

    def forget_coordinator(self, group_id: str) -> None:
        """Look ``group_id``'s coordinator up again before its next request."""
        self._coordinators.pop(group_id, None)

    async def request_coordinator(
        self, group_id: str, body: Request, *, timeout_ms: int | None = None
    ) -> object:
        """Send ``body`` to ``group_id``'s coordinator, retrying once (after a fresh
        lookup) if the connection dies under it.  Returns the response body; an
        answer COORDINATOR_NOT_AVAILABLE makes the next request look the
        coordinator up again.  Raises the typed error of a failed request."""
        return await self.call_with_retries(
            lambda: self._request_coordinator_once(group_id, body, timeout_ms), attempts_max=2
        )

    async def _request_coordinator_once(
        self, group_id: str, body: Request, timeout_ms: int | None
    ) -> object:
        address = await self.coordinator_address(group_id)
        try:
            connection = await self.connection_to(address)
            response = await connection.request(body, timeout_ms=timeout_ms)
        except (ConnectionClosedError, BrokerUnavailableError, RequestTimedOutError):
            self.forget_coordinator(group_id)
            raise
        if getattr(response.body, "error_code", 0) == ErrorCode.COORDINATOR_NOT_AVAILABLE:
            self.forget_coordinator(group_id)
        return response.body

    async def call_with_retries(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        attempts_max: int = 5,
        refresh_topics: Iterable[str] | None = None,
    ) -> T:
        """Run ``operation``; on a retriable typed error back off and retry, up to
        ``attempts_max`` times in all, refreshing metadata in between when
        ``refresh_topics`` is given.  Re-raises the last error.

        BrokerUnavailableError is not retried here: it comes from connecting, which
        already made its own attempts (reconnect_attempts_max, with backoff), and
        retrying it again at this layer multiplied the wait for an unreachable broker."""
        for attempt in range(attempts_max):
            try:
                return await operation()
            except DistributaryError as error:
                unreachable = isinstance(error, BrokerUnavailableError)
                if not error.retriable or unreachable or attempt + 1 >= attempts_max:
                    raise
                log.debug("retrying", attempt=attempt, error=str(error))
                delay = backoff_ms(
                    attempt, self.reconnect_backoff_ms, self.reconnect_backoff_max_ms, self.random
                )
                await anyio.sleep(delay / 1000)
                if refresh_topics is not None:
                    try:
                        await self.refresh_metadata(list(refresh_topics))
                    except DistributaryError as refresh_error:
                        if not refresh_error.retriable:
                            raise
        raise AssertionError("unreachable: the loop returns or raises")

    # -- metadata -------------------------------------------------------------------

    async def refresh_metadata(
        self, topics: list[str] | None = None, *, allow_auto_create: bool = False
    ) -> MetadataResponse:
        """Fetch metadata for ``topics`` (None: all) and update the cache."""
        body = await self.request_any(MetadataRequest(topics, allow_auto_create))
        assert isinstance(body, MetadataResponse)
        covers_cache = topics is None or set(topics) >= self.topics.keys()
        self._apply_metadata(body, topics)
        if covers_cache:
            self._metadata_refreshed_s = anyio.current_time()
        return body

    async def refresh_metadata_periodically(
        self, max_age_ms: int, on_refreshed: Callable[[], None] | None = None
    ) -> None:
        """Refresh every cached topic whenever the metadata is ``max_age_ms`` old
        (a refresh asked for anything else that covered them counts), then call
        ``on_refreshed``; a failed refresh is tried again after
        ``reconnect_backoff_max_ms``.  Runs until cancelled (the client's task
        group is)."""
        assert max_age_ms > 0, max_age_ms
        max_age_s = max_age_ms / 1000
        while True:  # until cancelled
            now = anyio.current_time()
            if self._metadata_refreshed_s is None:
                self._metadata_refreshed_s = now
            due = self._metadata_refreshed_s + max_age_s
            if now < due:
                await anyio.sleep(due - now)
                continue
            names = sorted(self.topics)
            if not names:
                self._metadata_refreshed_s = now
                continue
            try:
                await self.refresh_metadata(names)
            except DistributaryError as error:
                log.info("periodic metadata refresh failed", topics=names, error=str(error))
                retry_s = self.reconnect_backoff_max_ms / 1000
                self._metadata_refreshed_s = anyio.current_time() - max_age_s + retry_s
                continue
            if on_refreshed is not None:
                on_refreshed()

    def _apply_metadata(self, body: MetadataResponse, requested: list[str] | None) -> None:
        if body.brokers:
            self.brokers = {broker.node_id: (broker.host, broker.port) for broker in body.brokers}
        self.controller_id = body.controller_id
        self.cluster_id = body.cluster_id
        seen: set[str] = set()
        for topic in body.topics:
            seen.add(topic.name)
            if topic.error_code or not topic.partitions:
                self._forget(
                    topic.name,
                    epochs=topic.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                )
                continue
            self._apply_topic(topic)
        if requested is None:
            for name in list(self.topics):
                if name not in seen:
                    self._forget(name, epochs=True)

    def _apply_topic(self, topic: TopicMetadata) -> None:
        """Cache ``topic``, keeping a partition's known leader where the answer
        names an older leader epoch for it (see the module docstring)."""
        name = topic.name
        partitions = sorted(topic.partitions, key=_partition_number)
        kept_any = False
        for index, partition in enumerate(partitions):
            key = (name, partition.partition)
            known_epoch = self._leader_epochs.get(key, -1)
            if partition.leader_epoch < known_epoch:
                cached = self.topics.get(name)
                previous = _find_partition(cached, partition.partition)
                log.debug(
                    "older metadata ignored",
                    topic=name,
                    partition=partition.partition,
                    leader_epoch=partition.leader_epoch,
                    known_leader_epoch=known_epoch,
                )
                if previous is not None:
                    partitions[index] = previous
                else:  # invalidated meanwhile: the leader is unknown until a newer answer
                    partitions[index] = msgspec.structs.replace(
                        partition, leader=-1, leader_epoch=known_epoch
                    )
                kept_any = True
                continue
            self._leader_epochs[key] = partition.leader_epoch
        for partition in partitions:
            self._leaders[(name, partition.partition)] = partition.leader
        self.topics[name] = (
            msgspec.structs.replace(topic, partitions=partitions) if kept_any else topic
        )
        self.partition_counts[name] = len(partitions)

    def check_invariants(self) -> None:
        """The cached topics, partition counts and leaders agree, and no cached
        partition names a leader epoch above the highest one seen."""
        assert set(self.topics) == set(self.partition_counts)
        for name, topic in self.topics.items():
            assert len(topic.partitions) == self.partition_counts[name]
            for partition in topic.partitions:
                key = (name, partition.partition)
                assert self._leaders[key] == partition.leader, key
                assert partition.leader_epoch <= self._leader_epochs.get(key, -1), key

    def leader_epoch_for(self, topic: str, partition: int) -> int | None:
        """The highest leader epoch seen for the partition (None: never seen)."""
        return self._leader_epochs.get((topic, partition))

    def _forget(self, topic: str, *, epochs: bool = False) -> None:
        """Drop ``topic`` from the cache; ``epochs``: its leader epochs too (the
        cluster says it is gone)."""
        self.topics.pop(topic, None)
        count = self.partition_counts.pop(topic, 0)
        for partition in range(count):
            self._leaders.pop((topic, partition), None)
        if epochs:
            for key in [key for key in self._leader_epochs if key[0] == topic]:
                del self._leader_epochs[key]

    async def topic_metadata(
        self, topic: str, *, allow_auto_create: bool = False, attempts_max: int = 5
    ) -> TopicMetadata:
        """The topic's metadata, from the cache or fetched.  Retries while the topic
        reports a retriable error (e.g. just created).  Raises
        UnknownTopicOrPartitionError (or the topic's own error) when it stays absent."""
        cached = self.topics.get(topic)
        if cached is not None:
            return cached

        async def fetch() -> TopicMetadata:
            body = await self.refresh_metadata([topic], allow_auto_create=allow_auto_create)
            for entry in body.topics:
                if entry.name == topic:
                    if entry.error_code:
                        raise error_for_code(entry.error_code, entry.error_message or topic)
                    if not entry.partitions:
                        raise UnknownTopicOrPartitionError(f"topic {topic!r} has no partitions")
                    return self.topics[topic]
            raise UnknownTopicOrPartitionError(f"unknown topic {topic!r}")

        return await self.call_with_retries(fetch, attempts_max=attempts_max)

    def leader_for(self, topic: str, partition: int) -> int | None:
        """The cached leader's node id, or None when unknown (refresh needed)."""
        leader = self._leaders.get((topic, partition))
        return leader if leader is not None and leader >= 0 else None

    def invalidate(self, topic: str) -> None:
        """Drop a topic from the cache (after NOT_LEADER / unknown partition)."""
        self._forget(topic)

    async def aclose(self) -> None:
        self._closed = True
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            await connection.aclose()

    # -- the owning client's lifecycle ------------------------------------------------

    @classmethod
    async def open(cls, bootstrap: str | Sequence[str], **options: Any) -> Cluster:
        """Enter a new task group for a client's background tasks (reader,
        watchdog, sender, fetchers) and make a Cluster on it.  The caller must
        :meth:`shutdown` from the same task.  ``options`` as for the constructor.

        The task group is entered through an AsyncExitStack that the Cluster
        owns: if anything between entering it and returning fails, the stack
        leaves it at once, so no task group stays entered without an owner."""
        parse_bootstrap(bootstrap)  # a bad address raises here, not in the task group
        async with contextlib.AsyncExitStack() as stack:
            task_group = await stack.enter_async_context(anyio.create_task_group())
            cluster = cls(bootstrap, task_group, **options)
            cluster._exit_stack = stack.pop_all()
        return cluster

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        return self._task_group

    async def shutdown(self) -> None:
        """Cancel the background tasks, close every connection, leave the task
        group (a background task's error is raised from here)."""
        stack = self._exit_stack
        assert stack is not None, "shutdown() of a Cluster not made by open()"
        self._exit_stack = None
        self._task_group.cancel_scope.cancel()
        try:
            await self.aclose()
        finally:
            await stack.aclose()


def _partition_number(partition: PartitionMetadata) -> int:
    return partition.partition


def _find_partition(topic: TopicMetadata | None, number: int) -> PartitionMetadata | None:
    if topic is None:
        return None
    for partition in topic.partitions:
        if partition.partition == number:
            return partition
    return None


class ClusterClient(abc.ABC):
    """The lifecycle that Producer, Consumer and Admin share.

    ``async with client:`` (or ``start()`` then ``close()`` from the same task)
    opens a :class:`Cluster` whose task group holds the client's background
    tasks.  Subclasses set the connection options below in ``__init__``, call
    :meth:`_open_cluster` from ``start`` and ``self._cluster.shutdown()`` from
    ``close``.
    """

    bootstrap: str | Sequence[str]
    client_id: str
    connect_timeout_ms: int
    request_timeout_ms: int
    reconnect_attempts_max: int
    _random: random.Random
    _cluster: Cluster | None
    _task_group: anyio.abc.TaskGroup | None

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the client (see the subclass)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the client (see the subclass)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _open_cluster(self, **options: Any) -> Cluster:
        """Open this client's Cluster (and task group) with its connection options."""
        assert self._task_group is None, f"the {type(self).__name__} is already started"
        cluster = await Cluster.open(
            self.bootstrap,
            client_id=self.client_id,
            connect_timeout_ms=self.connect_timeout_ms,
            request_timeout_ms=self.request_timeout_ms,
            reconnect_attempts_max=self.reconnect_attempts_max,
            rng=self._random,
            **options,
        )
        self._cluster = cluster
        self._task_group = cluster.task_group
        return cluster
