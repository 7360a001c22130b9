"""Choosing a partition for a record: a stable hash for keys, stickiness without.

Keyed records go to ``crc32c(key) % partition_count``.  CRC-32C (Castagnoli, the
same checksum the record batch uses) is computed in C, is defined by a published
polynomial, and so gives the same partition in every process, on every machine,
in every Python version and in any other language -- unlike Python's ``hash()``,
which is salted per process.  It is *not* Kafka's murmur2: a key lands on the same
partition number as in another Distributary client, not as in a Kafka client.

Keyless records use the sticky partitioner (Kafka KIP-480): every record goes to
the current partition of its topic until that partition's batch is closed (full,
or drained by the sender after ``linger_ms``), then the topic moves to the next
partition.  Batches stay large and partitions still fill evenly over time.

Sans-I/O: no clock, and randomness comes from an injected ``random.Random``.
"""

from __future__ import annotations

import random

import google_crc32c


def key_hash(key: bytes) -> int:
    """The stable 32-bit hash of a key (CRC-32C)."""
    return int(google_crc32c.value(key))


def partition_for_key(key: bytes, partition_count: int) -> int:
    """The partition a key always maps to, given the topic's partition count."""
    assert partition_count > 0, partition_count
    return int(google_crc32c.value(key)) % partition_count


class StickyPartitioner:
    """Per topic, the partition keyless records currently go to.

    ``current`` is a plain dict read on the hot path (``current.get(topic)``);
    :meth:`next_partition` picks (and remembers) the next one when a batch closes.
    """

    __slots__ = ("_random", "current")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng if rng is not None else random.Random()
        self.current: dict[str, int] = {}

    def next_partition(self, topic: str, partition_count: int) -> int:
        """Move ``topic`` to another partition (round robin from a random start)."""
        assert partition_count > 0, partition_count
        previous = self.current.get(topic)
        if previous is None:
            chosen = self._random.randrange(partition_count)
        else:
            chosen = (previous + 1) % partition_count
        self.current[topic] = chosen
        return chosen

    def batch_closed(self, topic: str, partition: int, partition_count: int) -> None:
        """A batch of ``topic``/``partition`` closed: if it was the sticky one, move on."""
        if self.current.get(topic) == partition:
            self.next_partition(topic, partition_count)
