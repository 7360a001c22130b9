"""The server's task tree: one root nursery for the whole node.

    serve(config)
    └── root nursery
        ├── signal watcher      SIGINT/SIGTERM: first starts a graceful shutdown,
        │                       the second exits the process at once
        ├── metrics endpoint    GET /metrics on a listener of its own (metrics_listen,
        │                       broker/metrics/endpoint.py); stops once the server has
        │                       drained, before the logs are closed
        ├── maintenance         flush (FlushPolicy.INTERVAL), retention and compaction
        ├── scrubber            re-verifies sealed segments' CRCs at scrub_bytes_per_second
        ├── group expiry        expels group members whose session timed out
        └── connections nursery
            ├── accept loop     one per listener; refuses beyond connections_max
            └── one ConnectionHandler.run per client (its own reader/writer nursery)

Graceful shutdown: stop accepting, close the listeners, stop every reader
(no new requests), answer every long poll now, give in-flight requests
shutdown_timeout_ms to finish, then cancel what remains and flush and close
every log (clean-shutdown markers).  ``serve`` then returns and the CLI exits 0.
"""

from __future__ import annotations

import errno
import gc
import os
import resource
import signal
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Final

import trio

from broker.config import METRICS_LISTEN_AUTO, BrokerConfig
from broker.connection import ConnectionHandler
from broker.logging import get_logger
from broker.metrics.endpoint import METRICS_PATH, MetricsEndpoint
from broker.metrics.registry import MetricsRegistry
from broker.request_memory import RequestMemory
from broker.scrubbing import ScrubStats, scrub_forever
from broker.state import Broker
from client.errors import LogCorruptError, StorageError

if TYPE_CHECKING:
    from broker.cluster.member import ClusterMember

# The maintenance task wakes this often (100 ms) and asks each partition whether a
# flush or a retention check is due: cheap (one comparison per partition) and
# fine-grained enough for the smallest sensible flush_interval_ms.
MAINTENANCE_TICK_MS: Final = 100
# After an accept() fails for lack of descriptors or memory, wait before retrying
# (trio's serve_listeners does the same) instead of spinning.
ACCEPT_RETRY_DELAY_S: Final = 0.1
_ACCEPT_RESOURCE_ERRORS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

_logger = get_logger()


class Server:
    """Listeners, connection handlers and the shutdown sequence over one Broker."""

    def __init__(self, broker: Broker, listeners: list[trio.SocketListener]) -> None:
        assert listeners, "a server needs a listener"
        self.broker = broker
        self.limits = broker.limits
        self.listeners = listeners
        self.handlers: set[ConnectionHandler] = set()
        # Open connections per client address (connections_per_address_max).
        self.connections_by_address: dict[str, int] = {}
        # Unfinished and queued request bytes of every connection together.
        self.request_memory = RequestMemory(self.limits.queued_request_bytes_max)
        self.scrub_stats = ScrubStats()
        self.shutdown_requested = trio.Event()
        self.stopped = trio.Event()
        self._accept_scopes: list[trio.CancelScope] = []  # one per listener

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`request_shutdown`, then drain; sets ``stopped``."""
        try:
            async with trio.open_nursery() as root:
                root.start_soon(self._maintain)
                root.start_soon(scrub_forever, self.broker, self.scrub_stats)
                await root.start(self.broker.groups.run)
                async with trio.open_nursery() as connections:
                    for listener in self.listeners:
                        connections.start_soon(self._accept_loop, listener, connections)
                    task_status.started()
                    await self.shutdown_requested.wait()
                    await self._drain(connections.cancel_scope)
                root.cancel_scope.cancel()
        finally:
            self.stopped.set()

    def request_shutdown(self) -> None:
        self.shutdown_requested.set()

    async def _drain(self, connections_scope: trio.CancelScope) -> None:
        _logger.info("shutting down", connections=len(self.handlers))
        for scope in self._accept_scopes:
            scope.cancel()
        for listener in self.listeners:
            await listener.aclose()
        for handler in list(self.handlers):
            handler.stop_reading()
        self.broker.begin_shutdown()
        # The connections nursery waits for every handler to answer what it has
        # read; past the deadline it cancels them.
        connections_scope.deadline = trio.current_time() + self.limits.shutdown_timeout_ms / 1000

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        with trio.CancelScope() as scope:
            self._accept_scopes.append(scope)
            if self.shutdown_requested.is_set():
                return
            while True:  # until shutdown cancels the scope
                try:
                    stream = await listener.accept()
                except OSError as error:
                    if error.errno not in _ACCEPT_RESOURCE_ERRORS:
                        raise
                    _logger.error("accept failed", error=os.strerror(error.errno or 0))
                    await trio.sleep(ACCEPT_RETRY_DELAY_S)
                    continue
                address, peer = _peer_name(stream)
                refusal = self._admit(address)
                if refusal is not None:
                    self.broker.metrics.connections.limit_hit(str(refusal["reason"]))
                    _logger.warning("connection refused", peer=peer, **refusal)
                    await stream.aclose()
                    continue
                self.broker.metrics.connections.opened += 1
                handler = ConnectionHandler(self.broker, stream, peer, self.request_memory)
                self.handlers.add(handler)
                self.connections_by_address[address] = (
                    self.connections_by_address.get(address, 0) + 1
                )
                nursery.start_soon(self._run_handler, handler, address)

    def _admit(self, address: str) -> dict[str, object] | None:
        """Make room for a connection from ``address``: None to admit it (after
        evicting the connection idle longest when at connections_max), else the
        reason to refuse it, as log fields."""
        limits = self.limits
        if self.connections_by_address.get(address, 0) >= limits.connections_per_address_max:
            return {
                "reason": "connections_per_address_max",
                "connections_per_address_max": limits.connections_per_address_max,
            }
        if len(self.handlers) < limits.connections_max:
            return None
        # At the limit (rare): one pass over the connections for the one idle longest.
        idle_since_max = trio.current_time() - limits.connection_evict_idle_ms / 1000
        oldest: ConnectionHandler | None = None
        for handler in self.handlers:
            if (
                handler.is_idle
                and handler.last_request_time <= idle_since_max
                and (oldest is None or handler.last_request_time < oldest.last_request_time)
            ):
                oldest = handler
        if oldest is None:
            return {"reason": "connections_max", "connections_max": limits.connections_max}
        oldest.evict("connections_max")
        self.handlers.discard(oldest)  # its task ends soon; the slot is the new one's
        return None

    async def _run_handler(self, handler: ConnectionHandler, address: str) -> None:
        try:
            await handler.run()
        finally:
            self.handlers.discard(handler)
            remaining = self.connections_by_address[address] - 1
            if remaining:
                self.connections_by_address[address] = remaining
            else:
                del self.connections_by_address[address]

    async def _maintain(self) -> None:
        while True:  # until the root nursery is cancelled
            await trio.sleep(MAINTENANCE_TICK_MS / 1000)
            for partition in self.broker.topics.all_partitions():
                try:
                    await partition.maintain()
                except (StorageError, LogCorruptError) as error:  # compaction may raise both
                    partition.logger.error("maintenance failed", error=error.message)


def _peer_name(stream: trio.SocketStream) -> tuple[str, str]:
    """The client's address and ``address:port``."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?", "?"
    return str(host), f"{host}:{port}"


async def open_listeners(config: BrokerConfig) -> list[trio.SocketListener]:
    """Bind the configured address.  Raises OSError (e.g. address in use)."""
    return await trio.open_tcp_listeners(config.port, host=config.host)


async def watch_signals(
    server: Server, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """First SIGINT/SIGTERM: graceful shutdown.  Second: exit now (128 + signal)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if not server.shutdown_requested.is_set():
                _logger.info("signal received, shutting down gracefully", signal=name)
                server.request_shutdown()
                continue
            _logger.warning(
                "second signal during shutdown, exiting now without closing the logs "
                "(they are recovered at the next start)",
                signal=name,
            )
            os._exit(128 + signum)


# Descriptors kept for segment and index files, listeners and the data-dir lock on
# top of one per connection.
DESCRIPTORS_RESERVED: Final = 1024


def raise_descriptor_limit(wanted: int) -> int:
    """Raise the soft open-file limit toward ``wanted`` (never above the hard
    limit, never lower than it is); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft if soft != resource.RLIM_INFINITY else wanted


async def serve(
    config: BrokerConfig,
    *,
    handle_signals: bool = True,
    own_process: bool = False,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a broker until a signal (or ``Server.request_shutdown``) stops it.

    ``own_process`` (the ``distributary serve`` command): the process is ours, so
    once started, everything allocated so far (modules, config, topics, groups) is
    moved out of the garbage collector's sight with ``gc.freeze``.  A full
    collection then walks only what serving allocates, not the ~10^5 objects of
    the imported libraries: without it, each one paused every connection for
    15-20 ms (seen as the latency benchmark's p99.9).

    Raises, before serving: ConfigError (data dir), LogCorruptError, StorageError,
    OSError (cannot bind).  A StorageError while closing the logs is raised after
    everything else has shut down.
    """
    descriptors = raise_descriptor_limit(config.limits.connections_max + DESCRIPTORS_RESERVED)
    if descriptors < config.limits.connections_max + DESCRIPTORS_RESERVED:
        _logger.warning(
            "open-file limit is below connections_max plus room for segment files",
            descriptors_max=descriptors,
            connections_max=config.limits.connections_max,
        )
    opening_started = time.monotonic()
    broker = await Broker.open(config)
    broker.metrics.recovery_duration_s = time.monotonic() - opening_started
    listeners: list[trio.SocketListener] = []
    try:
        listeners = await open_listeners(config)
        metrics_listener = await open_metrics_listener(config)
    except BaseException:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()
            await broker.close()
        raise
    host, port = listeners[0].socket.getsockname()[:2]
    broker.advertised_host, broker.advertised_port = str(host), int(port)
    server = Server(broker, listeners)
    cluster = AsyncExitStack()
    closed = False
    close_error: StorageError | None = None
    try:
        member = None
        if config.cluster is not None:
            member = await _join_cluster(broker, cluster, listeners)
        async with trio.open_nursery() as nursery:
            if handle_signals:
                # Watches through the whole shutdown, closing the logs included: a
                # second signal then exits at once, with a line saying so.
                await nursery.start(watch_signals, server)
            member_scope = trio.CancelScope()
            member_done = trio.Event()
            if member is not None:
                nursery.start_soon(_run_member, member, member_scope, member_done)
            else:
                member_done.set()
            await nursery.start(server.run)
            metrics_scope = trio.CancelScope()
            if metrics_listener is not None:
                await nursery.start(_serve_metrics, server, metrics_listener, metrics_scope)
            _logger.info(
                "listening",
                host=broker.advertised_host,
                port=broker.advertised_port,
                address=f"{broker.advertised_host}:{broker.advertised_port}",
                data_dir=str(config.data_path),
                topics=len(broker.topics.names()),
                version=broker.version,
            )
            task_status.started(server)
            if own_process:
                gc.collect()
                gc.freeze()
            await server.stopped.wait()
            metrics_scope.cancel()
            closed = True
            member_scope.cancel()
            with trio.CancelScope(shield=True):
                await member_done.wait()
                await cluster.aclose()  # leave the cluster: its lease is revoked
                try:
                    await broker.close()
                except StorageError as error:
                    close_error = error  # raised on its own, not in a group
            nursery.cancel_scope.cancel()  # the signal watcher
    finally:
        if not closed:
            with trio.CancelScope(shield=True):
                await cluster.aclose()
                await broker.close()
    if close_error is not None:
        raise close_error
    _logger.info("stopped")


async def open_metrics_listener(config: BrokerConfig) -> trio.SocketListener | None:
    """Bind the metrics endpoint's address (``metrics_listen``); None when it is
    off, or when the automatic address (listen port + 1) is taken: that is logged
    and the broker serves without metrics.  Raises OSError for an address given
    explicitly that cannot be bound."""
    address = config.metrics_address
    if address is None:
        return None
    host, port = address
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as error:
        if config.metrics_listen != METRICS_LISTEN_AUTO:
            raise OSError(
                error.errno, f"metrics_listen {host}:{port}: {error.strerror or error}"
            ) from error
        _logger.warning(
            "metrics endpoint not started: its automatic address is taken "
            "(set metrics_listen or --metrics-listen)",
            address=f"{host}:{port}",
            error=error.strerror or str(error),
        )
        return None
    for extra in listeners[1:]:  # a host name with several addresses: the first
        await extra.aclose()
    return listeners[0]


async def _serve_metrics(
    server: Server,
    listener: trio.SocketListener,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The metrics endpoint (broker/metrics/endpoint.py) until ``scope`` is
    cancelled; logs its address once it accepts."""
    registry = MetricsRegistry(server.broker, lambda: len(server.handlers))
    endpoint = MetricsEndpoint(listener, registry.render_in_steps)
    host, port = endpoint.address
    # Bound already: a scrape that comes before run() accepts waits in the backlog.
    _logger.info(
        "serving metrics",
        host=host,
        port=port,
        address=f"{host}:{port}",
        path=METRICS_PATH,
    )
    with scope:
        await endpoint.run(task_status=task_status)


async def _run_member(member: ClusterMember, scope: trio.CancelScope, done: trio.Event) -> None:
    """The cluster member's loop, in a scope of its own: it stops before the broker
    leaves the cluster and closes its logs (the signal watcher keeps running)."""
    try:
        with scope:
            await member.run()
    finally:
        done.set()


async def _join_cluster(
    broker: Broker, stack: AsyncExitStack, listeners: list[trio.SocketListener]
) -> ClusterMember:
    """Join the cluster (broker/cluster/member.py); on failure close the listeners.
    Raises ClusterJoinError, InvalidConfigError."""
    from broker.cluster.member import join_cluster

    try:
        return await stack.enter_async_context(join_cluster(broker))
    except BaseException:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()
        raise
