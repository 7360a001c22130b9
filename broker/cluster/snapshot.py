"""The cluster metadata decoded from the store's keys: who is live, who controls,
which topics exist, each partition's state and version.  No I/O.

:func:`decode_metadata` turns the keys a member mirrors (a PrefixView over the
whole cluster prefix) into a :class:`ClusterMetadata`.  A key whose value does not
decode is skipped and named in ``problems`` (the member logs them), so one bad
value cannot stop a broker from following the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from broker.cluster.schema import (
    BROKERS_PREFIX,
    CONTROLLER_PREFIX,
    OFFLINE_PREFIX,
    TOPICS_PREFIX,
    BrokerRegistration,
    ControllerCandidate,
    MetadataDecodeError,
    OfflineReplica,
    PartitionState,
    TopicAssignment,
    decode,
    parse_topics_key,
)
from broker.cluster.store import KeyValue


@dataclass(frozen=True, slots=True)
class Controller:
    """The elected controller: its election key and epoch (the key's create_revision)."""

    node_id: int
    key: str
    epoch: int


@dataclass
class ClusterMetadata:
    brokers: dict[int, BrokerRegistration] = field(default_factory=dict)
    # The create_revision of each registration: the broker epoch (one per lifetime).
    broker_epochs: dict[int, int] = field(default_factory=dict)
    # The lease each registration is held by (the controller revokes a dead one's).
    broker_leases: dict[int, int] = field(default_factory=dict)
    controller: Controller | None = None
    topics: dict[str, TopicAssignment] = field(default_factory=dict)
    # The version (mod_revision) of each topic key, for deletes.
    topic_versions: dict[str, int] = field(default_factory=dict)
    # The create_revision of each topic key: which incarnation of the name it is.
    topic_incarnations: dict[str, int] = field(default_factory=dict)
    states: dict[tuple[str, int], PartitionState] = field(default_factory=dict)
    # The version (mod_revision) of each state key: a CAS on it changes the state.
    state_versions: dict[tuple[str, int], int] = field(default_factory=dict)
    # Replicas whose broker gave them up after a storage failure (OfflineReplica):
    # partition -> those brokers.
    offline_replicas: dict[tuple[str, int], frozenset[int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def live(self) -> frozenset[int]:
        return frozenset(self.brokers)


def decode_metadata(items: Mapping[str, KeyValue]) -> ClusterMetadata:
    """The metadata the keys hold (module docstring)."""
    found = ClusterMetadata()
    candidates: list[tuple[int, str, int]] = []
    for key, item in items.items():
        try:
            if key.startswith(BROKERS_PREFIX):
                registration = decode(key, item.value, BrokerRegistration)
                found.brokers[registration.node_id] = registration
                found.broker_epochs[registration.node_id] = item.create_revision
                found.broker_leases[registration.node_id] = item.lease
            elif key.startswith(CONTROLLER_PREFIX):
                candidate = decode(key, item.value, ControllerCandidate)
                candidates.append((item.create_revision, key, candidate.node_id))
            elif key.startswith(OFFLINE_PREFIX):
                offline = decode(key, item.value, OfflineReplica)
                replica = (offline.topic, offline.partition)
                found.offline_replicas[replica] = found.offline_replicas.get(
                    replica, frozenset()
                ) | {offline.node_id}
            elif key.startswith(TOPICS_PREFIX):
                parsed = parse_topics_key(key)
                if parsed is None:
                    found.problems.append(f"unexpected metadata key {key!r}")
                elif parsed[1] is None:
                    found.topics[parsed[0]] = decode(key, item.value, TopicAssignment)
                    found.topic_versions[parsed[0]] = item.mod_revision
                    found.topic_incarnations[parsed[0]] = item.create_revision
                else:
                    found.states[(parsed[0], parsed[1])] = decode(key, item.value, PartitionState)
                    found.state_versions[(parsed[0], parsed[1])] = item.mod_revision
        except MetadataDecodeError as error:
            found.problems.append(error.message)
    if candidates:
        epoch, key, node_id = min(candidates)
        found.controller = Controller(node_id, key, epoch)
    return found
