"""Every request and response body of the wire protocol, as msgspec Structs.

A frame (client/protocol/frames.py, docs/protocol.md) carries a fixed header,
then one of these bodies encoded as msgpack, then an optional raw payload of
record batches that the body describes (``records_bytes`` fields, in order).

Bodies are tagged unions: each Struct is ``array_like`` (encoded as a msgpack
array, field names never sent) and its first array element is an integer tag
equal to its API key.  Requests and responses are two separate unions, each
decoded by one module-level typed decoder, so a malformed body fails at decode.

Evolution rule: a message changes only by appending fields with defaults; a
field's type never changes.  An old peer ignores trailing fields it does not
know; a new peer fills missing trailing fields with their defaults.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec


class ApiKey(enum.IntEnum):
    HELLO = 0
    METADATA = 1
    CREATE_TOPICS = 2
    DELETE_TOPICS = 3
    DESCRIBE_TOPICS = 4
    PRODUCE = 5
    FETCH = 6
    LIST_OFFSETS = 7
    ALTER_CONFIGS = 8
    CREATE_PARTITIONS = 9
    OFFSETS_FOR_LEADER_EPOCH = 10
    # Consumer groups: 20-29 (20-26 used).  Replication: 30-39.
    CONSUMER_GROUP_HEARTBEAT = 20
    OFFSET_COMMIT = 21
    OFFSET_FETCH = 22
    LIST_GROUPS = 23
    DESCRIBE_GROUPS = 24
    DELETE_GROUPS = 25
    FIND_COORDINATOR = 26
    ELECT_LEADERS = 11


class Acks(enum.IntEnum):
    """How many replicas must have a batch before the broker answers a Produce."""

    NONE = 0  # fire and forget: the broker sends no response at all
    LEADER = 1  # acknowledged once the leader has appended
    ALL = -1  # every in-sync replica (with replication; equals LEADER on one node)


# ListOffsets special timestamps (Kafka's convention).
LATEST_TIMESTAMP: Final = -1
EARLIEST_TIMESTAMP: Final = -2

# ConsumerGroupHeartbeat member epochs with a special meaning (KIP-848).
JOIN_GROUP_EPOCH: Final = 0  # join (a new member, or one that must start over)
LEAVE_GROUP_EPOCH: Final = -1  # leave now: the member's partitions move at once
STATIC_LEAVE_GROUP_EPOCH: Final = -2  # a static member leaves for a moment (keeps them)
# OffsetCommit without a member (reset-offsets): only into a group with no members.
ADMIN_COMMIT_EPOCH: Final = -1

# API key of the whole-request error response (never a request).
ERROR_RESPONSE_TAG: Final = 255


class _Message(msgspec.Struct, array_like=True, omit_defaults=False, frozen=False):
    pass


# -- Hello ------------------------------------------------------------------------------


class ApiVersionRange(_Message):
    api_key: int
    version_min: int
    version_max: int


class HelloRequest(_Message, tag=int(ApiKey.HELLO)):
    client_id: str = ""
    client_software: str = ""
    client_version: str = ""


class HelloResponse(_Message, tag=int(ApiKey.HELLO)):
    error_code: int = 0
    error_message: str = ""
    api_versions: list[ApiVersionRange] = []
    node_id: int = 0
    cluster_id: str = ""
    frame_bytes_max: int = 0
    inflight_requests_max: int = 0
    broker_version: str = ""


# -- Metadata ---------------------------------------------------------------------------


class BrokerInfo(_Message):
    node_id: int
    host: str
    port: int
    rack: str | None = None  # the rack or zone the broker runs in (None: no rack)


class PartitionMetadata(_Message):
    partition: int
    error_code: int = 0
    leader: int = -1
    leader_epoch: int = 0
    replicas: list[int] = []
    isr: list[int] = []


class TopicMetadata(_Message):
    name: str
    error_code: int = 0
    error_message: str = ""
    partitions: list[PartitionMetadata] = []
    internal: bool = False


class MetadataRequest(_Message, tag=int(ApiKey.METADATA)):
    topics: list[str] | None = None  # None: every topic
    allow_auto_create: bool = False


class MetadataResponse(_Message, tag=int(ApiKey.METADATA)):
    brokers: list[BrokerInfo] = []
    controller_id: int = -1
    cluster_id: str = ""
    topics: list[TopicMetadata] = []


# -- CreateTopics / DeleteTopics / DescribeTopics ----------------------------------------


class CreatableTopic(_Message):
    name: str
    partitions: int = 1
    replication_factor: int = 1
    configs: dict[str, str] = {}


class TopicResult(_Message):
    name: str
    error_code: int = 0
    error_message: str = ""


class CreateTopicsRequest(_Message, tag=int(ApiKey.CREATE_TOPICS)):
    topics: list[CreatableTopic] = []
    timeout_ms: int = 30_000
    validate_only: bool = False


class CreateTopicsResponse(_Message, tag=int(ApiKey.CREATE_TOPICS)):
    topics: list[TopicResult] = []


class DeleteTopicsRequest(_Message, tag=int(ApiKey.DELETE_TOPICS)):
    names: list[str] = []
    timeout_ms: int = 30_000


class DeleteTopicsResponse(_Message, tag=int(ApiKey.DELETE_TOPICS)):
    topics: list[TopicResult] = []


class PartitionDescription(_Message):
    partition: int
    error_code: int = 0
    leader: int = -1
    log_start_offset: int = 0
    log_end_offset: int = 0
    high_watermark: int = 0
    size_bytes: int = 0
    segment_count: int = 0


class TopicDescription(_Message):
    name: str
    error_code: int = 0
    error_message: str = ""
    configs: dict[str, str] = {}
    partitions: list[PartitionDescription] = []
    internal: bool = False


class DescribeTopicsRequest(_Message, tag=int(ApiKey.DESCRIBE_TOPICS)):
    names: list[str] | None = None  # None: every topic


class DescribeTopicsResponse(_Message, tag=int(ApiKey.DESCRIBE_TOPICS)):
    topics: list[TopicDescription] = []


# -- AlterConfigs / CreatePartitions ---------------------------------------------------


class AlterableTopic(_Message):
    """A topic's config overrides to set: key=value strings as at creation; the
    value "default" removes an override (the broker default applies again)."""

    name: str
    configs: dict[str, str] = {}


class AlterConfigsRequest(_Message, tag=int(ApiKey.ALTER_CONFIGS)):
    topics: list[AlterableTopic] = []
    validate_only: bool = False


class AlterConfigsResponse(_Message, tag=int(ApiKey.ALTER_CONFIGS)):
    topics: list[TopicResult] = []


class PartitionCount(_Message):
    """A topic's new total partition count (never lower than today's)."""

    name: str
    count: int


class CreatePartitionsRequest(_Message, tag=int(ApiKey.CREATE_PARTITIONS)):
    topics: list[PartitionCount] = []
    timeout_ms: int = 30_000
    validate_only: bool = False


class CreatePartitionsResponse(_Message, tag=int(ApiKey.CREATE_PARTITIONS)):
    topics: list[TopicResult] = []


# -- ElectLeaders --------------------------------------------------------------------------


class ElectLeadersTopic(_Message):
    name: str
    partitions: list[int] | None = None  # None: every partition of the topic


class ElectLeadersRequest(_Message, tag=int(ApiKey.ELECT_LEADERS)):
    """Move each partition's leadership to its preferred replica (the first) now
    (``topics`` None: every partition).  Only the controller answers; any other
    broker answers NOT_CONTROLLER, and the client asks the controller Metadata names."""

    topics: list[ElectLeadersTopic] | None = None


class ElectLeadersPartitionResult(_Message):
    partition: int
    error_code: int = 0  # ELECTION_NOT_NEEDED, PREFERRED_LEADER_NOT_AVAILABLE, ...
    error_message: str | None = None
    leader: int = -1  # the leader after the request


class ElectLeadersTopicResult(_Message):
    name: str
    partitions: list[ElectLeadersPartitionResult] = []


class ElectLeadersResponse(_Message, tag=int(ApiKey.ELECT_LEADERS)):
    topics: list[ElectLeadersTopicResult] = []
    error_code: int = 0  # NOT_CONTROLLER: the whole request went to the wrong broker
    error_message: str | None = None


# -- Produce ----------------------------------------------------------------------------


class ProducePartition(_Message):
    partition: int
    records_bytes: int  # length of this partition's batches in the frame payload


class ProduceTopic(_Message):
    name: str
    partitions: list[ProducePartition] = []


class ProduceRequest(_Message, tag=int(ApiKey.PRODUCE)):
    acks: int = int(Acks.LEADER)
    timeout_ms: int = 30_000
    topics: list[ProduceTopic] = []


class ProducePartitionResponse(_Message):
    partition: int
    error_code: int = 0
    error_message: str = ""
    base_offset: int = -1
    last_offset: int = -1
    log_append_time_ms: int = -1
    log_start_offset: int = -1


class ProduceTopicResponse(_Message):
    name: str
    partitions: list[ProducePartitionResponse] = []


class ProduceResponse(_Message, tag=int(ApiKey.PRODUCE)):
    topics: list[ProduceTopicResponse] = []


# -- Fetch ------------------------------------------------------------------------------


# A FetchPartition.fetch_offset of FETCH_OFFSET_CONTINUE asks for the records
# after the last ones this connection's previous fetch of the partition returned,
# so a client can pipeline its next fetch before the current one is answered.
FETCH_OFFSET_CONTINUE: Final = -1
# A FetchRequest may be answered up to responses_max times (a stream, see
# docs/protocol.md "Fetch streams"); this many at most.
FETCH_RESPONSES_MAX: Final = 1024


class FetchPartition(_Message):
    partition: int
    fetch_offset: int  # or FETCH_OFFSET_CONTINUE
    partition_max_bytes: int = 1 << 20
    # The leader epoch the fetcher believes current (-1: unchecked); the leader
    # refuses a stale one (FENCED_LEADER_EPOCH) or a newer one (UNKNOWN_LEADER_EPOCH).
    current_leader_epoch: int = -1
    # A follower: the epoch of the last batch in its log (-1: none), so the leader
    # can say where the logs diverge (FetchPartitionResponse.diverging_epoch).
    last_fetched_epoch: int = -1


class FetchTopic(_Message):
    name: str
    partitions: list[FetchPartition] = []


class FetchRequest(_Message, tag=int(ApiKey.FETCH)):
    max_wait_ms: int = 500
    min_bytes: int = 1
    max_bytes: int = 50 << 20
    topics: list[FetchTopic] = []
    replica_id: int = -1  # -1: a consumer; a node id: a follower replica fetching
    # > 1: the broker may keep answering (frames flagged MORE) while records keep
    # arriving, each answer continuing where the previous one ended.
    responses_max: int = 1
    # A follower: its broker's epoch (the revision of its registration; -1:
    # unknown), so the leader ignores a fetch from an earlier incarnation (KIP-903).
    replica_epoch: int = -1


class FetchPartitionResponse(_Message):
    partition: int
    error_code: int = 0
    error_message: str = ""
    high_watermark: int = -1
    log_start_offset: int = -1
    records_bytes: int = 0  # length of this partition's batches in the frame payload
    # To a follower whose log diverges from the leader's: the largest epoch both
    # hold and where it ends on the leader (truncate there; no records come).
    diverging_epoch: int = -1
    diverging_end_offset: int = -1
    # Who leads the partition, with FENCED/UNKNOWN_LEADER_EPOCH and NOT_LEADER
    # (-1: unknown).
    leader_id: int = -1
    leader_epoch: int = -1


class FetchTopicResponse(_Message):
    name: str
    partitions: list[FetchPartitionResponse] = []


class FetchResponse(_Message, tag=int(ApiKey.FETCH)):
    topics: list[FetchTopicResponse] = []


# -- ListOffsets ------------------------------------------------------------------------


class ListOffsetsPartition(_Message):
    partition: int
    timestamp_ms: int = LATEST_TIMESTAMP  # or EARLIEST_TIMESTAMP, or a time in ms
    # The leader epoch the asker believes current (-1: unchecked), as in a fetch.
    current_leader_epoch: int = -1


class ListOffsetsTopic(_Message):
    name: str
    partitions: list[ListOffsetsPartition] = []


class ListOffsetsRequest(_Message, tag=int(ApiKey.LIST_OFFSETS)):
    topics: list[ListOffsetsTopic] = []


class ListOffsetsPartitionResponse(_Message):
    partition: int
    error_code: int = 0
    error_message: str = ""
    offset: int = -1  # -1 with a timestamp lookup: no record at or after it
    timestamp_ms: int = -1


class ListOffsetsTopicResponse(_Message):
    name: str
    partitions: list[ListOffsetsPartitionResponse] = []


class ListOffsetsResponse(_Message, tag=int(ApiKey.LIST_OFFSETS)):
    topics: list[ListOffsetsTopicResponse] = []


# -- OffsetsForLeaderEpoch ---------------------------------------------------------------


class OffsetForLeaderEpochPartition(_Message):
    partition: int
    leader_epoch: int  # where does this epoch end in the leader's log?
    current_leader_epoch: int = -1  # the asker's view of the leader epoch (-1: unchecked)


class OffsetForLeaderEpochTopic(_Message):
    name: str
    partitions: list[OffsetForLeaderEpochPartition] = []


class OffsetsForLeaderEpochRequest(_Message, tag=int(ApiKey.OFFSETS_FOR_LEADER_EPOCH)):
    """A follower (``replica_id`` its node id) or a consumer (-1: answers capped at
    the high watermark) asks where leader epochs end in the leader's log."""

    topics: list[OffsetForLeaderEpochTopic] = []
    replica_id: int = -1


class OffsetForLeaderEpochPartitionResponse(_Message):
    """``leader_epoch``: the largest epoch in the leader's log <= the asked one;
    ``end_offset``: where it ends (the next epoch's start, or the log end for the
    latest).  Both -1 when the leader knows no such epoch."""

    partition: int
    error_code: int = 0
    error_message: str = ""
    leader_epoch: int = -1
    end_offset: int = -1


class OffsetForLeaderEpochTopicResponse(_Message):
    name: str
    partitions: list[OffsetForLeaderEpochPartitionResponse] = []


class OffsetsForLeaderEpochResponse(_Message, tag=int(ApiKey.OFFSETS_FOR_LEADER_EPOCH)):
    topics: list[OffsetForLeaderEpochTopicResponse] = []


# -- consumer groups ----------------------------------------------------------------------


class GroupTopicPartitions(_Message):
    """Partitions of one topic, in a group message."""

    topic: str
    partitions: list[int] = []


class ConsumerGroupHeartbeatRequest(_Message, tag=int(ApiKey.CONSUMER_GROUP_HEARTBEAT)):
    """Join (member_epoch 0), heartbeat (the member's epoch) or leave (-1; -2 for a
    static member that will be back).  ``None`` fields mean "unchanged since my last
    heartbeat"; a join must send a subscription."""

    group_id: str = ""  # required in practice: "" is INVALID_REQUEST
    member_id: str = ""  # "" to join: the broker assigns one
    member_epoch: int = JOIN_GROUP_EPOCH
    instance_id: str | None = None  # static membership
    rebalance_timeout_ms: int = -1  # -1: the broker's default
    subscribed_topic_names: list[str] | None = None
    subscribed_topic_regex: str | None = None  # "" clears it
    server_assignor: str | None = None  # "range" or "sticky"
    owned_partitions: list[GroupTopicPartitions] | None = None
    session_timeout_ms: int = -1  # -1: the broker's default (clamped into its bounds)
    heartbeat_interval_ms: int = -1
    client_id: str = ""


class ConsumerGroupHeartbeatResponse(_Message, tag=int(ApiKey.CONSUMER_GROUP_HEARTBEAT)):
    """``assignment``: every partition the member may own now.  Anything it owns that
    is not listed must be released (``revoking`` lists those) and reported gone in
    the next heartbeat, sent as soon as they are released."""

    error_code: int = 0
    error_message: str = ""
    member_id: str = ""
    member_epoch: int = -1
    heartbeat_interval_ms: int = 0
    session_timeout_ms: int = 0
    assignment: list[GroupTopicPartitions] = []
    revoking: list[GroupTopicPartitions] = []


class OffsetCommitPartition(_Message):
    partition: int
    offset: int  # the next offset to consume
    leader_epoch: int = -1  # of the last consumed record; -1: unknown
    metadata: str = ""


class OffsetCommitTopic(_Message):
    name: str
    partitions: list[OffsetCommitPartition] = []


class OffsetCommitRequest(_Message, tag=int(ApiKey.OFFSET_COMMIT)):
    """Commit offsets as a member (its id and current epoch), or as an admin
    (member_epoch -1), which only a group without members accepts."""

    group_id: str = ""
    member_id: str = ""
    member_epoch: int = ADMIN_COMMIT_EPOCH
    topics: list[OffsetCommitTopic] = []


class OffsetCommitPartitionResponse(_Message):
    partition: int
    error_code: int = 0
    error_message: str = ""


class OffsetCommitTopicResponse(_Message):
    name: str
    partitions: list[OffsetCommitPartitionResponse] = []


class OffsetCommitResponse(_Message, tag=int(ApiKey.OFFSET_COMMIT)):
    """``error_code``: the whole commit failed (UNKNOWN_MEMBER, FENCED_MEMBER_EPOCH,
    GROUP_NOT_EMPTY...); otherwise per partition."""

    error_code: int = 0
    error_message: str = ""
    topics: list[OffsetCommitTopicResponse] = []


class OffsetFetchTopic(_Message):
    name: str
    partitions: list[int] | None = None  # None: every committed partition of the topic


class OffsetFetchRequest(_Message, tag=int(ApiKey.OFFSET_FETCH)):
    group_id: str = ""
    topics: list[OffsetFetchTopic] | None = None  # None: every committed partition


class OffsetFetchPartitionResponse(_Message):
    """``offset`` -1: nothing committed for the partition."""

    partition: int
    offset: int = -1
    leader_epoch: int = -1
    metadata: str = ""
    commit_time_ms: int = -1
    error_code: int = 0
    error_message: str = ""


class OffsetFetchTopicResponse(_Message):
    name: str
    partitions: list[OffsetFetchPartitionResponse] = []


class OffsetFetchResponse(_Message, tag=int(ApiKey.OFFSET_FETCH)):
    error_code: int = 0
    error_message: str = ""
    topics: list[OffsetFetchTopicResponse] = []


class ListGroupsRequest(_Message, tag=int(ApiKey.LIST_GROUPS)):
    states: list[str] | None = None  # None: every state


class ListedGroup(_Message):
    group_id: str
    state: str = ""  # empty, assigning, reconciling, stable
    member_count: int = 0


class ListGroupsResponse(_Message, tag=int(ApiKey.LIST_GROUPS)):
    error_code: int = 0
    error_message: str = ""
    groups: list[ListedGroup] = []


class DescribeGroupsRequest(_Message, tag=int(ApiKey.DESCRIBE_GROUPS)):
    group_ids: list[str] = []


class DescribedMember(_Message):
    member_id: str
    instance_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    member_epoch: int = 0
    state: str = ""  # stable, unrevoked_partitions, unreleased_partitions
    subscribed_topic_names: list[str] = []
    subscribed_topic_regex: str | None = None
    assignment: list[GroupTopicPartitions] = []  # what it may own now
    revoking: list[GroupTopicPartitions] = []  # what it must release
    target: list[GroupTopicPartitions] = []  # where the group is heading
    session_timeout_ms: int = 0
    heartbeat_interval_ms: int = 0


class DescribedPartition(_Message):
    """One partition of a subscribed topic or with a commit.  ``committed_offset``
    -1: no commit; ``lag`` = log end - committed offset (-1 without a commit)."""

    topic: str
    partition: int
    committed_offset: int = -1
    leader_epoch: int = -1
    metadata: str = ""
    commit_time_ms: int = -1
    log_end_offset: int = -1
    lag: int = -1
    member_id: str = ""  # who owns it now ("" if nobody)


class DescribedGroup(_Message):
    group_id: str
    error_code: int = 0
    error_message: str = ""
    state: str = ""
    group_epoch: int = 0
    assignment_epoch: int = 0
    assignor: str = ""
    members: list[DescribedMember] = []
    partitions: list[DescribedPartition] = []


class DescribeGroupsResponse(_Message, tag=int(ApiKey.DESCRIBE_GROUPS)):
    groups: list[DescribedGroup] = []


class DeleteGroupsRequest(_Message, tag=int(ApiKey.DELETE_GROUPS)):
    group_ids: list[str] = []


class DeleteGroupResult(_Message):
    group_id: str
    error_code: int = 0
    error_message: str = ""


class DeleteGroupsResponse(_Message, tag=int(ApiKey.DELETE_GROUPS)):
    results: list[DeleteGroupResult] = []


# -- FindCoordinator ----------------------------------------------------------------------


class FindCoordinatorRequest(_Message, tag=int(ApiKey.FIND_COORDINATOR)):
    group_id: str = ""


class FindCoordinatorResponse(_Message, tag=int(ApiKey.FIND_COORDINATOR)):
    error_code: int = 0
    error_message: str = ""
    node_id: int = -1
    host: str = ""
    port: int = 0


# -- whole-request error ----------------------------------------------------------------


class ErrorResponse(_Message, tag=ERROR_RESPONSE_TAG):
    """Sent instead of the API's response when the request could not be handled at
    all (undecodable body, unsupported API or version, too many in flight)."""

    error_code: int
    error_message: str = ""


Request = (
    HelloRequest
    | MetadataRequest
    | CreateTopicsRequest
    | DeleteTopicsRequest
    | DescribeTopicsRequest
    | ProduceRequest
    | FetchRequest
    | ListOffsetsRequest
    | AlterConfigsRequest
    | CreatePartitionsRequest
    | OffsetsForLeaderEpochRequest
    | ConsumerGroupHeartbeatRequest
    | OffsetCommitRequest
    | OffsetFetchRequest
    | ListGroupsRequest
    | DescribeGroupsRequest
    | DeleteGroupsRequest
    | FindCoordinatorRequest
    | ElectLeadersRequest
)
Response = (
    HelloResponse
    | MetadataResponse
    | CreateTopicsResponse
    | DeleteTopicsResponse
    | DescribeTopicsResponse
    | ProduceResponse
    | FetchResponse
    | ListOffsetsResponse
    | AlterConfigsResponse
    | CreatePartitionsResponse
    | OffsetsForLeaderEpochResponse
    | ConsumerGroupHeartbeatResponse
    | OffsetCommitResponse
    | OffsetFetchResponse
    | ListGroupsResponse
    | DescribeGroupsResponse
    | DeleteGroupsResponse
    | FindCoordinatorResponse
    | ElectLeadersResponse
    | ErrorResponse
)

# Supported versions per API: a peer must not send a version outside the range.
API_VERSIONS: Final[dict[ApiKey, tuple[int, int]]] = {key: (0, 0) for key in ApiKey}

REQUEST_TYPES: Final[dict[ApiKey, type[msgspec.Struct]]] = {
    ApiKey.HELLO: HelloRequest,
    ApiKey.METADATA: MetadataRequest,
    ApiKey.CREATE_TOPICS: CreateTopicsRequest,
    ApiKey.DELETE_TOPICS: DeleteTopicsRequest,
    ApiKey.DESCRIBE_TOPICS: DescribeTopicsRequest,
    ApiKey.PRODUCE: ProduceRequest,
    ApiKey.FETCH: FetchRequest,
    ApiKey.LIST_OFFSETS: ListOffsetsRequest,
    ApiKey.ALTER_CONFIGS: AlterConfigsRequest,
    ApiKey.CREATE_PARTITIONS: CreatePartitionsRequest,
    ApiKey.OFFSETS_FOR_LEADER_EPOCH: OffsetsForLeaderEpochRequest,
    ApiKey.CONSUMER_GROUP_HEARTBEAT: ConsumerGroupHeartbeatRequest,
    ApiKey.OFFSET_COMMIT: OffsetCommitRequest,
    ApiKey.OFFSET_FETCH: OffsetFetchRequest,
    ApiKey.LIST_GROUPS: ListGroupsRequest,
    ApiKey.DESCRIBE_GROUPS: DescribeGroupsRequest,
    ApiKey.DELETE_GROUPS: DeleteGroupsRequest,
    ApiKey.FIND_COORDINATOR: FindCoordinatorRequest,
    ApiKey.ELECT_LEADERS: ElectLeadersRequest,
}
RESPONSE_TYPES: Final[dict[ApiKey, type[msgspec.Struct]]] = {
    ApiKey.HELLO: HelloResponse,
    ApiKey.METADATA: MetadataResponse,
    ApiKey.CREATE_TOPICS: CreateTopicsResponse,
    ApiKey.DELETE_TOPICS: DeleteTopicsResponse,
    ApiKey.DESCRIBE_TOPICS: DescribeTopicsResponse,
    ApiKey.PRODUCE: ProduceResponse,
    ApiKey.FETCH: FetchResponse,
    ApiKey.LIST_OFFSETS: ListOffsetsResponse,
    ApiKey.ALTER_CONFIGS: AlterConfigsResponse,
    ApiKey.CREATE_PARTITIONS: CreatePartitionsResponse,
    ApiKey.OFFSETS_FOR_LEADER_EPOCH: OffsetsForLeaderEpochResponse,
    ApiKey.CONSUMER_GROUP_HEARTBEAT: ConsumerGroupHeartbeatResponse,
    ApiKey.OFFSET_COMMIT: OffsetCommitResponse,
    ApiKey.OFFSET_FETCH: OffsetFetchResponse,
    ApiKey.LIST_GROUPS: ListGroupsResponse,
    ApiKey.DESCRIBE_GROUPS: DescribeGroupsResponse,
    ApiKey.DELETE_GROUPS: DeleteGroupsResponse,
    ApiKey.FIND_COORDINATOR: FindCoordinatorResponse,
    ApiKey.ELECT_LEADERS: ElectLeadersResponse,
}

request_decoder: Final[msgspec.msgpack.Decoder[Request]] = msgspec.msgpack.Decoder(Request)
response_decoder: Final[msgspec.msgpack.Decoder[Response]] = msgspec.msgpack.Decoder(Response)
encoder: Final = msgspec.msgpack.Encoder()
