"""Topic configs in a cluster: AlterConfigs on whichever broker is asked, and every
member taking the altered configs when it applies the metadata.

A topic's config overrides live in its topic key (``TopicAssignment.configs``).
An alter validates the change against those stored overrides with the single
node's check (:meth:`TopicManager.altered_overrides`: an unknown key or a bad
value is INVALID_CONFIG with the same message), then puts the topic key with the
new overrides in a transaction conditional on the key's version, so an alter and
a concurrent CreatePartitions or alter cannot both win.  The loser catches up
with the store and plans again, ALTER_ATTEMPTS_MAX times in all.  The answer is
sent once this broker has applied the new revision.

Every member, when it applies the metadata (:func:`apply_topic_configs`),
compares each topic's stored overrides with its local topic's and, where they
differ, alters the local topic (:meth:`TopicManager.alter_configs`), so its
partitions take the new retention, segment size and so on at once, and its
DescribeTopics answers show them.  Keys pass through as stored: the member
validates them with the same function that accepted them, so whatever the
cluster stores (replication keys such as ``min.insync.replicas`` included) is
accepted.  A member that still cannot take them (its ``limits.frame_bytes_max``
is below a stored ``batch_bytes_max``) keeps its own and logs the refusal once
per distinct set of overrides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import msgspec

from broker.cluster.schema import TopicAssignment, encode, topic_key
from broker.cluster.snapshot import ClusterMetadata
from broker.cluster.store import Compare, MetadataStore, Put, VersionConflictError
from broker.logging import get_logger
from broker.produce import check_not_internal
from broker.topics import DEFAULT_VALUE, TopicManager
from client.errors import (
    DistributaryError,
    InvalidConfigError,
    StorageError,
    UnknownTopicOrPartitionError,
)
from client.protocol.messages import AlterConfigsRequest, AlterConfigsResponse, TopicResult

if TYPE_CHECKING:
    from broker.cluster.member import ClusterMember

# An alter that meets a concurrent change of its topic plans again; this many
# attempts in all (as a partition growth).
ALTER_ATTEMPTS_MAX: Final = 3

_logger = get_logger()


def plan_configs(
    metadata: ClusterMetadata, topics: TopicManager, name: str, changes: Mapping[str, str]
) -> TopicAssignment:
    """The topic with ``changes`` applied to its stored overrides (a value of
    ``default`` removes one), validated as on a single node, and with no
    ``min.insync.replicas`` above the replication factor (acks=all could never
    succeed).  Raises UnknownTopicOrPartitionError, InvalidConfigError."""
    assignment = metadata.topics.get(name)
    if assignment is None:
        raise UnknownTopicOrPartitionError(f"unknown topic {name!r}")
    overrides, config = topics.altered_overrides(assignment.configs, changes)
    replication_factor = len(assignment.replicas[0]) if assignment.replicas else 1
    if config.min_insync_replicas > replication_factor:
        raise InvalidConfigError(
            f"min.insync.replicas={config.min_insync_replicas} is above the replication "
            f"factor {replication_factor}"
        )
    return msgspec.structs.replace(assignment, configs=overrides)


async def write_configs(
    store: MetadataStore, name: str, version: int, altered: TopicAssignment
) -> int:
    """Put the altered topic key if it still has ``version``.  Returns the store
    revision written.  Raises UnknownTopicOrPartitionError (the topic changed
    meanwhile: ask again), MetadataStoreError."""
    key = topic_key(name)
    try:
        return await store.txn([Compare(key, version)], [Put(key, encode(altered))])
    except VersionConflictError:
        raise UnknownTopicOrPartitionError(f"topic {name!r} changed meanwhile; retry") from None


async def alter_configs(member: ClusterMember, body: AlterConfigsRequest) -> AlterConfigsResponse:
    """AlterConfigs through ``member``: each topic's overrides changed (or, with
    validate_only, only checked), answered once ``member`` has applied the change."""
    results: list[TopicResult] = []
    for alterable in body.topics:
        try:
            check_not_internal(alterable.name)
            revision = await _alter_topic(
                member, alterable.name, alterable.configs, body.validate_only
            )
            if revision is not None:
                await member.wait_applied(revision)
            results.append(TopicResult(alterable.name))
        except DistributaryError as error:
            results.append(TopicResult(alterable.name, int(error.code), error.message))
    return AlterConfigsResponse(results)


async def _alter_topic(
    member: ClusterMember, name: str, changes: Mapping[str, str], validate_only: bool
) -> int | None:
    """Plan and write one alter; after a conflict catch up with the store and plan
    again, ALTER_ATTEMPTS_MAX times in all.  Returns the revision written (None when
    only validating).  Raises like plan_configs and write_configs."""
    for attempt in range(ALTER_ATTEMPTS_MAX):
        metadata = member.metadata
        altered = plan_configs(metadata, member.broker.topics, name, changes)
        if validate_only:
            return None
        try:
            revision = await write_configs(
                member.store, name, metadata.topic_versions[name], altered
            )
        except UnknownTopicOrPartitionError:
            if attempt + 1 >= ALTER_ATTEMPTS_MAX:
                raise
            await member.wait_applied(await member.store.current_revision())
            continue
        _logger.info("topic config altered", topic=name, configs=altered.configs)
        return revision
    raise AssertionError("unreachable: the loop returns or raises")


def local_changes(local: Mapping[str, str], stored: Mapping[str, str]) -> dict[str, str]:
    """The alter that turns a local topic's overrides into the stored ones: empty
    when they are equal; else every local key the store lacks reset to ``default``,
    then every stored key set (a stored key also replaces a local one spelled
    differently, ``retention_ms`` for ``retention.ms``)."""
    if dict(local) == dict(stored):
        return {}
    changes = {key: DEFAULT_VALUE for key in local if key not in stored}
    changes.update(stored)
    return changes


async def apply_topic_configs(
    topics: TopicManager, metadata: ClusterMetadata, refused: dict[str, dict[str, str]]
) -> None:
    """Alter every local topic whose overrides differ from the stored ones (module
    docstring).  ``refused`` remembers, per topic, the stored overrides this
    broker could not take, so the refusal is logged once."""
    for name, assignment in sorted(metadata.topics.items()):
        local = topics.get(name)
        if local is None:
            continue
        changes = local_changes(local.record.configs, assignment.configs)
        if not changes or refused.get(name) == assignment.configs:
            continue
        try:
            await topics.alter_configs(name, changes)
            refused.pop(name, None)
        except (DistributaryError, StorageError) as error:
            refused[name] = dict(assignment.configs)
            _logger.error(
                "cannot take the topic's configs; keeping the local ones",
                topic=name,
                configs=assignment.configs,
                error=error.message,
            )
    for name in [name for name in refused if name not in metadata.topics]:
        del refused[name]
