"""The partitioner: keyed records hash stably (CRC-32C), keyless ones stick per batch."""

from __future__ import annotations

import random
import subprocess
import sys

from client.partitioner import StickyPartitioner, key_hash, partition_for_key


def test_key_hash_is_standard_crc32c() -> None:
    """Proves the key hash is CRC-32C (the published check value), not a salted hash."""
    assert key_hash(b"123456789") == 0xE3069283


def test_known_keys_map_to_known_partitions() -> None:
    """Proves fixed keys land on fixed partitions (a change here moves users' data)."""
    assert key_hash(b"user-42") == 831595790
    assert partition_for_key(b"user-42", 12) == 2
    assert partition_for_key(b"order-1001", 12) == 2
    assert partition_for_key("héllo".encode(), 12) == 9
    assert partition_for_key(b"", 7) == 0


def test_key_partition_is_the_same_in_another_process() -> None:
    """Proves the mapping does not depend on the process (PYTHONHASHSEED differs)."""
    keys = [f"key-{index}".encode() for index in range(50)]
    here = [partition_for_key(key, 16) for key in keys]
    code = (
        "from client.partitioner import partition_for_key;"
        "print([partition_for_key(f'key-{i}'.encode(), 16) for i in range(50)])"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[3]),
    ).stdout
    assert output.strip() == str(here)


def test_keys_spread_over_partitions() -> None:
    """Proves keys spread roughly evenly (no partition starves or hogs)."""
    counts = [0] * 8
    for index in range(8000):
        counts[partition_for_key(f"device-{index}".encode(), 8)] += 1
    assert min(counts) > 800 and max(counts) < 1200, counts


def test_sticky_partitioner_sticks_until_a_batch_closes() -> None:
    """Proves keyless records stay on one partition until its batch closes, then move."""
    sticky = StickyPartitioner(random.Random(7))
    first = sticky.next_partition("t", 4)
    assert sticky.current["t"] == first
    sticky.batch_closed("t", (first + 1) % 4, 4)  # another partition's batch: no move
    assert sticky.current["t"] == first
    sticky.batch_closed("t", first, 4)
    assert sticky.current["t"] == (first + 1) % 4
    seen = {sticky.current["t"]}
    for _ in range(3):
        sticky.batch_closed("t", sticky.current["t"], 4)
        seen.add(sticky.current["t"])
    assert seen == {0, 1, 2, 3}
