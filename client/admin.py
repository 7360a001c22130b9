"""The async admin client: topics, consumer groups (list, describe, delete, set
offsets) and cluster metadata.

Runs on trio or asyncio (anyio).  Requests go to the controller when the
metadata names one, else to any broker; connection trouble is retried with
backoff.  Per-topic errors come back as typed exceptions: TopicAlreadyExistsError,
UnknownTopicOrPartitionError, InvalidTopicError, InvalidPartitionsError,
InvalidConfigError; for groups UnknownGroupError and GroupNotEmptyError.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import anyio
import anyio.abc

from client._io.cluster import Cluster, ClusterClient
from client.errors import ConnectionClosedError, DistributaryError, error_for_code
from client.group import commit_offsets, fetch_committed, from_wire
from client.protocol.messages import (
    AlterableTopic,
    AlterConfigsRequest,
    AlterConfigsResponse,
    CreatableTopic,
    CreatePartitionsRequest,
    CreatePartitionsResponse,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteGroupsRequest,
    DeleteGroupsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    DescribedGroup,
    DescribeGroupsRequest,
    DescribeGroupsResponse,
    DescribeTopicsRequest,
    DescribeTopicsResponse,
    ElectLeadersRequest,
    ElectLeadersResponse,
    ElectLeadersTopic,
    ListGroupsRequest,
    ListGroupsResponse,
    MetadataResponse,
    PartitionCount,
    Request,
    TopicResult,
)
from client.types import (
    BrokerNode,
    ClusterMetadata,
    GroupDescription,
    GroupListing,
    GroupMember,
    GroupPartition,
    LeaderElection,
    NewTopic,
    PartitionInfo,
    PartitionOffsets,
    TopicDescription,
    TopicInfo,
    TopicPartition,
)


class Admin(ClusterClient):
    """Administers topics.  Use as ``async with Admin(...) as admin:``."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] = "127.0.0.1:9392",
        *,
        client_id: str = "",
        request_timeout_ms: int = 30_000,
        connect_timeout_ms: int = 5_000,
        reconnect_attempts_max: int = 5,
        rng: random.Random | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.reconnect_attempts_max = reconnect_attempts_max
        self._random = rng if rng is not None else random.Random()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._cluster: Cluster | None = None
        self._closed = False

    async def start(self) -> None:
        """Open the client; ``close()`` must be called from the same task."""
        await self._open_cluster()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        assert self._cluster is not None, "never started"
        await self._cluster.shutdown()

    def _require_cluster(self) -> Cluster:
        if self._closed:
            raise ConnectionClosedError("the admin client is closed")
        assert self._cluster is not None, "the admin client is not started (use `async with`)"
        return self._cluster

    async def _to_controller(self, body: Request, *, timeout_ms: int | None = None) -> object:
        cluster = self._require_cluster()

        async def attempt() -> object:
            if cluster.controller_id < 0:
                await cluster.refresh_metadata([])
            connection = await cluster.connection_for_node(cluster.controller_id)
            response = await connection.request(body, timeout_ms=timeout_ms)
            return response.body

        return await cluster.call_with_retries(attempt, attempts_max=self.reconnect_attempts_max)

    # -- topics -------------------------------------------------------------------------

    async def create_topics(
        self, topics: Iterable[NewTopic], *, timeout_ms: int = 30_000, validate_only: bool = False
    ) -> None:
        """Create topics.  Raises the first topic's typed error (TopicAlreadyExistsError,
        InvalidTopicError, InvalidPartitionsError, InvalidConfigError...)."""
        request = CreateTopicsRequest(
            [
                CreatableTopic(t.name, t.partitions, t.replication_factor, dict(t.configs or {}))
                for t in topics
            ],
            timeout_ms,
            validate_only,
        )
        body = await self._to_controller(request, timeout_ms=timeout_ms + 5_000)
        assert isinstance(body, CreateTopicsResponse)
        _raise_first(body.topics)
        cluster = self._require_cluster()
        for topic in request.topics:
            cluster.invalidate(topic.name)

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        replication_factor: int = 1,
        configs: dict[str, str] | None = None,
    ) -> None:
        """Create one topic; see :meth:`create_topics`."""
        await self.create_topics([NewTopic(name, partitions, replication_factor, configs)])

    async def delete_topics(self, names: Iterable[str], *, timeout_ms: int = 30_000) -> None:
        """Delete topics.  Raises UnknownTopicOrPartitionError for a missing one."""
        request = DeleteTopicsRequest(list(names), timeout_ms)
        body = await self._to_controller(request, timeout_ms=timeout_ms + 5_000)
        assert isinstance(body, DeleteTopicsResponse)
        cluster = self._require_cluster()
        for name in request.names:
            cluster.invalidate(name)
        _raise_first(body.topics)

    async def alter_topic_configs(
        self, name: str, configs: dict[str, str], *, validate_only: bool = False
    ) -> None:
        """Change a topic's config overrides: the keys named get their new value
        (validated as at creation), the value ``"default"`` removes an override,
        other keys keep theirs.  Raises UnknownTopicOrPartitionError,
        InvalidConfigError, InvalidTopicError (an internal topic)."""
        request = AlterConfigsRequest([AlterableTopic(name, dict(configs))], validate_only)
        body = await self._to_controller(request)
        assert isinstance(body, AlterConfigsResponse)
        _raise_first(body.topics)

    async def create_partitions(
        self, name: str, count: int, *, timeout_ms: int = 30_000, validate_only: bool = False
    ) -> None:
        """Raise a topic's partition count to ``count`` (the new total, as Kafka's
        CreatePartitions).  Producers and consumers see the new partitions at
        their next metadata refresh.  Raises InvalidPartitionsError (not more
        than today, or above the broker's maximum), UnknownTopicOrPartitionError."""
        request = CreatePartitionsRequest([PartitionCount(name, count)], timeout_ms, validate_only)
        body = await self._to_controller(request, timeout_ms=timeout_ms + 5_000)
        assert isinstance(body, CreatePartitionsResponse)
        self._require_cluster().invalidate(name)
        _raise_first(body.topics)

    async def list_topics(self, *, internal: bool = False) -> list[str]:
        """Names of every topic, sorted (internal topics only if asked)."""
        metadata = await self.cluster_metadata()
        return sorted(t.name for t in metadata.topics if internal or not t.internal)

    async def describe_topics(self, names: Iterable[str] | None = None) -> list[TopicDescription]:
        """Configs and per-partition offsets and sizes.  Raises the first missing
        topic's UnknownTopicOrPartitionError."""
        request = DescribeTopicsRequest(None if names is None else list(names))
        cluster = self._require_cluster()
        body = await cluster.call_with_retries(
            lambda: cluster.request_any(request), attempts_max=self.reconnect_attempts_max
        )
        assert isinstance(body, DescribeTopicsResponse)
        descriptions: list[TopicDescription] = []
        for topic in body.topics:
            if topic.error_code:
                raise error_for_code(topic.error_code, topic.error_message or topic.name)
            descriptions.append(
                TopicDescription(
                    topic.name,
                    dict(topic.configs),
                    tuple(
                        PartitionOffsets(
                            p.partition,
                            p.leader,
                            p.log_start_offset,
                            p.log_end_offset,
                            p.high_watermark,
                            p.size_bytes,
                            p.segment_count,
                        )
                        for p in sorted(topic.partitions, key=lambda p: p.partition)
                    ),
                    topic.internal,
                )
            )
        return descriptions

    async def cluster_metadata(self, topics: Sequence[str] | None = None) -> ClusterMetadata:
        """Brokers, controller and topics (all topics, or those named)."""
        cluster = self._require_cluster()
        body: MetadataResponse = await cluster.call_with_retries(
            lambda: cluster.refresh_metadata(None if topics is None else list(topics)),
            attempts_max=self.reconnect_attempts_max,
        )
        return ClusterMetadata(
            body.cluster_id,
            body.controller_id,
            tuple(BrokerNode(b.node_id, b.host, b.port) for b in body.brokers),
            tuple(
                TopicInfo(
                    t.name,
                    tuple(
                        PartitionInfo(
                            t.name,
                            p.partition,
                            p.leader,
                            p.leader_epoch,
                            tuple(p.replicas),
                            tuple(p.isr),
                        )
                        for p in sorted(t.partitions, key=lambda p: p.partition)
                    ),
                    t.internal,
                )
                for t in body.topics
                if not t.error_code
            ),
        )

    async def elect_leaders(
        self, partitions: Iterable[tuple[str, int | None]] | None = None
    ) -> list[LeaderElection]:
        """Move leadership back to each partition's preferred replica (its first) now:
        ``partitions`` as (topic, partition) pairs, partition None for all of a topic,
        or None for every partition.  The controller answers (retried on the one a
        metadata refresh names); one LeaderElection per partition, ``error`` None
        when leadership moved, else ElectionNotNeededError (already there),
        PreferredLeaderNotAvailableError, UnknownTopicOrPartitionError."""
        topics: list[ElectLeadersTopic] | None = None
        if partitions is not None:
            wanted: dict[str, list[int] | None] = {}
            for name, partition in partitions:
                if partition is None:
                    wanted[name] = None
                elif name not in wanted or wanted[name] is not None:
                    listed = wanted.setdefault(name, [])
                    assert listed is not None
                    listed.append(partition)
            topics = [ElectLeadersTopic(name, listed) for name, listed in wanted.items()]
        request = ElectLeadersRequest(topics)
        cluster = self._require_cluster()

        async def attempt() -> ElectLeadersResponse:
            if cluster.controller_id < 0:
                await cluster.refresh_metadata([])
            connection = await cluster.connection_for_node(cluster.controller_id)
            body = (await connection.request(request)).body
            assert isinstance(body, ElectLeadersResponse)
            if body.error_code:
                raise error_for_code(body.error_code, body.error_message or "")
            return body

        response = await cluster.call_with_retries(
            attempt, attempts_max=self.reconnect_attempts_max, refresh_topics=[]
        )
        return [
            LeaderElection(
                topic.name,
                result.partition,
                result.leader,
                error_for_code(result.error_code, result.error_message or "")
                if result.error_code
                else None,
            )
            for topic in response.topics
            for result in topic.partitions
        ]

    # -- consumer groups ------------------------------------------------------------------

    async def _request(self, body: Request) -> object:
        cluster = self._require_cluster()
        return await cluster.call_with_retries(
            lambda: cluster.request_any(body), attempts_max=self.reconnect_attempts_max
        )

    async def _request_coordinator(self, group_id: str, body: Request) -> object:
        """``body`` (about ``group_id`` alone) to that group's coordinator."""
        cluster = self._require_cluster()
        return await cluster.call_with_retries(
            lambda: cluster.request_coordinator(group_id, body),
            attempts_max=self.reconnect_attempts_max,
        )

    async def list_groups(self, states: Iterable[str] | None = None) -> list[GroupListing]:
        """Every consumer group (optionally only in these states), sorted by id.
        Asks one broker (what it lists: the groups it coordinates, on one node all)."""
        body = await self._request(ListGroupsRequest(None if states is None else list(states)))
        assert isinstance(body, ListGroupsResponse)
        if body.error_code:
            raise error_for_code(body.error_code, body.error_message)
        return sorted(
            (GroupListing(g.group_id, g.state, g.member_count) for g in body.groups),
            key=lambda listing: listing.group_id,
        )

    async def describe_groups(self, group_ids: Iterable[str]) -> list[GroupDescription]:
        """State, members, assignment, and per partition the committed offset, log
        end offset and lag.  Raises UnknownGroupError for a missing group."""
        descriptions = []
        for group_id in group_ids:
            body = await self._request_coordinator(group_id, DescribeGroupsRequest([group_id]))
            assert isinstance(body, DescribeGroupsResponse)
            for group in body.groups:
                if group.error_code:
                    raise error_for_code(group.error_code, group.error_message or group.group_id)
                descriptions.append(_group_description(group))
        return descriptions

    async def describe_group(self, group_id: str) -> GroupDescription:
        """See :meth:`describe_groups`."""
        return (await self.describe_groups([group_id]))[0]

    async def delete_groups(self, group_ids: Iterable[str]) -> None:
        """Delete groups and their committed offsets.  Raises GroupNotEmptyError (it
        has members), UnknownGroupError."""
        for group_id in group_ids:
            body = await self._request_coordinator(group_id, DeleteGroupsRequest([group_id]))
            assert isinstance(body, DeleteGroupsResponse)
            for result in body.results:
                if result.error_code:
                    raise error_for_code(result.error_code, result.error_message or result.group_id)

    async def committed_offsets(
        self, group_id: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, int]:
        """The group's committed offsets (all, or of ``partitions`` that have one)."""
        return await fetch_committed(
            self._require_cluster(),
            group_id,
            None if partitions is None else list(partitions),
            attempts_max=self.reconnect_attempts_max,
        )

    async def set_offsets(
        self, group_id: str, offsets: dict[TopicPartition, int], *, metadata: str = ""
    ) -> None:
        """Commit ``offsets`` for a group from outside it (reset-offsets).  Raises
        GroupNotEmptyError while the group has members, and a partition's typed
        error (e.g. UnknownTopicOrPartitionError)."""
        await commit_offsets(
            self._require_cluster(),
            group_id,
            offsets,
            metadata=metadata,
            attempts_max=self.reconnect_attempts_max,
        )


def _group_description(group: DescribedGroup) -> GroupDescription:
    return GroupDescription(
        group.group_id,
        group.state,
        group.group_epoch,
        group.assignor,
        tuple(
            GroupMember(
                m.member_id,
                m.instance_id,
                m.client_id,
                m.member_epoch,
                m.state,
                tuple(m.subscribed_topic_names),
                m.subscribed_topic_regex,
                tuple(sorted(from_wire(m.assignment))),
                tuple(sorted(from_wire(m.revoking))),
                tuple(sorted(from_wire(m.target))),
                m.session_timeout_ms,
                m.heartbeat_interval_ms,
            )
            for m in group.members
        ),
        tuple(
            GroupPartition(
                p.topic,
                p.partition,
                None if p.committed_offset < 0 else p.committed_offset,
                p.log_end_offset,
                None if p.lag < 0 else p.lag,
                p.member_id,
                p.metadata,
                p.commit_time_ms,
            )
            for p in group.partitions
        ),
    )


def _raise_first(results: list[TopicResult]) -> None:
    for result in results:
        if result.error_code:
            error: DistributaryError = error_for_code(
                result.error_code, result.error_message or result.name
            )
            raise error
