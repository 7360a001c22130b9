"""The batch header (client/records/header.py): parse, verify_crc, stamp, iter_batches."""

from __future__ import annotations

import array
import struct

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
from client.records.builder import BatchBuilder, build_batch
from client.records.header import (
    ATTRIBUTES_AT,
    BATCH_LENGTH_AT,
    CRC_AT,
    CRC_FROM,
    HEADER_BYTES,
    LAST_OFFSET_DELTA_AT,
    MAGIC_AT,
    RECORD_COUNT_AT,
    BatchHeader,
    Compression,
    batch_size_at,
    crc32c,
    iter_batches,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample_batch(count: int = 3, compression: Compression = Compression.NONE) -> bytearray:
    builder = BatchBuilder(compression, producer_id=7, producer_epoch=2, base_sequence=40)
    for index in range(count):
        builder.append(b"value-%d" % index, b"key", (("h", b"\xff"),), 1_000 + index)
    return builder.build()


def restamp_crc(buffer: bytearray) -> bytearray:
    struct.pack_into(">I", buffer, CRC_AT, crc32c(bytes(buffer[CRC_FROM:])))
    return buffer


def set_field(buffer: bytearray, fmt: str, at: int, value: int, *, recrc: bool = True) -> bytearray:
    struct.pack_into(fmt, buffer, at, value)
    return restamp_crc(buffer) if recrc else buffer


def test_parse_reads_every_field() -> None:
    """Proves parse exposes the header fields the builder wrote."""
    batch = sample_batch(3)
    header = BatchHeader.parse(batch)
    header.verify_crc()
    assert (header.base_offset, header.leader_epoch, header.record_count) == (0, -1, 3)
    assert (header.last_offset_delta, header.first_timestamp, header.max_timestamp) == (
        2,
        1000,
        1002,
    )
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (7, 2, 40)
    assert header.compression is Compression.NONE
    assert header.batch_bytes == len(batch) == header.end
    assert bytes(header.records_view()) == bytes(batch[HEADER_BYTES:])


def test_header_layout_is_61_bytes_big_endian() -> None:
    """Proves the documented byte positions (docs/record-format.md) match the code."""
    batch = sample_batch(2)
    assert struct.unpack_from(">i", batch, BATCH_LENGTH_AT)[0] == len(batch) - 12
    assert batch[MAGIC_AT] == 2
    assert struct.unpack_from(">i", batch, LAST_OFFSET_DELTA_AT)[0] == 1
    assert struct.unpack_from(">i", batch, RECORD_COUNT_AT)[0] == 2
    assert struct.unpack_from(">I", batch, CRC_AT)[0] == crc32c(bytes(batch[CRC_FROM:]))
    assert HEADER_BYTES == 61


def test_batch_size_at_one_byte_at_a_time() -> None:
    """Proves the streaming check reports nothing until the length prefix is in,
    then the full size, and a batch is complete exactly when that many bytes are."""
    batch = bytes(sample_batch(2))
    for available in range(len(batch) + 1):
        size = batch_size_at(batch[:available])
        if available < 12:
            assert size is None
        else:
            assert size == len(batch)
        complete = size is not None and available >= size
        assert complete == (available == len(batch))
        if not complete and available >= HEADER_BYTES:
            with pytest.raises(CorruptBatchError):
                BatchHeader.parse(batch[:available])


def test_parse_leaves_trailing_bytes_alone() -> None:
    """Proves a batch followed by other bytes parses to exactly its own extent."""
    batch = bytes(sample_batch(2))
    buffer = b"\x00" * 5 + batch + b"trailing bytes"
    header = BatchHeader.parse(buffer, 5)
    header.verify_crc()
    assert header.end == 5 + len(batch)
    assert buffer[header.end :] == b"trailing bytes"


def test_parse_accepts_a_typed_memoryview() -> None:
    """Proves lengths are counted in bytes even for a view of 8-byte items."""
    batch = bytes(sample_batch(1))
    padded = batch + b"\x00" * (-len(batch) % 8)
    typed = memoryview(array.array("q", padded))
    header = BatchHeader.parse(typed)
    header.verify_crc()
    assert header.batch_bytes == len(batch)


def test_truncated_header_is_corrupt() -> None:
    """Proves fewer than 61 bytes raise CorruptBatchError."""
    with pytest.raises(CorruptBatchError):
        BatchHeader.parse(bytes(sample_batch(1))[:60])


def test_truncated_records_are_corrupt() -> None:
    """Proves a batch shorter than its batch_length raises CorruptBatchError."""
    with pytest.raises(CorruptBatchError):
        BatchHeader.parse(bytes(sample_batch(1))[:-1])


def test_oversized_batch_is_refused() -> None:
    """Proves batch_bytes_max is enforced before the body is looked at."""
    batch = sample_batch(3)
    with pytest.raises(BatchTooLargeError):
        BatchHeader.parse(batch, batch_bytes_max=len(batch) - 1)
    BatchHeader.parse(batch, batch_bytes_max=len(batch))


def test_huge_declared_length_is_too_large_not_a_crash() -> None:
    """Proves a hostile 2 GiB batch_length is refused by the size limit."""
    batch = set_field(sample_batch(1), ">i", BATCH_LENGTH_AT, 2**31 - 1, recrc=False)
    with pytest.raises(BatchTooLargeError):
        BatchHeader.parse(batch)


@pytest.mark.parametrize("length", [-1, -(2**31), 0, 48])
def test_batch_length_shorter_than_header_is_invalid(length: int) -> None:
    """Proves batch_length values that cannot even hold the header are invalid."""
    batch = set_field(sample_batch(1), ">i", BATCH_LENGTH_AT, length, recrc=False)
    with pytest.raises(InvalidBatchError):
        BatchHeader.parse(batch)


@pytest.mark.parametrize("magic", [0, 1, 3, -1])
def test_wrong_magic_is_invalid(magic: int) -> None:
    """Proves only magic 2 is accepted."""
    batch = set_field(sample_batch(1), ">b", MAGIC_AT, magic, recrc=False)
    with pytest.raises(InvalidBatchError):
        BatchHeader.parse(batch)


def test_bad_crc_is_corrupt() -> None:
    """Proves a flipped record byte fails verify_crc with CorruptBatchError."""
    batch = sample_batch(2)
    batch[-1] ^= 0x01
    header = BatchHeader.parse(batch)
    with pytest.raises(CorruptBatchError):
        header.verify_crc()


def test_crc_covers_attributes_to_end() -> None:
    """Proves the CRC covers the attributes and every byte after them."""
    for position in range(CRC_FROM, len(sample_batch(1))):
        batch = sample_batch(1)
        batch[position] ^= 0x40
        header_or_error: BatchHeader | DistributaryError
        try:
            header_or_error = BatchHeader.parse(batch)
        except DistributaryError as error:
            header_or_error = error
        if isinstance(header_or_error, BatchHeader):
            with pytest.raises(CorruptBatchError):
                header_or_error.verify_crc()


@pytest.mark.parametrize("codec", [4, 5, 6, 7])
def test_unknown_codec_is_unsupported(codec: int) -> None:
    """Proves codec ids 4-7 raise UnsupportedCompressionError."""
    batch = set_field(sample_batch(1), ">h", ATTRIBUTES_AT, codec)
    with pytest.raises(UnsupportedCompressionError):
        BatchHeader.parse(batch)


@pytest.mark.parametrize("attributes", [0x40, 0x80, 0x100, -1])
def test_unknown_attribute_bits_are_invalid(attributes: int) -> None:
    """Proves attribute bits beyond 0-5 are refused."""
    batch = set_field(sample_batch(1), ">h", ATTRIBUTES_AT, attributes)
    with pytest.raises(InvalidBatchError):
        BatchHeader.parse(batch)


@pytest.mark.parametrize(("record_count", "last_offset_delta"), [(0, -1), (-5, -6), (3, 1), (2, 2)])
def test_count_mismatch_is_invalid(record_count: int, last_offset_delta: int) -> None:
    """Proves record_count must be positive and equal last_offset_delta + 1."""
    batch = sample_batch(3)
    set_field(batch, ">i", RECORD_COUNT_AT, record_count)
    set_field(batch, ">i", LAST_OFFSET_DELTA_AT, last_offset_delta)
    with pytest.raises(InvalidBatchError):
        BatchHeader.parse(batch)


def test_max_timestamp_before_first_is_invalid() -> None:
    """Proves max_timestamp < first_timestamp is refused."""
    batch = set_field(sample_batch(2), ">q", 35, 0)
    with pytest.raises(InvalidBatchError):
        BatchHeader.parse(batch)


def test_stamp_writes_offset_and_epoch_without_touching_the_crc() -> None:
    """Proves stamping is in place and keeps the CRC valid (it lies before the CRC'd range)."""
    batch = sample_batch(3)
    crc_before = bytes(batch[CRC_AT:CRC_FROM])
    header = BatchHeader.parse(batch)
    header.stamp(1_000, leader_epoch=4)
    again = BatchHeader.parse(batch)
    again.verify_crc()
    assert (again.base_offset, again.leader_epoch) == (1_000, 4)
    assert (again.last_offset, again.next_offset) == (1_002, 1_003)
    assert bytes(batch[CRC_AT:CRC_FROM]) == crc_before


def test_iter_batches_whole_buffer() -> None:
    """Proves iter_batches returns one header per back-to-back batch."""
    batches = [sample_batch(n) for n in (1, 2, 3)]
    headers = iter_batches(b"".join(batches))
    assert [h.record_count for h in headers] == [1, 2, 3]
    assert headers[-1].end == sum(len(b) for b in batches)


def test_iter_batches_refuses_a_trailing_partial_batch() -> None:
    """Proves a Produce payload must hold whole batches only."""
    buffer = bytes(sample_batch(1) + sample_batch(2))
    for cut in (1, 11, 12, 60, 61, 62):
        with pytest.raises(CorruptBatchError):
            iter_batches(buffer[:-cut])


def test_iter_batches_refuses_bad_crc_and_too_many_batches() -> None:
    """Proves iter_batches checks every CRC and honours batches_max."""
    good = sample_batch(1)
    bad = sample_batch(1)
    bad[-1] ^= 1
    with pytest.raises(CorruptBatchError):
        iter_batches(bytes(good + bad))
    assert len(iter_batches(bytes(good + bad), verify_crc=False)) == 2
    with pytest.raises(InvalidBatchError):
        iter_batches(bytes(good * 3), batches_max=2)
    assert iter_batches(b"") == []


def test_crc32c_in_pieces_equals_whole() -> None:
    """Proves the chained CRC form (used by the builder) equals the one-shot CRC."""
    data = bytes(range(256)) * 10
    assert crc32c(data[1000:], crc32c(data[:1000])) == crc32c(data)
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert crc32c(bytearray(data)) == crc32c(memoryview(data)) == crc32c(data)


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_random_bytes_raise_only_typed_errors(data: bytes) -> None:
    """Proves random bytes never escape as anything but a DistributaryError."""
    try:
        header = BatchHeader.parse(data)
        header.verify_crc()
    except DistributaryError:
        pass
    try:
        iter_batches(data)
    except DistributaryError:
        pass


VALID = [bytes(sample_batch(n, codec)) for n in (1, 4) for codec in Compression]


@FUZZ
@given(
    index=st.integers(0, len(VALID) - 1),
    mutations=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 80),
)
def test_fuzz_mutated_batches_raise_only_typed_errors(
    index: int, mutations: list[tuple[int, int]], cut: int
) -> None:
    """Proves mutated and truncated valid batches raise only DistributaryErrors,
    and a mutation inside the CRC'd range is always caught by verify_crc."""
    batch = bytearray(VALID[index])
    for position, byte in mutations:
        batch[position % len(batch)] = byte
    mutated_crc_range = batch[CRC_FROM:] != VALID[index][CRC_FROM:]
    buffer = bytes(batch[: len(batch) - cut])
    try:
        header = BatchHeader.parse(buffer)
        header.verify_crc()
        assert not mutated_crc_range or cut > 0, "a mutated batch passed its CRC check"
    except DistributaryError:
        pass
    try:
        iter_batches(buffer + buffer)
    except DistributaryError:
        pass


def test_builder_output_parses_for_every_codec() -> None:
    """Proves every codec's batch passes parse and verify_crc."""
    for codec in Compression:
        header = BatchHeader.parse(build_batch([b"a", None, b""], compression=codec))
        header.verify_crc()
        assert header.compression is codec
