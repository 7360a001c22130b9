"""The cluster's metadata as stored: the keys under the cluster prefix and the
msgspec structs their values decode to (msgpack, so a value is small and a field
added later with a default still reads old values).

    cluster_id                         ClusterId: fixed at the cluster's first start
    brokers/<node id>                  BrokerRegistration, put with the broker's lease
    controller/<lease hex>             ControllerCandidate, put with the broker's lease
    topics/<topic>                     TopicAssignment: replica lists, configs
    topics/<topic>/partitions/<p>/state  PartitionState: leader, leader epoch, ISR

A broker's data dir remembers which cluster it belongs to in ``cluster.json``
(:class:`ClusterMembership`, JSON so an operator can read it).
"""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec

from client.errors import DistributaryError

CLUSTER_ID_KEY: Final = "cluster_id"
BROKERS_PREFIX: Final = "brokers/"
CONTROLLER_PREFIX: Final = "controller/"
TOPICS_PREFIX: Final = "topics/"
MEMBERSHIP_FILE: Final = "cluster.json"
# A partition without a leader (its replicas are all down).
NO_LEADER: Final = -1

T = TypeVar("T")


class ClusterId(msgspec.Struct, frozen=True):
    cluster_id: str


class BrokerRegistration(msgspec.Struct, frozen=True):
    """A live broker: where clients reach it, its rack (None: no rack), and whether its
    last run ended with a clean shutdown (False: it may have lost unflushed records,
    so it leaves every ELR; see broker/replication/election.py)."""

    node_id: int
    host: str
    port: int
    rack: str | None = None
    clean_shutdown: bool = True


class ControllerCandidate(msgspec.Struct, frozen=True):
    node_id: int


class TopicAssignment(msgspec.Struct, frozen=True):
    """A topic: ``replicas[p]`` are partition p's replicas, the preferred leader first."""

    replicas: list[list[int]]
    configs: dict[str, str] = {}
    created_ms: int = 0

    @property
    def partitions(self) -> int:
        return len(self.replicas)


class PartitionState(msgspec.Struct, frozen=True):
    """Who leads a partition (NO_LEADER: nobody), since which epoch, and its ISR.

    ``elr`` (KIP-966 eligible leader replicas): replicas that left the ISR while it
    was below min ISR, so they still hold every committed record and may be
    elected.  ``last_known_elr``: ELR members dropped after an unclean shutdown,
    the last resort of an offline partition (broker/replication/election.py).
    """

    leader: int
    leader_epoch: int
    isr: list[int]
    elr: list[int] = []
    last_known_elr: list[int] = []


class ClusterMembership(msgspec.Struct, frozen=True):
    """What a data dir remembers of its cluster: the etcd prefix and cluster id."""

    prefix: str
    cluster_id: str


class MetadataDecodeError(DistributaryError):
    """A metadata value in the store is not what its key says it holds."""


def encode(value: msgspec.Struct) -> bytes:
    return msgspec.msgpack.encode(value)


def decode(key: str, data: bytes, value_type: type[T]) -> T:
    """Raises MetadataDecodeError naming the key."""
    try:
        return msgspec.msgpack.decode(data, type=value_type)
    except msgspec.DecodeError as error:
        raise MetadataDecodeError(f"metadata key {key!r} holds no valid value: {error}") from error


def broker_key(node_id: int) -> str:
    return f"{BROKERS_PREFIX}{node_id}"


def controller_key(lease_id: int) -> str:
    return f"{CONTROLLER_PREFIX}{lease_id:x}"


def topic_key(topic: str) -> str:
    return f"{TOPICS_PREFIX}{topic}"


def state_key(topic: str, partition: int) -> str:
    return f"{TOPICS_PREFIX}{topic}/partitions/{partition}/state"


def parse_topics_key(key: str) -> tuple[str, int | None] | None:
    """("T", None) for ``topics/T``, ("T", P) for its partition P's state key, None
    for anything else under ``topics/``."""
    parts = key.split("/")
    if len(parts) == 2 and parts[0] == "topics" and parts[1]:
        return parts[1], None
    if (
        len(parts) == 5
        and parts[0] == "topics"
        and parts[2] == "partitions"
        and parts[4] == "state"
        and parts[3].isdigit()
    ):
        return parts[1], int(parts[3])
    return None
