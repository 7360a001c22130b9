"""A broker as a member of a cluster: it joins, stays registered, follows the
metadata and serves exactly what the metadata says it leads.

Joining (:func:`join_cluster`, before the broker serves):

1. The cluster id: read ``cluster_id`` from the store (the first broker of a
   cluster creates it).  The data dir's ``cluster.json`` must name the same id
   and prefix; a fresh data dir gets one (and must hold no topics of a single
   node).  Otherwise the broker refuses to start.
2. Registration: grant a lease (LEASE_TTL_S) and create ``brokers/<node id>`` with
   it.  If the key exists (a previous incarnation whose lease has not expired yet,
   or another live broker with this id), wait for it to go, at most the TTL plus
   a margin, then refuse with one line.
3. Candidacy: put ``controller/<lease hex>`` with the lease (broker/cluster/
   controller.py says who wins).
4. Read the whole cluster prefix once and apply it, then serve.

Running (:meth:`ClusterMember.run`): a keepalive every TTL/3; a follower of the
cluster prefix (read, then watch; broker/cluster/follow.py) that applies each
change; the controller task; the probe of the other brokers' listeners by the
controller, and of the controller's by the others (broker/cluster/liveness.py:
a dead process's lease is revoked); the
replica manager (fetchers and ISR writes, broker/replication/replica_manager.py).
Applying a change opens the logs of new
topics and of partitions added to a topic (every partition of every topic: a
member may become a partition's leader later), removes those of deleted topics,
alters the local topics whose stored configs changed
(broker/cluster/topic_configs.py), makes each local replica leader or follower as
the partition states say (the replica manager), publishes the leaderships in the
ClusterMetadataView, and wakes the waiters of every partition whose leadership
changed.

Self-fencing: the view leads nothing once ``lease_valid_until`` (the send time of
the last acknowledged keepalive + TTL - FENCE_MARGIN_S) has passed.  A keepalive
answered "lease lost" makes the member register again with a new lease and
re-read the metadata before it leads again.

Leaving (graceful stop): revoke the lease, so the controller moves leadership at
once instead of after the TTL.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import msgspec
import trio

from broker.cluster.cluster_view import NO_CONTROLLER, ClusterMetadataView
from broker.cluster.etcd_url import parse_etcd_url
from broker.cluster.follow import PrefixView, Update, follow_prefix
from broker.cluster.open_store import open_metadata_store
from broker.cluster.schema import (
    CLUSTER_ID_KEY,
    MEMBERSHIP_FILE,
    NO_LEADER,
    BrokerRegistration,
    ClusterId,
    ClusterMembership,
    ControllerCandidate,
    MetadataDecodeError,
    broker_key,
    controller_key,
    decode,
    encode,
)
from broker.cluster.snapshot import ClusterMetadata, decode_metadata
from broker.cluster.store import (
    ABSENT,
    LeaseLostError,
    MetadataStore,
    MetadataStoreError,
    Snapshot,
    StoreUnavailableError,
    VersionConflictError,
    WatchBatch,
)
from broker.cluster.topic_admin import (
    create_partitions,
    erase_topic,
    plan_topic,
    write_topic,
)
from broker.cluster.topic_configs import alter_configs, apply_topic_configs
from broker.cluster.topic_incarnations import TopicIncarnations
from broker.config import ConfigError, parse_listen
from broker.groups.config import OFFSETS_TOPIC
from broker.groups.service import offsets_topic_configs
from broker.logging import get_logger
from broker.metadata_view import PartitionLeadership
from broker.produce import check_not_internal
from broker.replication.replica_manager import ReplicaManager
from broker.state import Broker
from broker.storage.atomic_file import write_atomic
from broker.waiting import WakeReason
from client.errors import DistributaryError, StorageError, TopicAlreadyExistsError
from client.protocol.messages import (
    AlterConfigsRequest,
    AlterConfigsResponse,
    CreatePartitionsRequest,
    CreatePartitionsResponse,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    TopicResult,
)

# The broker's lease: etcd deletes its registration this long after its last
# keepalive.  Detecting a paused or cut-off broker takes about this long (etcd's
# minimum sensible TTL is 2 s with its default election timeout); a dead process
# is noticed sooner (broker/cluster/liveness.py).
LEASE_TTL_S: Final = 3
KEEPALIVE_INTERVAL_S: Final = LEASE_TTL_S / 3
# A broker stops leading this long before its lease could expire in etcd.
FENCE_MARGIN_S: Final = 0.5
# Waiting for a previous registration of our node id to expire.
REGISTRATION_WAIT_S: Final = LEASE_TTL_S + 2.0
REGISTRATION_POLL_S: Final = 0.1
# After the metadata stream fails (etcd unreachable), wait this long before reading again.
FOLLOW_RETRY_S: Final = 0.5
# How long a topic create waits for this broker to have applied it.
APPLY_WAIT_S: Final = 5.0
# CreateTopics with partitions=-1 (Kafka's convention) means the broker default.
DEFAULT_PARTITIONS: Final = -1
# __consumer_offsets gets this many replicas, or one per live broker if fewer.
OFFSETS_REPLICATION_FACTOR_MAX: Final = 3
# Graceful stop: give the lease revocation this long.
LEAVE_TIMEOUT_S: Final = 2.0

_logger = get_logger()


class ClusterJoinError(ConfigError):
    """The broker cannot join the cluster (the message says why, in one line)."""


class ClusterMember:
    """One broker's membership (module docstring).  Create with :func:`join_cluster`."""

    def __init__(self, broker: Broker, store: MetadataStore, prefix: str) -> None:
        config = broker.config
        self.broker = broker
        self.store = store
        self.prefix = prefix
        self.node_id = config.node_id
        if config.advertise is not None:
            host, port = parse_listen(config.advertise)
        else:
            host, port = broker.advertised_host, broker.advertised_port
        # The controller drops a replica that restarted after an unclean shutdown
        # (it may have lost unflushed records) from the eligible leaders.
        self.registration = BrokerRegistration(
            config.node_id, host, port, config.rack, clean_shutdown=broker.clean_start
        )
        # Lease validity is on time.monotonic, which the view reads too.
        self.view = ClusterMetadataView(config.node_id, broker.topics, time.monotonic)
        self.lease_id = 0
        self.metadata = ClusterMetadata()
        self.applied_revision = 0
        self._mirror = PrefixView()
        self._apply_lock = trio.Lock()
        self._changed = trio.Event()  # set (and replaced) after each applied change
        self._published: dict[tuple[str, int], PartitionLeadership] = {}
        self._rng = random.Random()
        self._incarnations = TopicIncarnations(config.data_path)
        # Per topic, the stored configs this broker could not take (topic_configs.py).
        self._refused_configs: dict[str, dict[str, str]] = {}
        self.replicas = ReplicaManager(self, broker.clock_ms)

    # -- joining ----------------------------------------------------------------------

    async def join(self) -> None:
        """Steps 1-4 of the module docstring.  Raises ClusterJoinError."""
        try:
            cluster_id = await self._cluster_id()
            await trio.to_thread.run_sync(self._check_data_dir, cluster_id)
            await trio.to_thread.run_sync(self._incarnations.load)
            await self._register()
            self.broker.groups.coordinate_led_partitions(self.view.leads)
            await self.resync()
        except StoreUnavailableError as error:
            raise ClusterJoinError(
                f"cannot reach etcd for {self.prefix}: {error.message}"
            ) from error
        except MetadataStoreError as error:
            raise ClusterJoinError(
                f"etcd refused to join {self.prefix}: {error.message}"
            ) from error
        except StorageError as error:
            raise ClusterJoinError(error.message) from error
        self.broker.metadata = self.view
        self.broker.cluster = self
        _logger.info(
            "joined cluster",
            cluster_id=cluster_id,
            node=self.node_id,
            advertised=f"{self.registration.host}:{self.registration.port}",
            rack=self.registration.rack,
            brokers=sorted(self.metadata.brokers),
        )

    async def _cluster_id(self) -> str:
        found = await self.store.get(CLUSTER_ID_KEY)
        if found is None:
            fresh = ClusterId(secrets.token_hex(8))
            try:
                await self.store.put(CLUSTER_ID_KEY, encode(fresh), expected_version=ABSENT)
                return fresh.cluster_id
            except VersionConflictError:
                found = await self.store.get(CLUSTER_ID_KEY)
                assert found is not None, "cluster_id exists after a conflict"
        try:
            return decode(CLUSTER_ID_KEY, found.value, ClusterId).cluster_id
        except MetadataDecodeError as error:
            raise ClusterJoinError(error.message) from error

    def _check_data_dir(self, cluster_id: str) -> None:
        """Raises ClusterJoinError when the data dir belongs elsewhere."""
        data_dir = self.broker.config.data_path
        path = data_dir / MEMBERSHIP_FILE
        try:
            remembered = msgspec.json.decode(path.read_bytes(), type=ClusterMembership)
        except FileNotFoundError:
            single_node_topics = [n for n in self.broker.topics.names() if n != OFFSETS_TOPIC]
            if single_node_topics:
                raise ClusterJoinError(
                    f"data dir {data_dir} holds topics of a single-node broker "
                    f"({', '.join(single_node_topics[:3])}); start a cluster member on an "
                    "empty data dir"
                ) from None
            data = msgspec.json.encode(ClusterMembership(self.prefix, cluster_id))
            write_atomic(path, data)
            return
        except (OSError, msgspec.DecodeError) as error:
            raise ClusterJoinError(f"cannot read {path}: {error}") from error
        if remembered.prefix != self.prefix:
            raise ClusterJoinError(
                f"data dir {data_dir} belongs to the cluster under prefix "
                f"{remembered.prefix!r}, not {self.prefix!r}"
            )
        if remembered.cluster_id != cluster_id:
            raise ClusterJoinError(
                f"data dir {data_dir} belongs to cluster {remembered.cluster_id}, but etcd "
                f"prefix {self.prefix!r} holds cluster {cluster_id}"
            )

    async def _register(self) -> float:
        """Grant a lease, create brokers/<id> with it, stand for controller.  Returns
        when (time.monotonic) the grant was sent: the lease is valid TTL from then.
        Raises ClusterJoinError (the id stays registered by a live broker)."""
        sent_at = time.monotonic()
        lease = await self.store.grant_lease(LEASE_TTL_S)
        key = broker_key(self.node_id)
        deadline = trio.current_time() + REGISTRATION_WAIT_S
        holder: BrokerRegistration | None = None
        while True:
            try:
                await self.store.put(
                    key, encode(self.registration), expected_version=ABSENT, lease=lease.lease_id
                )
                break
            except VersionConflictError:
                pass
            found = await self.store.get(key)
            if found is not None:
                try:
                    holder = decode(key, found.value, BrokerRegistration)
                except MetadataDecodeError:
                    holder = None
            if trio.current_time() >= deadline:
                await self.store.revoke_lease(lease.lease_id)
                where = f"{holder.host}:{holder.port}" if holder is not None else "unknown"
                raise ClusterJoinError(
                    f"node id {self.node_id} is already registered by a live broker at {where}"
                )
            if found is not None:
                _logger.info("waiting for an earlier registration to expire", node=self.node_id)
                await trio.sleep(REGISTRATION_POLL_S)
        await self.store.put(
            controller_key(lease.lease_id),
            encode(ControllerCandidate(self.node_id)),
            lease=lease.lease_id,
        )
        self.lease_id = lease.lease_id
        self.view.lease_valid_until = sent_at + LEASE_TTL_S - FENCE_MARGIN_S
        return sent_at

    async def resync(self) -> None:
        """Read the whole cluster prefix and apply it.  Raises MetadataStoreError."""
        snapshot = await self.store.read_prefix("")
        await self.apply(snapshot)

    # -- running ----------------------------------------------------------------------

    async def run(self) -> None:
        """Keepalive, follower and controller, until cancelled."""
        from broker.cluster.controller import run_controller
        from broker.cluster.liveness import run_liveness

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_alive)
            nursery.start_soon(self._follow)
            nursery.start_soon(run_controller, self)
            nursery.start_soon(run_liveness, self)
            nursery.start_soon(self.replicas.run)

    async def _keep_alive(self) -> None:
        while True:  # until cancelled
            sent_at = time.monotonic()
            try:
                with trio.move_on_after(KEEPALIVE_INTERVAL_S * 2):
                    await self.store.keep_alive(self.lease_id)
                    self.view.lease_valid_until = sent_at + LEASE_TTL_S - FENCE_MARGIN_S
            except LeaseLostError:
                _logger.warning("lease lost; fenced until registered again", node=self.node_id)
                self.view.lease_valid_until = 0.0
                await self._register_again()
                continue
            except MetadataStoreError as error:
                _logger.warning("keepalive failed", error=error.message)
            await trio.sleep(max(0.0, sent_at + KEEPALIVE_INTERVAL_S - time.monotonic()))

    async def _register_again(self) -> None:
        # This process lost its lease, not its data: its replicas are as clean as
        # they were.
        self.registration = msgspec.structs.replace(self.registration, clean_shutdown=True)
        while True:  # until registered (the view leads nothing meanwhile)
            try:
                self.view.lease_valid_until = 0.0
                sent_at = await self._register()
                self.view.lease_valid_until = 0.0  # not before the re-read below
                await self.resync()
                self.view.lease_valid_until = sent_at + LEASE_TTL_S - FENCE_MARGIN_S
                _logger.info("registered again", node=self.node_id, lease=f"{self.lease_id:x}")
                return
            except ClusterJoinError as error:
                _logger.warning("cannot register again yet", error=error.message)
            except MetadataStoreError as error:
                _logger.warning("cannot register again yet", error=error.message)
            await trio.sleep(FOLLOW_RETRY_S)

    async def _follow(self) -> None:
        while True:  # until cancelled; each pass reads again after a failure
            try:
                async with follow_prefix(self.store, "") as updates:
                    async for update in updates:
                        await self.apply(update)
            except MetadataStoreError as error:
                _logger.warning("metadata stream failed; reading again", error=error.message)
            await trio.sleep(FOLLOW_RETRY_S)

    async def wait_applied(self, revision: int, timeout_s: float = APPLY_WAIT_S) -> bool:
        """Wait until this member applied ``revision``; False after ``timeout_s``."""
        with trio.move_on_after(timeout_s):
            while self.applied_revision < revision:
                await self._changed.wait()
            return True
        return False

    def change_event(self) -> trio.Event:
        """Set once the next change has been applied."""
        return self._changed

    # -- applying ---------------------------------------------------------------------

    async def apply(self, update: Update) -> None:
        """Apply one snapshot or one revision's events (module docstring).  Updates
        older than what was applied (a resync raced the watch) are skipped."""
        async with self._apply_lock:
            if isinstance(update, WatchBatch) and update.revision <= self._mirror.revision:
                return
            if isinstance(update, Snapshot) and update.revision < self._mirror.revision:
                return
            self._mirror.apply(update)
            metadata = decode_metadata(self._mirror.items)
            for problem in metadata.problems:
                _logger.warning("bad metadata", problem=problem)
            self.metadata = metadata
            self._publish(metadata)
            await self._reconcile_logs(metadata)
            await self.replicas.apply(metadata)
            self._publish(metadata)
            await self._coordinate_groups(metadata)
            self.applied_revision = self._mirror.revision
            changed, self._changed = self._changed, trio.Event()
            changed.set()

    async def reapply_roles(self) -> None:
        """Give the replica manager the applied metadata again (a role change of it
        failed) and publish what it put in place."""
        async with self._apply_lock:
            await self.replicas.apply(self.metadata)
            self._publish(self.metadata)

    def _publish(self, metadata: ClusterMetadata) -> None:
        """Publish the leaderships, wake who waits on a change.  No awaits: a handler
        sees the old leadership or the new one, never a mix.  A partition this node
        now leads counts as led once the replica manager has made it leader in that
        epoch (broker/replication/replica_manager.py)."""
        leaderships: dict[tuple[str, int], PartitionLeadership] = {}
        for name, assignment in metadata.topics.items():
            for index, replicas in enumerate(assignment.replicas):
                state = metadata.states.get((name, index))
                leaderships[(name, index)] = (
                    PartitionLeadership(NO_LEADER, 0, tuple(replicas), ())
                    if state is None
                    else PartitionLeadership(
                        state.leader, state.leader_epoch, tuple(replicas), tuple(state.isr)
                    )
                )
        changed = []
        for key, leadership in leaderships.items():
            if self._published.get(key) == leadership:
                continue
            local = self.broker.topics.get(key[0])
            if local is None or key[1] >= len(local.partitions):
                continue  # published once its log is open
            changed.append((key, leadership, local.partitions[key[1]]))
        # Led here once the replica manager put the leadership in place.
        held = frozenset(
            key
            for key, leadership in leaderships.items()
            if leadership.leader == self.node_id
            and not self.replicas.leads_in(key, leadership.leader_epoch)
        )
        controller = NO_CONTROLLER if metadata.controller is None else metadata.controller.node_id
        self.view.update(
            metadata.brokers, controller, frozenset(metadata.topics), leaderships, held
        )
        for key, leadership, partition in changed:
            known = key in self._published
            self._published[key] = leadership
            partition.wake_waiters(WakeReason.LEADERSHIP)
            # A new partition's first leader is news only when debugging.
            (_logger.info if known else _logger.debug)(
                "partition leadership",
                topic=key[0],
                partition=key[1],
                leader=leadership.leader,
                leader_epoch=leadership.leader_epoch,
            )
        for key in list(self._published):
            if key not in leaderships:
                del self._published[key]

    async def _coordinate_groups(self, metadata: ClusterMetadata) -> None:
        """Serve the groups of exactly the offsets partitions this node leads: load
        the ones it now leads, drop the groups of the ones it no longer leads."""
        assignment = metadata.topics.get(OFFSETS_TOPIC)
        led: set[int] = set()
        if assignment is not None:
            for index in range(assignment.partitions):
                state = metadata.states.get((OFFSETS_TOPIC, index))
                if state is not None and state.leader == self.node_id:
                    led.add(index)
        try:
            await self.broker.groups.lead_offsets_partitions(led)
        except StorageError as error:
            _logger.error("cannot load the committed offsets", error=error.message)

    async def _reconcile_logs(self, metadata: ClusterMetadata) -> None:
        """Open the logs of new topics and of new partitions of a topic, remove those
        of deleted topics (and of earlier incarnations of a name:
        broker/cluster/topic_incarnations.py)."""
        topics = self.broker.topics
        for name, assignment in sorted(metadata.topics.items()):
            local = topics.get(name)
            incarnation = metadata.topic_incarnations[name]
            if local is not None and self._incarnations.is_stale(name, incarnation):
                _logger.info("removing the logs of an earlier topic of that name", topic=name)
                try:
                    await topics.delete(name)
                    local = None
                except (DistributaryError, StorageError) as error:
                    _logger.error("cannot remove a deleted topic", topic=name, error=error.message)
            if local is not None:
                if len(local.partitions) < assignment.partitions:
                    try:
                        await topics.add_partitions(name, assignment.partitions)
                    except DistributaryError as error:
                        _logger.error(
                            "cannot open the logs of new partitions",
                            topic=name,
                            error=error.message,
                        )
                elif len(local.partitions) > assignment.partitions:
                    _logger.error(
                        "more local partitions than the cluster's; left as they are",
                        topic=name,
                        local=len(local.partitions),
                        cluster=assignment.partitions,
                    )
                continue
            try:
                await topics.create(name, assignment.partitions, assignment.configs)
            except DistributaryError as error:
                _logger.error("cannot open the logs of a topic", topic=name, error=error.message)
        for name in topics.names():
            if name in metadata.topics or name == OFFSETS_TOPIC:
                continue
            try:
                await topics.delete(name)
            except (DistributaryError, StorageError) as error:
                _logger.error("cannot remove a deleted topic", topic=name, error=error.message)
        await apply_topic_configs(topics, metadata, self._refused_configs)
        opened = {
            name: revision
            for name, revision in metadata.topic_incarnations.items()
            if topics.get(name) is not None
        }
        try:
            await trio.to_thread.run_sync(self._incarnations.save, opened)
        except StorageError as error:
            _logger.error("cannot remember the topics' incarnations", error=error.message)

    # -- topic administration ---------------------------------------------------------

    async def create_topics(self, body: CreateTopicsRequest) -> CreateTopicsResponse:
        """CreateTopics in a cluster (broker/cluster/topic_admin.py)."""
        results: list[TopicResult] = []
        for creatable in body.topics:
            partitions = creatable.partitions
            if partitions == DEFAULT_PARTITIONS:
                partitions = self.broker.config.default_partitions
            try:
                assignment = plan_topic(
                    self.metadata,
                    self.broker.topics,
                    creatable.name,
                    partitions,
                    creatable.replication_factor,
                    creatable.configs,
                    self._rng,
                )
                if not body.validate_only:
                    revision = await write_topic(self.store, creatable.name, assignment)
                    await self.wait_applied(revision)
                    _logger.info(
                        "topic created",
                        topic=creatable.name,
                        partitions=partitions,
                        replicas=assignment.replicas,
                    )
                results.append(TopicResult(creatable.name))
            except DistributaryError as error:
                results.append(TopicResult(creatable.name, int(error.code), error.message))
        return CreateTopicsResponse(results)

    async def create_partitions(self, body: CreatePartitionsRequest) -> CreatePartitionsResponse:
        """CreatePartitions in a cluster (broker/cluster/topic_admin.py)."""
        return await create_partitions(self, body)

    async def alter_configs(self, body: AlterConfigsRequest) -> AlterConfigsResponse:
        """AlterConfigs in a cluster (broker/cluster/topic_configs.py)."""
        return await alter_configs(self, body)

    async def delete_topics(self, body: DeleteTopicsRequest) -> DeleteTopicsResponse:
        """DeleteTopics in a cluster (broker/cluster/topic_admin.py)."""
        results: list[TopicResult] = []
        for name in body.names:
            try:
                check_not_internal(name)
                revision = await erase_topic(self.store, self.metadata, name)
                await self.wait_applied(revision)
                results.append(TopicResult(name))
            except DistributaryError as error:
                results.append(TopicResult(name, int(error.code), error.message))
        return DeleteTopicsResponse(results)

    async def create_topic_if_absent(self, name: str) -> None:
        """Auto-creation: the default partition count, one replica.  Raises
        InvalidTopicError, InvalidReplicationFactorError, MetadataStoreError."""
        if name in self.metadata.topics:
            return
        partitions = self.broker.config.default_partitions
        try:
            assignment = plan_topic(
                self.metadata, self.broker.topics, name, partitions, 1, {}, self._rng
            )
            revision = await write_topic(self.store, name, assignment)
        except TopicAlreadyExistsError:
            revision = await self.store.current_revision()
        await self.wait_applied(revision)

    async def create_offsets_topic_if_absent(self) -> None:
        """Create __consumer_offsets in the store (its configured partition count,
        compacted, min(OFFSETS_REPLICATION_FACTOR_MAX, live brokers) replicas each;
        min.insync.replicas follows from that as for any topic) unless it exists.  Store failures are logged:
        FindCoordinator then answers COORDINATOR_NOT_AVAILABLE and the client asks
        again."""
        if OFFSETS_TOPIC in self.metadata.topics:
            return
        groups = self.broker.groups
        try:
            try:
                assignment = plan_topic(
                    self.metadata,
                    self.broker.topics,
                    OFFSETS_TOPIC,
                    groups.config.offsets_topic_partitions,
                    min(OFFSETS_REPLICATION_FACTOR_MAX, max(1, len(self.metadata.brokers))),
                    offsets_topic_configs(groups.config),
                    self._rng,
                    internal=True,
                )
                revision = await write_topic(self.store, OFFSETS_TOPIC, assignment)
                _logger.info("offsets topic created", partitions=assignment.partitions)
            except TopicAlreadyExistsError:
                revision = await self.store.current_revision()
        except DistributaryError as error:
            _logger.warning("cannot create the offsets topic", error=error.message)
            return
        await self.wait_applied(revision)

    # -- leaving ----------------------------------------------------------------------

    async def leave(self) -> None:
        """Revoke the lease (graceful stop); gives up after LEAVE_TIMEOUT_S."""
        self.view.lease_valid_until = 0.0
        with trio.move_on_after(LEAVE_TIMEOUT_S):
            try:
                await self.store.revoke_lease(self.lease_id)
            except MetadataStoreError as error:
                _logger.warning("cannot revoke the lease", error=error.message)


@asynccontextmanager
async def join_cluster(broker: Broker) -> AsyncIterator[ClusterMember]:
    """Open the etcd store (outgoing connections bound to the listen host), join,
    yield the member, leave on exit.  Raises ClusterJoinError, InvalidConfigError."""
    config = broker.config
    assert config.cluster is not None
    url = parse_etcd_url(config.cluster)
    host = config.host
    local_address = host if host not in ("", "0.0.0.0", "::") else None
    async with open_metadata_store(
        config.cluster, config.data_path, local_address=local_address
    ) as store:
        member = ClusterMember(broker, store, url.prefix)
        await member.join()
        try:
            yield member
        finally:
            with trio.CancelScope(shield=True):
                await member.leave()
