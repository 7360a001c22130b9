"""The replication additions to the wire: Fetch's epoch fields, OffsetsForLeaderEpoch
and the replication error codes."""

from __future__ import annotations

import msgspec
import pytest

from client.errors import (
    ErrorCode,
    FencedLeaderEpochError,
    NotEnoughReplicasAfterAppendError,
    NotEnoughReplicasError,
    NotReplicaError,
    OffsetNotAvailableError,
    UnknownLeaderEpochError,
    error_for_code,
)
from client.protocol.messages import (
    ApiKey,
    FetchPartition,
    FetchPartitionResponse,
    FetchRequest,
    FetchTopic,
    OffsetForLeaderEpochPartition,
    OffsetForLeaderEpochTopic,
    OffsetsForLeaderEpochRequest,
    encoder,
    request_decoder,
)


def test_fetch_partition_without_epochs_decodes_with_defaults() -> None:
    """Proves a FetchPartition from a peer that predates the epoch fields (three
    elements) decodes with both epochs -1 (unchecked)."""
    old = msgspec.msgpack.encode([6, 500, 1, 1000, [["t", [[0, 42, 4096]]]], -1, 1])
    body = request_decoder.decode(old)
    assert isinstance(body, FetchRequest)
    wanted = body.topics[0].partitions[0]
    assert (wanted.fetch_offset, wanted.current_leader_epoch, wanted.last_fetched_epoch) == (
        42,
        -1,
        -1,
    )


def test_fetch_partition_response_fields_go_last() -> None:
    """Proves the new response fields follow records_bytes, so an old client reading
    the first six elements still finds its fields where they were."""
    response = FetchPartitionResponse(
        3,
        72,
        "fenced",
        10,
        0,
        0,
        diverging_epoch=4,
        diverging_end_offset=9,
        leader_id=2,
        leader_epoch=5,
    )
    elements = msgspec.msgpack.decode(encoder.encode(response))
    assert elements[:6] == [3, 72, "fenced", 10, 0, 0]
    assert elements[6:] == [4, 9, 2, 5]


def test_offsets_for_leader_epoch_request_round_trips() -> None:
    """Proves an OffsetsForLeaderEpoch request decodes to itself under api key 10."""
    body = OffsetsForLeaderEpochRequest(
        [OffsetForLeaderEpochTopic("t", [OffsetForLeaderEpochPartition(1, 7, 8)])], replica_id=2
    )
    encoded = encoder.encode(body)
    assert msgspec.msgpack.decode(encoded)[0] == int(ApiKey.OFFSETS_FOR_LEADER_EPOCH) == 10
    assert request_decoder.decode(encoded) == body
    fetch = FetchRequest(topics=[FetchTopic("t", [FetchPartition(0, 5, 1, 3, 2)])])
    assert request_decoder.decode(encoder.encode(fetch)) == fetch


@pytest.mark.parametrize(
    ("code", "cls", "retriable"),
    [
        (70, NotEnoughReplicasError, True),
        (71, NotEnoughReplicasAfterAppendError, True),
        (72, FencedLeaderEpochError, True),
        (73, UnknownLeaderEpochError, True),
        (74, OffsetNotAvailableError, True),
        (75, NotReplicaError, False),
    ],
)
def test_replication_error_codes(code: int, cls: type, retriable: bool) -> None:
    """Proves each replication code maps to its typed error with the retriable flag
    the producer and fetchers rely on."""
    error = error_for_code(code, "m")
    assert type(error) is cls and int(error.code) == code and error.retriable is retriable
    assert ErrorCode(code).name == cls.code.name
