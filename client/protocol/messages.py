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
    # Reserved for the consumer-groups issue: 20-29.  Replication: 30-39.


class Acks(enum.IntEnum):
    NONE = 0  # fire and forget: the broker sends no response at all
    LEADER = 1  # acknowledged once the leader has appended
    ALL = -1  # every in-sync replica (with replication; equals LEADER on one node)


# ListOffsets special timestamps (Kafka's convention).
LATEST_TIMESTAMP: Final = -1
EARLIEST_TIMESTAMP: Final = -2

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


class FetchPartition(_Message):
    partition: int
    fetch_offset: int
    partition_max_bytes: int = 1 << 20


class FetchTopic(_Message):
    name: str
    partitions: list[FetchPartition] = []


class FetchRequest(_Message, tag=int(ApiKey.FETCH)):
    max_wait_ms: int = 500
    min_bytes: int = 1
    max_bytes: int = 50 << 20
    topics: list[FetchTopic] = []
    replica_id: int = -1  # -1: a consumer; a node id: a follower (replication issue)


class FetchPartitionResponse(_Message):
    partition: int
    error_code: int = 0
    error_message: str = ""
    high_watermark: int = -1
    log_start_offset: int = -1
    records_bytes: int = 0  # length of this partition's batches in the frame payload


class FetchTopicResponse(_Message):
    name: str
    partitions: list[FetchPartitionResponse] = []


class FetchResponse(_Message, tag=int(ApiKey.FETCH)):
    topics: list[FetchTopicResponse] = []


# -- ListOffsets ------------------------------------------------------------------------


class ListOffsetsPartition(_Message):
    partition: int
    timestamp_ms: int = LATEST_TIMESTAMP  # or EARLIEST_TIMESTAMP, or a time in ms


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
}

request_decoder: Final[msgspec.msgpack.Decoder[Request]] = msgspec.msgpack.Decoder(Request)
response_decoder: Final[msgspec.msgpack.Decoder[Response]] = msgspec.msgpack.Decoder(Response)
encoder: Final = msgspec.msgpack.Encoder()
