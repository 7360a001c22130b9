"""Topic creation and deletion in a cluster, on whichever broker is asked.

A create validates the request as a single node would (name, partition count,
configs), places the replicas over the live brokers (broker/cluster/placement.py),
and writes the topic key and every partition's initial state in one transaction
that succeeds only if the topic key is absent (so two brokers creating the same
name at once cannot both win).  A txn holds at most TXN_OPERATIONS_MAX operations:
the states of a larger topic follow in further transactions, each conditional on
the topic key still being the one just created.  The answer is sent once this
broker has applied the new revision, so a Metadata request to it right after
sees the topic; every other broker sees it when its watch delivers it.

A delete removes the topic key and its state keys the same way; every member
then closes and removes its local logs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Final

from broker.cluster.placement import LiveBroker, initial_state, place_replicas
from broker.cluster.schema import TopicAssignment, encode, state_key, topic_key
from broker.cluster.snapshot import ClusterMetadata
from broker.cluster.store import (
    ABSENT,
    TXN_OPERATIONS_MAX,
    Compare,
    Delete,
    MetadataStore,
    Operation,
    Put,
    VersionConflictError,
)
from broker.groups.config import OFFSETS_TOPIC
from broker.storage.config import LogConfig
from broker.topics import TopicManager, log_config_for, validate_topic_name
from client.errors import (
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

# CreateTopics with replication_factor -1 means the default, one replica.
DEFAULT_REPLICATION_FACTOR = 1
# A topic of at least this replication factor that does not set
# min.insync.replicas gets MIN_INSYNC_REPLICAS_REPLICATED (so acks=all survives
# the loss of one replica and still needs two copies).
REPLICATED_FACTOR_MIN: Final = 3
MIN_INSYNC_REPLICAS_REPLICATED: Final = 2
MIN_INSYNC_REPLICAS_KEY: Final = "min.insync.replicas"


def plan_topic(
    metadata: ClusterMetadata,
    topics: TopicManager,
    name: str,
    partitions: int,
    replication_factor: int,
    configs: dict[str, str],
    rng: random.Random,
    *,
    internal: bool = False,
) -> TopicAssignment:
    """Validate a create and place its replicas (``internal``: the broker's own
    __consumer_offsets, which clients cannot create).  Raises InvalidTopicError,
    TopicAlreadyExistsError, InvalidPartitionsError, InvalidConfigError,
    InvalidReplicationFactorError."""
    validate_topic_name(name)
    if (name == OFFSETS_TOPIC and not internal) or name in metadata.topics:
        raise TopicAlreadyExistsError(f"topic {name!r} already exists")
    if not 1 <= partitions <= topics.partitions_max:
        raise InvalidPartitionsError(
            f"partition count {partitions} is outside [1, {topics.partitions_max}]"
        )
    if replication_factor == -1:
        replication_factor = DEFAULT_REPLICATION_FACTOR
    if replication_factor < 1:
        raise InvalidReplicationFactorError(f"replication factor {replication_factor} is below 1")
    configs = replication_configs(topics.defaults, configs, replication_factor)
    live = [
        LiveBroker(registration.node_id, registration.rack)
        for registration in metadata.brokers.values()
    ]
    start = rng.randrange(max(len(live), 1))
    replicas = place_replicas(live, partitions, replication_factor, start)
    return TopicAssignment(replicas=replicas, configs=configs)


def replication_configs(
    defaults: LogConfig, configs: Mapping[str, str], replication_factor: int
) -> dict[str, str]:
    """``configs`` validated, with ``min.insync.replicas`` set when the topic has
    REPLICATED_FACTOR_MIN replicas or more and neither it nor the broker's
    ``topic_defaults`` set one.  Raises InvalidConfigError (also for a min ISR
    above the replication factor: acks=all could never succeed)."""
    config = log_config_for(defaults, configs)
    stored = dict(configs)
    if (
        replication_factor >= REPLICATED_FACTOR_MIN
        and config.min_insync_replicas == LogConfig().min_insync_replicas
        and not any(_is_min_insync_key(key) for key in configs)
    ):
        stored[MIN_INSYNC_REPLICAS_KEY] = str(MIN_INSYNC_REPLICAS_REPLICATED)
    elif config.min_insync_replicas > replication_factor:
        raise InvalidConfigError(
            f"min.insync.replicas={config.min_insync_replicas} is above the replication "
            f"factor {replication_factor}"
        )
    return stored


def _is_min_insync_key(key: str) -> bool:
    return key.strip().replace(".", "_").replace("-", "_").lower() == "min_insync_replicas"


async def write_topic(store: MetadataStore, name: str, assignment: TopicAssignment) -> int:
    """Create the topic key and its partitions' states.  Returns the store revision
    after the last write.  Raises TopicAlreadyExistsError, MetadataStoreError."""
    key = topic_key(name)
    states: list[Operation] = [
        Put(state_key(name, index), encode(initial_state(replicas)))
        for index, replicas in enumerate(assignment.replicas)
    ]
    first = TXN_OPERATIONS_MAX - 1
    try:
        revision = await store.txn(
            [Compare(key, ABSENT)], [Put(key, encode(assignment)), *states[:first]]
        )
    except VersionConflictError:
        raise TopicAlreadyExistsError(f"topic {name!r} already exists") from None
    created = revision
    for start in range(first, len(states), TXN_OPERATIONS_MAX):
        chunk = states[start : start + TXN_OPERATIONS_MAX]
        revision = await store.txn([Compare(key, created, "create")], chunk)
    return revision


async def erase_topic(store: MetadataStore, metadata: ClusterMetadata, name: str) -> int:
    """Delete the topic key, then its state keys.  Returns the store revision after
    the last write.  Raises UnknownTopicOrPartitionError, MetadataStoreError."""
    assignment = metadata.topics.get(name)
    version = metadata.topic_versions.get(name)
    if assignment is None or version is None:
        raise UnknownTopicOrPartitionError(f"unknown topic {name!r}")
    key = topic_key(name)
    states: Sequence[Operation] = [
        Delete(state_key(name, index)) for index in range(assignment.partitions)
    ]
    first = TXN_OPERATIONS_MAX - 1
    try:
        revision = await store.txn([Compare(key, version)], [Delete(key), *states[:first]])
    except VersionConflictError:
        raise UnknownTopicOrPartitionError(f"topic {name!r} changed meanwhile; retry") from None
    for start in range(first, len(states), TXN_OPERATIONS_MAX):
        revision = await store.txn([], states[start : start + TXN_OPERATIONS_MAX])
    return revision
