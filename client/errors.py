"""One hierarchy for every operating error, shared by the SDK and the broker.

Each error class carries a wire code (an :class:`ErrorCode`) and a ``retriable``
flag.  The broker turns a raised :class:`DistributaryError` into its code on the
wire; the client turns a code back into the same class with :func:`error_for_code`.
Programmer errors are not here: they are assertions and crash loudly.

Codes are stable: they are part of the wire protocol (docs/protocol.md).  New
codes are only ever appended.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ErrorCode(enum.IntEnum):
    """Error codes carried on the wire.  0 means success."""

    NONE = 0
    UNKNOWN = 1
    # Record batches.
    CORRUPT_BATCH = 2
    BATCH_TOO_LARGE = 3
    INVALID_BATCH = 4
    UNSUPPORTED_COMPRESSION = 5
    # Frames and requests.
    PROTOCOL_ERROR = 10
    FRAME_TOO_LARGE = 11
    UNSUPPORTED_API = 12
    UNSUPPORTED_VERSION = 13
    INVALID_REQUEST = 14
    TOO_MANY_REQUESTS = 15
    REQUEST_TIMED_OUT = 16
    # Topics, partitions and offsets.
    UNKNOWN_TOPIC_OR_PARTITION = 20
    TOPIC_ALREADY_EXISTS = 21
    INVALID_TOPIC = 22
    INVALID_PARTITIONS = 23
    INVALID_CONFIG = 24
    OFFSET_OUT_OF_RANGE = 25
    NOT_LEADER = 26
    INVALID_REPLICATION_FACTOR = 27
    # Cluster administration.
    NOT_CONTROLLER = 80
    ELECTION_NOT_NEEDED = 81
    PREFERRED_LEADER_NOT_AVAILABLE = 82
    # Storage.
    LOG_CORRUPT = 30
    STORAGE_ERROR = 31
    # Connections.
    BROKER_UNAVAILABLE = 40
    CONNECTION_CLOSED = 41
    TOO_MANY_CONNECTIONS = 42
    # Consumer groups.
    UNKNOWN_MEMBER = 50
    FENCED_MEMBER_EPOCH = 51
    GROUP_NOT_EMPTY = 52
    UNKNOWN_GROUP = 53
    REBALANCE_IN_PROGRESS = 54
    COORDINATOR_NOT_AVAILABLE = 55
    # Idempotent produce.
    OUT_OF_ORDER_SEQUENCE = 60
    UNKNOWN_PRODUCER_ID = 61
    # Replication.
    NOT_ENOUGH_REPLICAS = 70
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 71
    FENCED_LEADER_EPOCH = 72
    UNKNOWN_LEADER_EPOCH = 73
    OFFSET_NOT_AVAILABLE = 74
    NOT_REPLICA = 75


class DistributaryError(Exception):
    """Base of every operating error.  ``code`` goes on the wire."""

    code: ClassVar[ErrorCode] = ErrorCode.UNKNOWN
    retriable: ClassVar[bool] = False
    # False: raised by the SDK only, never decoded from a wire code (a stricter
    # variant of its wire class, which error_for_code keeps returning).
    decoded_from_wire: ClassVar[bool] = True

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- record batches ---------------------------------------------------------------------


class RecordBatchError(DistributaryError):
    """The record batch is malformed."""

    code = ErrorCode.INVALID_BATCH


class CorruptBatchError(RecordBatchError):
    """The record batch failed its CRC-32C check or is truncated."""

    code = ErrorCode.CORRUPT_BATCH


class BatchTooLargeError(RecordBatchError):
    """The record batch (or its decompressed records) exceeds a size limit."""

    code = ErrorCode.BATCH_TOO_LARGE


class InvalidBatchError(RecordBatchError):
    """The record batch header is inconsistent (magic, counts, offsets)."""

    code = ErrorCode.INVALID_BATCH


class UnsupportedCompressionError(RecordBatchError):
    """The record batch names a compression codec this build does not know."""

    code = ErrorCode.UNSUPPORTED_COMPRESSION


# -- frames and requests ----------------------------------------------------------------


class ProtocolError(DistributaryError):
    """The peer sent bytes that are not a valid frame or message."""

    code = ErrorCode.PROTOCOL_ERROR


class FrameTooLargeError(ProtocolError):
    """A frame's declared length exceeds ``frame_bytes_max``."""

    code = ErrorCode.FRAME_TOO_LARGE


class UnsupportedApiError(ProtocolError):
    """The request names an API key the peer does not implement."""

    code = ErrorCode.UNSUPPORTED_API


class UnsupportedVersionError(ProtocolError):
    """The request names an API version the peer does not implement."""

    code = ErrorCode.UNSUPPORTED_VERSION


class InvalidRequestError(DistributaryError):
    """The request is well-formed but its contents are not acceptable."""

    code = ErrorCode.INVALID_REQUEST


class TooManyRequestsError(DistributaryError):
    """Too many requests are in flight on this connection."""

    code = ErrorCode.TOO_MANY_REQUESTS
    retriable = True


class RequestTimedOutError(DistributaryError):
    """The request did not complete within its timeout."""

    code = ErrorCode.REQUEST_TIMED_OUT
    retriable = True


# -- topics, partitions, offsets --------------------------------------------------------


class UnknownTopicOrPartitionError(DistributaryError):
    """The topic or partition does not exist (it may be being created)."""

    code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    retriable = True


class TopicAlreadyExistsError(DistributaryError):
    """A topic with this name already exists."""

    code = ErrorCode.TOPIC_ALREADY_EXISTS


class InvalidTopicError(DistributaryError):
    """The topic name is not valid."""

    code = ErrorCode.INVALID_TOPIC


class InvalidPartitionsError(DistributaryError):
    """The partition count is not valid."""

    code = ErrorCode.INVALID_PARTITIONS


class InvalidConfigError(DistributaryError):
    """A configuration key or value is not valid."""

    code = ErrorCode.INVALID_CONFIG


class OffsetOutOfRangeError(DistributaryError):
    """The requested offset is outside the log's [start, end] range."""

    code = ErrorCode.OFFSET_OUT_OF_RANGE


class LogTruncationError(OffsetOutOfRangeError):
    """The log was truncated below the consumer's position (an unclean leader election).

    Raised by the SDK (never sent by a broker) when a consumer with
    ``auto_offset_reset="none"`` validates its position after a leader change
    (KIP-320) and the new leader's log diverges below it: records it already
    returned are not in the log any more.  ``divergent_offset`` is where the
    logs part (seek there to read what the new leader holds).
    """

    decoded_from_wire = False

    def __init__(self, message: str = "", divergent_offset: int = -1) -> None:
        super().__init__(message)
        self.divergent_offset = divergent_offset


class NotLeaderError(DistributaryError):
    """This broker is not the leader of the partition."""

    code = ErrorCode.NOT_LEADER
    retriable = True


class InvalidReplicationFactorError(DistributaryError):
    """The replication factor is below 1 or above the number of live brokers."""

    code = ErrorCode.INVALID_REPLICATION_FACTOR


class NotControllerError(DistributaryError):
    """This broker is not the controller: ask the one Metadata names."""

    code = ErrorCode.NOT_CONTROLLER
    retriable = True


class ElectionNotNeededError(DistributaryError):
    """The partition is already led by its preferred replica."""

    code = ErrorCode.ELECTION_NOT_NEEDED


class PreferredLeaderNotAvailableError(DistributaryError):
    """The preferred replica is not live or not in the ISR, so it cannot lead."""

    code = ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE
    retriable = True


# -- storage ----------------------------------------------------------------------------


class LogCorruptError(DistributaryError):
    """A sealed segment holds a bad batch; the partition refuses to open."""

    code = ErrorCode.LOG_CORRUPT


class StorageError(DistributaryError):
    """The disk refused an operation (full, read-only, I/O error)."""

    code = ErrorCode.STORAGE_ERROR


# -- connections ------------------------------------------------------------------------


class BrokerUnavailableError(DistributaryError):
    """The broker could not be reached."""

    code = ErrorCode.BROKER_UNAVAILABLE
    retriable = True


class ConnectionClosedError(DistributaryError):
    """The connection closed while a request was outstanding."""

    code = ErrorCode.CONNECTION_CLOSED
    retriable = True


class TooManyConnectionsError(DistributaryError):
    """The broker refused the connection: it is at ``connections_max``."""

    code = ErrorCode.TOO_MANY_CONNECTIONS
    retriable = True


# -- consumer groups --------------------------------------------------------------------


class UnknownMemberError(DistributaryError):
    """The group does not know this member (it was expelled or never joined)."""

    code = ErrorCode.UNKNOWN_MEMBER


class FencedMemberEpochError(DistributaryError):
    """The member's epoch is stale: it was fenced and must rejoin."""

    code = ErrorCode.FENCED_MEMBER_EPOCH


class GroupNotEmptyError(DistributaryError):
    """The operation needs a group with no active members."""

    code = ErrorCode.GROUP_NOT_EMPTY


class UnknownGroupError(DistributaryError):
    """The group does not exist."""

    code = ErrorCode.UNKNOWN_GROUP


class RebalanceInProgressError(DistributaryError):
    """The group is rebalancing; retry after the next heartbeat."""

    code = ErrorCode.REBALANCE_IN_PROGRESS
    retriable = True


class CoordinatorNotAvailableError(DistributaryError):
    """The group coordinator is not available yet."""

    code = ErrorCode.COORDINATOR_NOT_AVAILABLE
    retriable = True


# -- idempotent produce ------------------------------------------------------------------


class OutOfOrderSequenceError(DistributaryError):
    """The batch's sequence does not follow the producer's last one (retry earlier batches).

    An earlier batch of this producer is missing on the partition; the producer
    resends its earlier batches first (or, for its oldest unacknowledged batch,
    starts a new epoch when no record can be written twice: docs/sdk.md).
    """

    code = ErrorCode.OUT_OF_ORDER_SEQUENCE
    retriable = True


class UnknownProducerIdError(DistributaryError):
    """The partition has no state for this producer id and the batch does not start at sequence 0.

    The partition forgot the producer (retention or a truncation removed its
    batches, they fell out of the remembered window or predate a restart's
    rebuild): the producer bumps its epoch and resends its unacknowledged batches
    from sequence 0 when no record can be written twice (KIP-360, docs/sdk.md).
    """

    code = ErrorCode.UNKNOWN_PRODUCER_ID
    retriable = True


class OutOfOrderSequenceFatalError(OutOfOrderSequenceError):
    """The partition refused a batch as out of order, and resending it could duplicate records.

    Raised by the SDK (never sent by a broker) for a batch that the broker
    refused as out of order while an unacknowledged batch of its partition may
    already be in the log.  Not retriable: the batch fails, and the partition's
    later batches go on under a new producer epoch.
    """

    retriable = False
    decoded_from_wire = False


class UnknownProducerIdFatalError(UnknownProducerIdError):
    """The partition forgot this producer while a batch of it may be in the log: not resent.

    Raised by the SDK (never sent by a broker) when the broker lost the
    producer's state although its log still starts at or before the last offset
    acknowledged to it, and an unacknowledged batch of the partition had an
    attempt whose outcome is unknown.  Not retriable: the batch fails, and the
    partition's later batches go on under a new producer epoch.
    """

    retriable = False
    decoded_from_wire = False


# -- replication -------------------------------------------------------------------------


class NotEnoughReplicasError(DistributaryError):
    """acks=all: the in-sync replicas are fewer than min.insync.replicas; nothing was appended."""

    code = ErrorCode.NOT_ENOUGH_REPLICAS
    retriable = True


class NotEnoughReplicasAfterAppendError(DistributaryError):
    """acks=all: the batch was appended, but to fewer in-sync replicas than required.

    The records may become visible: only an idempotent producer's retry is safe
    from duplicating them.
    """

    code = ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND
    retriable = True


class FencedLeaderEpochError(DistributaryError):
    """The request's leader epoch is older than the partition's: refresh the metadata."""

    code = ErrorCode.FENCED_LEADER_EPOCH
    retriable = True


class UnknownLeaderEpochError(DistributaryError):
    """The request's leader epoch is newer than this broker knows: it has not caught up yet."""

    code = ErrorCode.UNKNOWN_LEADER_EPOCH
    retriable = True


class OffsetNotAvailableError(DistributaryError):
    """A new leader does not know its high watermark yet; retry shortly."""

    code = ErrorCode.OFFSET_NOT_AVAILABLE
    retriable = True


class NotReplicaError(DistributaryError):
    """A replica fetch from a broker that is not an assigned replica of the partition."""

    code = ErrorCode.NOT_REPLICA


def _leaf_classes() -> dict[ErrorCode, type[DistributaryError]]:
    table: dict[ErrorCode, type[DistributaryError]] = {}
    pending: list[type[DistributaryError]] = [DistributaryError]
    for _ in range(1000):  # bounded walk over a small, finite class tree
        if not pending:
            break
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not cls.decoded_from_wire:
            continue
        # The most specific class registered for a code wins; a base class only fills gaps.
        if cls.code not in table or issubclass(cls, table[cls.code]):
            table[cls.code] = cls
    return table


_BY_CODE = _leaf_classes()


def error_for_code(code: int, message: str = "") -> DistributaryError:
    """The exception for a wire error code (UNKNOWN's class for codes we do not know)."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except ValueError:
        return DistributaryError(f"unknown error code {code}: {message}")
    return cls(message)
