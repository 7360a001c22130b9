"""examples/iot/validate.py's Validator without a broker: routing, dedup, DLQ headers."""

from __future__ import annotations

import json
from typing import Any

from client import Record, TopicPartition
from client.records.decoder import BatchInfo
from examples.iot import names
from examples.iot.schema import reading_decoder
from examples.iot.validate import Validator

TP = TopicPartition(names.RAW_TOPIC, 2)


class FakeProducer:
    """Collects what the validator sends; the buffer is 'full' after ``room`` records."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, dict[str, bytes]]] = []
        self.room = room

    def send_nowait(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> None:
        from client import TooManyRequestsError

        if self.room <= 0:
            raise TooManyRequestsError("full")
        self.room -= 1
        self.sent.append((topic, value, key, dict(headers or ())))

    async def enqueue(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> None:
        self.sent.append((topic, value, key, dict(headers or ())))


def records(items: list[tuple[str, bytes]], base_offset: int = 100) -> list[Record[Any]]:
    batch = BatchInfo(base_offset=base_offset, first_timestamp_ms=0, max_timestamp_ms=0)
    return [
        Record(i, 0, key.encode(), value, ((names.RECEIVED_NS_HEADER, b"123"),), batch=batch)
        for i, (key, value) in enumerate(items)
    ]


def reading(device: str, seq: int) -> bytes:
    return json.dumps(
        {"v": 2, "device": device, "seq": seq, "ts": 1.0, "temperature_c": 20.0,
         "humidity_pct": 50.0, "battery_v": 3.7}
    ).encode()  # fmt: skip


async def test_duplicates_are_dropped_and_invalid_dead_lettered() -> None:
    """Proves a repeated (device, seq) is forwarded once and an invalid payload goes to
    the DLQ with its original bytes, reason, detail, source and received stamp."""
    producer = FakeProducer()
    validator = Validator(producer)  # type: ignore[arg-type]
    await validator.process(
        TP,
        records(
            [
                ("a", reading("a", 1)),
                ("a", reading("a", 1)),
                ("a", b"{oops"),
                ("b", reading("b", 1)),
            ]
        ),
    )
    valid = [s for s in producer.sent if s[0] == names.VALID_TOPIC]
    assert [(reading_decoder.decode(v).device, k) for _t, v, k, _h in valid] == [
        ("a", b"a"),
        ("b", b"b"),
    ]
    assert all(h == {names.RECEIVED_NS_HEADER: b"123"} for *_rest, h in valid)
    ((_topic, value, key, headers),) = [s for s in producer.sent if s[0] == names.DLQ_TOPIC]
    assert (value, key) == (b"{oops", b"a")
    assert headers[names.DLQ_REASON_HEADER] == names.DLQ_MALFORMED.encode()
    assert headers[names.SOURCE_TOPIC_HEADER] == names.RAW_TOPIC.encode()
    assert headers[names.SOURCE_PARTITION_HEADER] == b"2"
    assert headers[names.SOURCE_OFFSET_HEADER] == b"102"
    assert headers[names.RECEIVED_NS_HEADER] == b"123"
    assert headers[names.DLQ_DETAIL_HEADER]
    assert (validator.valid, validator.duplicates) == (2, 1)
    assert validator.invalid[names.DLQ_MALFORMED] == 1


async def test_dedup_memory_is_bounded_per_device() -> None:
    """Proves the per-device memory keeps only the most recent seqs: a seq older than
    the bound is forwarded again (downstream upserts absorb it)."""
    producer = FakeProducer()
    validator = Validator(producer, seq_memory_per_device_max=4)  # type: ignore[arg-type]
    await validator.process(TP, records([("a", reading("a", seq)) for seq in range(6)]))
    await validator.process(TP, records([("a", reading("a", 0)), ("a", reading("a", 5))]))
    assert (validator.valid, validator.duplicates) == (7, 1)
    validator.seen["a"].check_invariants()
    assert len(validator.seen["a"].seen) == 4


async def test_full_buffer_keeps_the_order() -> None:
    """Proves records that find the producer buffer full are enqueued after the
    ones sent, in their original order."""
    producer = FakeProducer(room=2)
    validator = Validator(producer)  # type: ignore[arg-type]
    await validator.process(TP, records([("a", reading("a", seq)) for seq in range(5)]))
    assert [reading_decoder.decode(v).seq for _t, v, _k, _h in producer.sent] == [0, 1, 2, 3, 4]
