"""The batch builder (client/records/builder.py): append, estimated_bytes, build."""

from __future__ import annotations

import msgspec
import pytest

from client.errors import BatchTooLargeError
from client.records.builder import BatchBuilder, build_batch, frame_batch, now_ms
from client.records.compression import decompress
from client.records.header import HEADER_BYTES, BatchHeader, Compression


def records_of(batch: bytearray) -> list[object]:
    header = BatchHeader.parse(batch)
    header.verify_crc()
    payload = decompress(header.compression, header.records_view(), 1 << 26)
    records: list[object] = msgspec.msgpack.decode(payload)
    return records


def test_append_returns_consecutive_offset_deltas() -> None:
    """Proves append hands out offset deltas 0, 1, 2, ... and len counts records."""
    builder = BatchBuilder()
    assert [builder.append(b"x", timestamp_ms=5) for _ in range(4)] == [0, 1, 2, 3]
    assert len(builder) == 4


def test_records_are_one_msgpack_array_of_five_element_arrays() -> None:
    """Proves the exact record encoding the spec documents."""
    builder = BatchBuilder()
    builder.append(b"v0", b"k0", (("trace", b"\x01\x02"),), 1_000)
    builder.append(None, None, (), 990)
    builder.append(b"", b"", (), 1_010)
    assert records_of(builder.build()) == [
        [0, 0, b"k0", b"v0", [["trace", b"\x01\x02"]]],
        [1, -10, None, None, []],
        [2, 10, b"", b"", []],
    ]


def test_header_fields_from_build() -> None:
    """Proves build writes count, first/max timestamps (timestamps may go back) and producer fields."""
    builder = BatchBuilder(Compression.ZSTD, producer_id=9, producer_epoch=1, base_sequence=100)
    for timestamp in (2_000, 1_500, 2_500, 2_400):
        builder.append(b"v", timestamp_ms=timestamp)
    header = BatchHeader.parse(builder.build())
    assert (header.base_offset, header.leader_epoch) == (0, -1)
    assert (header.record_count, header.last_offset_delta) == (4, 3)
    assert (header.first_timestamp, header.max_timestamp) == (2_000, 2_500)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (9, 1, 100)
    assert header.compression is Compression.ZSTD


def test_default_timestamp_is_the_wall_clock() -> None:
    """Proves a record without a timestamp gets the current time in milliseconds."""
    before = now_ms()
    builder = BatchBuilder()
    builder.append(b"v")
    after = now_ms()
    header = BatchHeader.parse(builder.build())
    assert before <= header.first_timestamp <= after


def test_estimated_bytes_bounds_the_uncompressed_size() -> None:
    """Proves estimated_bytes grows with records and is not below the real size."""
    builder = BatchBuilder()
    assert builder.estimated_bytes == HEADER_BYTES
    for index in range(200):
        builder.append(b"v" * (index % 300), b"key-%d" % index, (("h", b"x" * 10),), 1_000)
    batch = builder.build()
    assert len(batch) <= builder.estimated_bytes < 2 * len(batch)


def test_batch_bytes_max_is_enforced() -> None:
    """Proves build raises BatchTooLargeError over the limit and succeeds at it."""
    builder = BatchBuilder()
    builder.append(b"x" * 100, timestamp_ms=0)
    size = len(builder.build())
    with pytest.raises(BatchTooLargeError):
        builder.build(batch_bytes_max=size - 1)
    assert len(builder.build(batch_bytes_max=size)) == size


def test_build_is_repeatable() -> None:
    """Proves build does not consume the builder (same bytes twice)."""
    builder = BatchBuilder(Compression.GZIP)
    builder.append(b"abc", timestamp_ms=1)
    assert builder.build() == builder.build()


def test_empty_build_is_a_programmer_error() -> None:
    """Proves building an empty batch trips an assertion, not an operating error."""
    with pytest.raises(AssertionError):
        BatchBuilder().build()


def test_build_batch_with_keys() -> None:
    """Proves the convenience builder pairs keys with values and shares one timestamp."""
    batch = build_batch([b"a", None], keys=[None, b"k"], timestamp_ms=42)
    assert records_of(batch) == [[0, 0, None, b"a", []], [1, 0, b"k", None, []]]
    assert BatchHeader.parse(batch).first_timestamp == 42


def test_frame_batch_frames_arbitrary_payload() -> None:
    """Proves frame_batch writes a valid header and CRC around any payload."""
    batch = frame_batch(
        b"\xc0", attributes=0, record_count=1, first_timestamp_ms=1, max_timestamp_ms=1
    )
    header = BatchHeader.parse(batch)
    header.verify_crc()
    assert bytes(header.records_view()) == b"\xc0"


def test_every_codec_round_trips_the_encoding() -> None:
    """Proves compressed batches hold the same record array as uncompressed ones."""
    expected = records_of(build_batch([b"x" * 50, None], timestamp_ms=3))
    for codec in Compression:
        assert (
            records_of(build_batch([b"x" * 50, None], compression=codec, timestamp_ms=3))
            == expected
        )


def test_worked_example_in_the_spec() -> None:
    """Proves the hex example in docs/record-format.md is what the code produces."""
    builder = BatchBuilder()
    builder.append(b"hello", b"k", (("h", b"1"),), 1_700_000_000_000)
    builder.append(b"world", None, (), 1_700_000_000_005)
    batch = builder.build()
    BatchHeader.parse(batch).stamp(42, leader_epoch=3)
    assert batch.hex(" ") == (
        "00 00 00 00 00 00 00 2a 00 00 00 52 00 00 00 03 02 0f 96 fb df 00 00 00 00 00 01"
        " 00 00 01 8b cf e5 68 00 00 00 01 8b cf e5 68 05 ff ff ff ff ff ff ff ff ff ff"
        " ff ff ff ff 00 00 00 02 92 95 00 00 c4 01 6b c4 05 68 65 6c 6c 6f 91 92 a1 68"
        " c4 01 31 95 01 05 c0 c4 05 77 6f 72 6c 64 90"
    )
