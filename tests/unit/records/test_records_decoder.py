"""The record decoder (client/records/decoder.py): round trips, fetch buffers, bad input."""

from __future__ import annotations

import gc
import struct
import threading
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    DistributaryError,
    InvalidBatchError,
    UnsupportedCompressionError,
)
from client.records.builder import BatchBuilder, build_batch, frame_batch
from client.records.compression import compress
from client.records.decoder import (
    BatchInfo,
    FetchedRecords,
    Record,
    RecordDecoder,
    decode_batch,
    decode_fetch,
)
from client.records.header import (
    ATTRIBUTES_AT,
    CONTROL_FLAG,
    CRC_AT,
    CRC_FROM,
    HEADER_BYTES,
    TIMESTAMP_TYPE_LOG_APPEND,
    BatchHeader,
    Compression,
    batch_size_at,
    crc32c,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RecordTuple = tuple[bytes | None, bytes | None, tuple[tuple[str, bytes], ...], int]


def build(records: list[RecordTuple], codec: Compression = Compression.NONE) -> bytearray:
    builder = BatchBuilder(codec)
    for value, key, headers, timestamp in records:
        builder.append(value, key, headers, timestamp)
    return builder.build()


def stamped(batch: bytearray, base_offset: int, leader_epoch: int = 0) -> bytearray:
    BatchHeader.parse(batch).stamp(base_offset, leader_epoch)
    return batch


def as_tuples(records: list[Record[bytes]]) -> list[RecordTuple]:
    return [(r.value, r.key, r.headers, r.timestamp_ms) for r in records]


def restamp_crc(buffer: bytearray) -> bytearray:
    struct.pack_into(">I", buffer, CRC_AT, crc32c(bytes(buffer[CRC_FROM:])))
    return buffer


def framed(records: Any, count: int, codec: Compression = Compression.NONE) -> bytearray:
    """A batch whose records are whatever msgpack ``records`` encodes to."""
    payload = compress(codec, msgspec.msgpack.encode(records))
    return frame_batch(
        payload, attributes=int(codec), record_count=count, first_timestamp_ms=0, max_timestamp_ms=0
    )


EDGE_RECORDS: list[RecordTuple] = [
    (b"value", b"key", (), 1_000),
    (None, None, (), 1_000),  # a tombstone without a key
    (b"", b"", (), 1_001),  # empty, not None
    (b"\xff\xfe\x00\x80", b"\xc3\x28", (("bin", b"\x00\xff"), ("", b"")), 999),  # not UTF-8
    (b"x" * 70_000, None, (("trace-id", b"abc"), ("trace-id", b"def")), 500),  # back in time
    (None, b"only-key", (), 2_000),
]


@pytest.mark.parametrize("codec", list(Compression))
def test_round_trip_edge_records(codec: Compression) -> None:
    """Proves None/empty keys and values, headers, non-UTF-8 bytes and negative
    timestamp deltas survive every codec, with absolute offsets and timestamps."""
    batch = stamped(build(EDGE_RECORDS, codec), 500)
    records = decode_batch(batch)
    assert as_tuples(records) == EDGE_RECORDS
    assert [r.offset for r in records] == list(range(500, 500 + len(EDGE_RECORDS)))
    assert records[4].timestamp_delta_ms == -500
    assert all(r.batch.base_offset == 500 and r.batch.leader_epoch == 0 for r in records)


def test_whole_buffer_one_byte_at_a_time_and_trailing_bytes() -> None:
    """Proves the three ways: whole buffer decodes; a growing buffer yields nothing
    until the batch is complete; bytes after the batch are left alone."""
    batch = bytes(stamped(build(EDGE_RECORDS[:3]), 10))
    assert as_tuples(decode_batch(batch)) == EDGE_RECORDS[:3]
    for available in range(len(batch)):
        fetched = decode_fetch(batch[:available])
        assert fetched.records == [] and fetched.bytes_consumed == 0
        assert fetched.partial_batch_bytes == available and fetched.next_offset == 0
    trailing = batch + b"\x00\x01 not a batch yet"
    assert as_tuples(decode_batch(trailing)) == EDGE_RECORDS[:3]
    assert batch_size_at(trailing) == len(batch)


def test_decode_batch_at_a_position() -> None:
    """Proves decode_batch reads the batch at ``position`` of a larger buffer."""
    first = stamped(build_batch([b"a"], timestamp_ms=1), 0)
    second = stamped(build_batch([b"b", b"c"], timestamp_ms=1), 1)
    records = decode_batch(first + second, len(first))
    assert [(r.offset, r.value) for r in records] == [(1, b"b"), (2, b"c")]


def test_fetch_buffer_with_partial_last_batch() -> None:
    """Proves decode_fetch returns the complete batches and ignores a cut last one."""
    batches = [stamped(build_batch([b"v%d" % i] * 3, timestamp_ms=5), 3 * i) for i in range(3)]
    whole = b"".join(batches)
    complete = len(whole) - len(batches[-1])
    for cut in (1, 50, len(batches[-1]) - 1):
        fetched = decode_fetch(whole[:-cut])
        assert [r.offset for r in fetched.records] == list(range(6))
        assert fetched.next_offset == 6
        assert fetched.bytes_consumed == complete
        assert fetched.partial_batch_bytes == len(batches[-1]) - cut
    fetched = decode_fetch(whole)
    assert fetched == FetchedRecords(fetched.records, 9, len(whole), 0)
    assert [r.value for r in fetched.records] == [b"v0"] * 3 + [b"v1"] * 3 + [b"v2"] * 3


def test_fetch_one_byte_at_a_time() -> None:
    """Proves records appear batch by batch as a fetch buffer grows byte by byte."""
    batches = [stamped(build_batch([b"x"] * 2, timestamp_ms=0), 2 * i) for i in range(3)]
    whole = b"".join(batches)
    ends = [sum(len(b) for b in batches[: i + 1]) for i in range(3)]
    for available in range(len(whole) + 1):
        fetched = decode_fetch(whole[:available])
        complete_batches = sum(1 for end in ends if end <= available)
        assert len(fetched.records) == 2 * complete_batches
        assert fetched.bytes_consumed + fetched.partial_batch_bytes == available


def test_fetch_offset_inside_a_batch() -> None:
    """Proves records before the fetch offset are skipped, also across batches."""
    first = stamped(build_batch([b"a", b"b", b"c"], timestamp_ms=0), 100)
    second = stamped(build_batch([b"d", b"e"], timestamp_ms=0), 103)
    buffer = bytes(first + second)
    assert [r.offset for r in decode_fetch(buffer, 101).records] == [101, 102, 103, 104]
    assert [r.offset for r in decode_fetch(buffer, 104).records] == [104]
    skipped = decode_fetch(buffer, 200)
    assert skipped.records == [] and skipped.next_offset == 200
    assert [r.value for r in decode_batch(first, fetch_offset=102)] == [b"c"]


def test_fetch_refuses_batches_going_backwards() -> None:
    """Proves a fetch buffer whose batches overlap raises InvalidBatchError."""
    first = stamped(build_batch([b"a", b"b"], timestamp_ms=0), 10)
    second = stamped(build_batch([b"c"], timestamp_ms=0), 11)
    with pytest.raises(InvalidBatchError):
        decode_fetch(bytes(first + second))


def test_fetch_partial_batch_that_can_never_complete() -> None:
    """Proves a cut batch declaring more than batch_bytes_max raises BatchTooLargeError,
    and one declaring less than a header raises InvalidBatchError."""
    batch = build_batch([b"x" * 1000], timestamp_ms=0)
    with pytest.raises(BatchTooLargeError):
        decode_fetch(bytes(batch[:100]), batch_bytes_max=500)
    too_short = bytearray(batch[:30])
    struct.pack_into(">i", too_short, 8, 10)
    with pytest.raises(InvalidBatchError):
        decode_fetch(bytes(too_short))


def test_fetch_skips_control_batches() -> None:
    """Proves control batches yield no records but still advance next_offset."""
    control = stamped(build_batch([b"marker"], timestamp_ms=0), 0)
    struct.pack_into(">h", control, ATTRIBUTES_AT, CONTROL_FLAG)
    restamp_crc(control)
    data = stamped(build_batch([b"data"], timestamp_ms=0), 1)
    fetched = decode_fetch(bytes(control + data))
    assert [(r.offset, r.value) for r in fetched.records] == [(1, b"data")]
    assert fetched.next_offset == 2


def test_log_append_time_uses_the_batch_max_timestamp() -> None:
    """Proves a log-append-time batch reports the broker's time for every record."""
    batch = build([(b"a", None, (), 10), (b"b", None, (), 30), (b"c", None, (), 20)])
    struct.pack_into(">h", batch, ATTRIBUTES_AT, TIMESTAMP_TYPE_LOG_APPEND)
    restamp_crc(batch)
    assert [r.timestamp_ms for r in decode_batch(batch)] == [30, 30, 30]


class Reading(msgspec.Struct):
    sensor: str
    celsius: float


@pytest.mark.parametrize("value_format", ["json", "msgpack"])
def test_values_decode_into_a_caller_type(value_format: str) -> None:
    """Proves value_type decodes each value with the chosen format and keeps None values."""
    encode = msgspec.json.encode if value_format == "json" else msgspec.msgpack.encode
    values = [encode(Reading("a", 1.5)), None, encode(Reading("b", -3.0))]
    batch = stamped(build_batch(values, timestamp_ms=0), 7)
    decoder = RecordDecoder(Reading, value_format="json" if value_format == "json" else "msgpack")
    records = decoder.decode_batch(batch)
    assert [r.value for r in records] == [Reading("a", 1.5), None, Reading("b", -3.0)]
    assert decoder.decode_fetch(bytes(batch), 9).records[0].value == Reading("b", -3.0)


def test_value_that_does_not_fit_the_type_is_invalid() -> None:
    """Proves a value that does not decode as value_type raises InvalidBatchError."""
    batch = build_batch([b'{"sensor": "a", "celsius": 1}', b"not json"], timestamp_ms=0)
    with pytest.raises(InvalidBatchError, match="offset 1"):
        RecordDecoder(Reading).decode_batch(batch)


def test_count_mismatch_is_invalid() -> None:
    """Proves a header count that differs from the decoded records raises InvalidBatchError."""
    record: list[Any] = [0, 0, None, b"x", []]
    for records, count in (([record], 2), ([record, [1, 0, None, b"y", []]], 1)):
        with pytest.raises(InvalidBatchError, match="holds"):
            decode_batch(framed(records, count))


def test_offset_deltas_must_run_from_zero() -> None:
    """Proves offset deltas that do not run 0..count-1 raise InvalidBatchError."""
    for deltas in ((1, 2), (0, 5), (5, 1)):
        records: list[list[Any]] = [[delta, 0, None, b"x", []] for delta in deltas]
        with pytest.raises(InvalidBatchError, match="offset deltas"):
            decode_batch(framed(records, 2))


@pytest.mark.parametrize(
    "records",
    [
        [[0, 0, None, b"x", [], [999, 0]]],  # a forged sixth element
        [[0, 0, None, b"x", [], None]],
        [[0, 0, None, "text", []]],  # str, not bin
        [[0, 0, None, b"x"]],  # too short
        [[0, 0, None, b"x", [["h"]]]],  # header without a value
        [{"offset_delta": 0}],
        {"not": "an array"},
    ],
)
def test_malformed_records_are_invalid(records: Any) -> None:
    """Proves records that are not [int, int, bin|nil, bin|nil, [[str, bin]...]] raise
    InvalidBatchError; in particular a sixth element can never forge batch fields."""
    with pytest.raises(InvalidBatchError):
        decode_batch(framed(records, 1))


def test_records_that_are_not_msgpack_are_invalid() -> None:
    """Proves a CRC-valid but undecodable or over-long records section raises InvalidBatchError."""
    for payload in (
        b"",
        b"\xc1",
        b"\x91\x95\x00\x00\xc0\xc4\x05ab",
        msgspec.msgpack.encode([]) + b"x",
    ):
        batch = frame_batch(
            payload, attributes=0, record_count=1, first_timestamp_ms=0, max_timestamp_ms=0
        )
        with pytest.raises(InvalidBatchError):
            decode_batch(batch)


def test_bad_crc_is_corrupt_unless_the_caller_opts_out() -> None:
    """Proves the CRC is checked by default and skipped with verify_crc=False."""
    batch = build_batch([b"abc"], timestamp_ms=0)
    batch[-2] = ord("d")  # the last byte of the value (the record ends with its empty headers)
    with pytest.raises(CorruptBatchError):
        decode_batch(batch)
    assert decode_batch(batch, verify_crc=False)[0].value == b"abd"


def test_truncated_oversized_wrong_magic_and_unknown_codec() -> None:
    """Proves each bad header reaches the caller as its typed error through the decoder."""
    batch = build_batch([b"abc"] * 3, timestamp_ms=0)
    with pytest.raises(CorruptBatchError):
        decode_batch(batch[:-1])
    with pytest.raises(CorruptBatchError):
        decode_batch(batch[: HEADER_BYTES - 1])
    with pytest.raises(BatchTooLargeError):
        decode_batch(batch, batch_bytes_max=len(batch) - 1)
    wrong_magic = bytearray(batch)
    wrong_magic[16] = 1
    with pytest.raises(InvalidBatchError):
        decode_batch(wrong_magic)
    unknown_codec = bytearray(batch)
    struct.pack_into(">h", unknown_codec, ATTRIBUTES_AT, 5)
    with pytest.raises(UnsupportedCompressionError):
        decode_batch(restamp_crc(unknown_codec))


@pytest.mark.parametrize("codec", [c for c in Compression if c is not Compression.NONE])
def test_decompression_bomb_over_the_limit(codec: Compression) -> None:
    """Proves records that decompress past decompressed_bytes_max raise BatchTooLargeError."""
    batch = build_batch([bytes(200_000)] * 10, compression=codec, timestamp_ms=0)
    assert len(batch) < 100_000
    with pytest.raises(BatchTooLargeError):
        decode_batch(batch, decompressed_bytes_max=1_000_000)
    assert len(decode_batch(batch, decompressed_bytes_max=3_000_000)) == 10


def test_uncompressed_records_obey_the_limit_too() -> None:
    """Proves decompressed_bytes_max also bounds an uncompressed batch."""
    batch = build_batch([b"x" * 100], timestamp_ms=0)
    with pytest.raises(BatchTooLargeError):
        decode_batch(batch, decompressed_bytes_max=50)


def test_records_are_untracked_by_the_cycle_collector() -> None:
    """Proves decoded records carry no GC overhead (gc=False) and share one BatchInfo."""
    records = decode_batch(build_batch([b"a", b"b"], timestamp_ms=0))
    assert not any(gc.is_tracked(r) for r in records)
    assert records[0].batch is records[1].batch


def test_concurrent_decodes_keep_their_own_batch() -> None:
    """Proves the per-decode batch context does not leak between threads."""
    batches = [
        bytes(stamped(build_batch([b"v"] * 2000, timestamp_ms=0), 10_000 * i)) for i in range(8)
    ]
    failures: list[str] = []

    def work(index: int) -> None:
        for _ in range(20):
            records = decode_batch(batches[index])
            if {r.batch.base_offset for r in records} != {10_000 * index}:
                failures.append(f"thread {index} saw another batch")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []


def test_record_built_by_hand_and_equality() -> None:
    """Proves a Record can be made with an explicit BatchInfo and compares by value."""
    info = BatchInfo(base_offset=5, first_timestamp_ms=100, max_timestamp_ms=100)
    record: Record[bytes] = Record(1, 2, None, b"v", (), batch=info)
    assert (record.offset, record.timestamp_ms) == (6, 102)
    decoded = decode_batch(stamped(build([(b"w", None, (), 100), (b"v", None, (), 102)]), 5))
    assert decoded[1].value == record.value and decoded[1].offset == record.offset
    assert BatchInfo(base_offset=5, first_timestamp_ms=100, max_timestamp_ms=100) == info


HEADERS = st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=3).map(tuple)
RECORDS = st.lists(
    st.tuples(
        st.none() | st.binary(max_size=64),
        st.none() | st.binary(max_size=16),
        HEADERS,
        st.integers(0, 2**42),
    ),
    min_size=1,
    max_size=30,
)


@FUZZ
@given(records=RECORDS, codec=st.sampled_from(list(Compression)), base_offset=st.integers(0, 2**62))
def test_round_trip_property(
    records: list[RecordTuple], codec: Compression, base_offset: int
) -> None:
    """Proves any records round-trip through build and decode for every codec."""
    batch = stamped(build(records, codec), base_offset)
    decoded = decode_batch(batch)
    assert as_tuples(decoded) == records
    assert [r.offset for r in decoded] == list(range(base_offset, base_offset + len(records)))


VALID = [bytes(build(EDGE_RECORDS[:3], codec)) for codec in Compression]


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes_raise_only_typed_errors(data: bytes) -> None:
    """Proves random bytes raise nothing but DistributaryErrors from the decoder."""
    for verify_crc in (True, False):
        try:
            decode_batch(data, verify_crc=verify_crc)
        except DistributaryError:
            pass
        try:
            decode_fetch(data, verify_crc=verify_crc)
        except DistributaryError:
            pass


@FUZZ
@given(
    index=st.integers(0, len(VALID) - 1),
    mutations=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4
    ),
    cut=st.integers(0, 20),
)
def test_fuzz_mutated_batches_raise_only_typed_errors(
    index: int, mutations: list[tuple[int, int]], cut: int
) -> None:
    """Proves mutated valid batches (CRC on and off, values typed or not) raise only
    DistributaryErrors."""
    batch = bytearray(VALID[index])
    for position, byte in mutations:
        batch[position % len(batch)] = byte
    buffer = bytes(batch[: len(batch) - cut])
    for decoder in (
        RecordDecoder(),
        RecordDecoder(verify_crc=False),
        RecordDecoder(Reading, verify_crc=False, value_format="msgpack"),
    ):
        try:
            decoder.decode_batch(buffer)
        except DistributaryError:
            pass
        try:
            decoder.decode_fetch(buffer + buffer)
        except DistributaryError:
            pass
