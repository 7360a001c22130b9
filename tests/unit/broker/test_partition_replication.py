"""Partition roles and replicated appends: the epoch cache persisted with the log, a
leader whose high watermark moves through its leader state, a follower that takes
batches its leader stamped (trio, logs in temp dirs, a LeaderState driven by hand)."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.partition import Partition, partition_directory
from broker.replication.epochs import EpochEntry
from broker.replication.leader_state import LeaderState
from broker.storage import disk
from broker.storage.config import LogConfig
from broker.storage.epoch_checkpoint import EPOCH_CHECKPOINT_FILE, read_epoch_checkpoint
from broker.waiting import WakeReason
from client.errors import (
    CorruptBatchError,
    FencedLeaderEpochError,
    NotLeaderError,
    OffsetOutOfRangeError,
)
from client.records.builder import BatchBuilder

START_MS = 1_700_000_000_000
CONFIG = LogConfig.from_mapping({"segment_bytes": 4096, "index_interval_bytes": 256})
PRODUCER = 42
NODE, FOLLOWER = 1, 2


class Woken:
    def __init__(self) -> None:
        self.reasons: list[WakeReason] = []

    def wake(self, reason: WakeReason) -> None:
        self.reasons.append(reason)


def batch(count: int = 1, *, sequence: int = -1) -> memoryview:
    """A writable batch of ``count`` records (of producer 42 when ``sequence`` >= 0)."""
    builder = BatchBuilder(
        producer_id=PRODUCER if sequence >= 0 else -1,
        producer_epoch=0 if sequence >= 0 else -1,
        base_sequence=sequence,
    )
    for index in range(count):
        builder.append(b"v%d" % index, timestamp_ms=START_MS + index)
    return memoryview(builder.build())


async def open_partition(data_dir: Path) -> Partition:
    return await Partition.open(data_dir, "t", 0, CONFIG, lambda: START_MS)


@pytest.fixture
async def leader(tmp_path: Path) -> AsyncIterator[Partition]:
    opened = await open_partition(tmp_path / "leader")
    yield opened
    await opened.close()


@pytest.fixture
async def follower(tmp_path: Path) -> AsyncIterator[Partition]:
    opened = await open_partition(tmp_path / "follower")
    await opened.become_follower(0)
    yield opened
    await opened.close()


def leader_state(partition: Partition, epoch: int, isr: tuple[int, ...]) -> LeaderState:
    return LeaderState(
        node_id=NODE,
        leader_epoch=epoch,
        replicas=(NODE, FOLLOWER),
        isr=isr,
        log_end_offset=partition.log_end_offset,
        high_watermark=partition.high_watermark,
        epoch_start_offset=partition.log_end_offset,
        now_ms=0,
        min_insync_replicas=1,
    )


def stamped(partition: Partition, offset: int) -> memoryview:
    """What a replica fetch from ``offset`` reads: the leader's stamped batches up to
    its log end (writable, as a fetch answer's buffer)."""
    with partition.read(
        offset, 1 << 20, whole_batch=True, end_offset_max=partition.log_end_offset
    ) as region:
        return memoryview(bytearray(region.read_bytes()))


async def test_epochs_survive_a_restart(tmp_path: Path) -> None:
    """Proves the epoch cache is written to leader-epoch-checkpoint and read back on
    open, and the reopened partition stamps its latest epoch."""
    partition = await open_partition(tmp_path)
    partition.append_now(batch(2))
    await partition.become_leader(3, None)
    partition.append_now(batch(1))
    await partition.close()
    directory = partition_directory(tmp_path, "t", 0)
    assert read_epoch_checkpoint(directory) == [EpochEntry(0, 0), EpochEntry(3, 2)]
    reopened = await open_partition(tmp_path)
    try:
        assert reopened.epochs.entries() == [EpochEntry(0, 0), EpochEntry(3, 2)]
        assert reopened.leader_epoch == 3
        reopened.check_invariants()
    finally:
        await reopened.close()


async def test_lost_checkpoint_is_rebuilt_on_open(tmp_path: Path) -> None:
    """Proves a partition whose checkpoint was lost rebuilds it from the batch
    headers and writes it back."""
    partition = await open_partition(tmp_path)
    partition.append_now(batch(2))
    await partition.become_leader(5, None)
    partition.append_now(batch(3))
    await partition.close()
    directory = partition_directory(tmp_path, "t", 0)
    (directory / EPOCH_CHECKPOINT_FILE).unlink()
    reopened = await open_partition(tmp_path)
    try:
        assert reopened.epochs.entries() == [EpochEntry(0, 0), EpochEntry(5, 2)]
        assert read_epoch_checkpoint(directory) == [EpochEntry(0, 0), EpochEntry(5, 2)]
    finally:
        await reopened.close()


async def test_leader_state_moves_the_high_watermark(leader: Partition) -> None:
    """Proves a leader with followers in its ISR keeps the HW where it is after an
    append (waking waiters APPENDED), and advances it on the follower's fetch
    (waking them HIGH_WATERMARK)."""
    leader.append_now(batch(2))
    await leader.become_leader(1, leader_state(leader, 1, (NODE, FOLLOWER)))
    assert leader.epochs.entries()[-1] == EpochEntry(1, 2)
    woken = Woken()
    leader.add_waiter(woken)
    leader.append_now(batch(3))
    assert (leader.log_end_offset, leader.high_watermark) == (5, 2)
    assert woken.reasons == [WakeReason.APPENDED]
    leader.add_waiter(woken)
    leader.follower_fetched(FOLLOWER, 4, now_ms=1)
    assert leader.high_watermark == 4 and woken.reasons[-1] is WakeReason.HIGH_WATERMARK
    leader.follower_fetched(FOLLOWER, 5, now_ms=2)
    assert leader.high_watermark == 5
    leader.check_invariants()


async def test_isr_of_the_leader_alone_commits_at_append(leader: Partition) -> None:
    """Proves a leader state whose ISR is the leader alone (min ISR 1) lets the HW
    follow the log end at each append, and a committed ISR change is taken up by
    high_watermark_advanced."""
    state = leader_state(leader, 1, (NODE,))
    await leader.become_leader(1, state)
    leader.append_now(batch(2))
    assert leader.high_watermark == 2
    assert state.isr_proposal(0) is None
    leader.follower_fetched(FOLLOWER, 2, now_ms=1)
    assert state.isr_proposal(1) == (NODE, FOLLOWER)
    assert not state.isr_committed((NODE, FOLLOWER))
    leader.high_watermark_advanced()
    leader.append_now(batch(1))
    assert leader.high_watermark == 2  # waits for the follower now
    leader.follower_fetched(FOLLOWER, 3, now_ms=2)
    assert leader.high_watermark == 3


async def test_follower_refuses_produce_appends(follower: Partition) -> None:
    """Proves a follower answers produce appends NOT_LEADER and takes no fast path."""
    assert not follower.can_append_now()
    with pytest.raises(NotLeaderError):
        await follower.append(batch())


async def test_becoming_follower_wakes_waiters(leader: Partition) -> None:
    """Proves a leader that becomes follower drops its leader state and wakes its
    waiters for LEADERSHIP."""
    await leader.become_leader(1, leader_state(leader, 1, (NODE, FOLLOWER)))
    woken = Woken()
    leader.add_waiter(woken)
    await leader.become_follower(2)
    assert woken.reasons == [WakeReason.LEADERSHIP]
    assert leader.leader_state is None and leader.leader_epoch == 2


async def test_stale_epochs_are_refused(leader: Partition) -> None:
    """Proves neither role may be taken with an epoch older than the partition's."""
    await leader.become_leader(4, None)
    with pytest.raises(FencedLeaderEpochError):
        await leader.become_follower(3)
    with pytest.raises(FencedLeaderEpochError):
        await leader.become_leader(2, None)


async def test_replicated_batches_keep_their_offsets_and_epochs(
    leader: Partition, follower: Partition
) -> None:
    """Proves a follower appends the leader's stamped batches as they are (same
    bytes, offsets and epochs), records each new epoch in its cache and persists it."""
    leader.append_now(batch(2))
    await leader.become_leader(3, None)
    leader.append_now(batch(1))
    leader.append_now(batch(2))
    payload = stamped(leader, 0)
    original = bytes(payload)
    result = await follower.append_replicated(payload)
    assert (result.base_offset, result.last_offset) == (0, 4)
    assert follower.log_end_offset == 5
    assert stamped(follower, 0).tobytes() == original
    assert follower.epochs.entries() == [EpochEntry(0, 0), EpochEntry(3, 2)]
    directory = partition_directory(follower_dir(follower), "t", 0)
    assert read_epoch_checkpoint(directory) == follower.epochs.entries()
    follower.check_invariants()


def follower_dir(partition: Partition) -> Path:
    return partition.storage_log.log.directory.parent


async def test_a_replicated_append_in_a_known_epoch_never_yields(
    leader: Partition, follower: Partition
) -> None:
    """Proves a follower's append that starts no new epoch and needs no flush runs
    without a checkpoint (the fetcher sends its next fetch, which reports the
    append to the leader, with no scheduler pass in between), and one that finds
    the append lock taken waits for it."""
    leader.append_now(batch(2))
    await follower.append_replicated(stamped(leader, 0))  # epoch 0 starts: persisted
    leader.append_now(batch(1))
    with trio.testing.assert_no_checkpoints():
        result = await follower.append_replicated(stamped(leader, 2))
    assert (result.base_offset, follower.log_end_offset) == (2, 3)
    leader.append_now(batch(1))
    payload = stamped(leader, 3)
    async with trio.open_nursery() as nursery:
        await follower._append_lock.acquire()
        nursery.start_soon(follower.append_replicated, payload)
        await trio.testing.wait_all_tasks_blocked()
        assert follower.log_end_offset == 3  # waiting for the lock
        follower._append_lock.release()
    assert follower.log_end_offset == 4
    follower.check_invariants()


async def test_replicated_batches_must_start_at_the_log_end(
    leader: Partition, follower: Partition
) -> None:
    """Proves batches that do not start at the follower's log end, or fail their CRC,
    are refused whole with a typed error."""
    leader.append_now(batch(2))
    leader.append_now(batch(1))
    with pytest.raises(OffsetOutOfRangeError):
        await follower.append_replicated(stamped(leader, 2))
    damaged = stamped(leader, 0)
    damaged[-1] ^= 0xFF
    with pytest.raises(CorruptBatchError):
        await follower.append_replicated(damaged)
    assert follower.log_end_offset == 0


async def test_producer_state_follows_replicated_batches(
    leader: Partition, follower: Partition
) -> None:
    """Proves a follower learns idempotent producers from replicated headers: once it
    leads, a retry of a batch it replicated is a duplicate with the first offsets."""
    leader.append_now(batch(1))
    leader.append_now(batch(2, sequence=0))
    await follower.append_replicated(stamped(leader, 0))
    await follower.become_leader(1, None)
    retried = await follower.append(batch(2, sequence=0))
    assert (retried.base_offset, retried.last_offset) == (1, 2)
    assert follower.log_end_offset == 3


async def test_a_leader_state_built_on_leading_starts_after_an_append_in_flight(
    leader: Partition, follower: Partition
) -> None:
    """Proves become_leader with build_leader_state builds the leader state from the
    log end and high watermark once appends are held off: a replicated append that
    was in flight when the follower was made leader is counted in (the log end read
    before it made the leader state start behind the log: a failed assertion)."""
    leader.append_now(batch(3))
    built: list[tuple[int, int]] = []

    def build(log_end_offset: int, high_watermark: int) -> LeaderState:
        built.append((log_end_offset, high_watermark))
        return leader_state(follower, 1, (NODE, FOLLOWER))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower.append_replicated, stamped(leader, 0))
        await trio.testing.wait_all_tasks_blocked()
        await follower.become_leader(1, None, build_leader_state=build)
    assert built == [(3, follower.high_watermark)] and follower.log_end_offset == 3
    assert follower.leader_state is not None and follower.leader_state.log_end_offset == 3
    assert follower.epochs.entries()[-1] == EpochEntry(1, 3)


async def test_truncation_truncates_the_epoch_cache(leader: Partition, follower: Partition) -> None:
    """Proves truncating a follower drops the epochs that started past the new end,
    in memory and in the checkpoint."""
    leader.append_now(batch(2))
    await leader.become_leader(2, None)
    leader.append_now(batch(2))
    await follower.append_replicated(stamped(leader, 0))
    assert follower.epochs.entries() == [EpochEntry(0, 0), EpochEntry(2, 2)]
    assert await follower.truncate_to(2) == 2
    assert follower.epochs.entries() == [EpochEntry(0, 0)]
    directory = partition_directory(follower_dir(follower), "t", 0)
    assert read_epoch_checkpoint(directory) == [EpochEntry(0, 0)]


async def test_follower_high_watermark_is_capped_and_may_go_back(
    leader: Partition, follower: Partition
) -> None:
    """Proves a follower's HW is what its leader reports, capped at its own log end,
    and may move back (a new leader's HW can be behind the old one's)."""
    leader.append_now(batch(4))
    await follower.append_replicated(stamped(leader, 0))
    woken = Woken()
    follower.add_waiter(woken)
    follower.set_follower_high_watermark(10)
    assert follower.high_watermark == 4 and woken.reasons == [WakeReason.HIGH_WATERMARK]
    follower.set_follower_high_watermark(1)
    assert follower.high_watermark == 1
    follower.check_invariants()


async def test_restart_at_the_leaders_log_start(tmp_path: Path, follower: Partition) -> None:
    """Proves a follower behind its leader's log start empties its log and starts at
    that offset (offsets, HW, epochs, producers), takes the leader's batches from
    there, and reopens there."""
    leader = await open_partition(tmp_path / "far-leader")
    try:
        for _ in range(3):
            leader.append_now(batch(2))
        follower_payload = stamped(leader, 0)
        await follower.append_replicated(follower_payload)
        await follower.truncate_to(2)
        truncations = follower.truncations
        await follower.truncate_fully_and_start_at(4)
        assert (follower.log_start_offset, follower.log_end_offset) == (4, 4)
        assert follower.high_watermark == 4 and follower.epochs.entries() == []
        assert follower.truncations == truncations + 1
        follower.check_invariants()
        result = await follower.append_replicated(stamped(leader, 4))
        assert (result.base_offset, result.last_offset) == (4, 5)
        assert follower.epochs.entries() == [EpochEntry(0, 4)]
        follower.check_invariants()
    finally:
        await leader.close()
    await follower.close()
    reopened = await open_partition(tmp_path / "follower")
    try:
        assert (reopened.log_start_offset, reopened.log_end_offset) == (4, 6)
        assert reopened.epochs.entries() == [EpochEntry(0, 4)]
    finally:
        await reopened.close()


async def test_truncating_at_the_log_end_drops_an_empty_epoch(leader: Partition) -> None:
    """Proves truncate_to at the log end keeps every batch but drops an epoch that
    starts there without any (a former leader's), in memory and on disk."""
    leader.append_now(batch(2))
    await leader.become_leader(3, None)
    assert leader.epochs.entries() == [EpochEntry(0, 0), EpochEntry(3, 2)]
    await leader.become_follower(4)
    assert await leader.truncate_to(2) == 2
    assert leader.epochs.entries() == [EpochEntry(0, 0)]
    directory = leader.storage_log.log.directory
    assert read_epoch_checkpoint(directory) == [EpochEntry(0, 0)]
    assert leader.log_end_offset == 2


class FullDisk(disk.Disk):
    """Every file fsync fails with ENOSPC."""

    def fsync(self, descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_leader_whose_flush_fails_gives_the_partition_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proves a leader with followers whose append cannot be fsynced stops leading at
    once: the append answers NOT_LEADER, waiters wake (LEADERSHIP) with the HW
    unmoved, produce is refused and the replica manager's hook hears of it."""
    config = LogConfig.from_mapping({"flush_policy": "every-append"})
    partition = await Partition.open(tmp_path, "t", 0, config, lambda: START_MS)
    failures: list[str] = []
    partition.on_storage_failure = lambda error: failures.append(error.message)
    await partition.become_leader(1, leader_state(partition, 1, (NODE, FOLLOWER)))
    await partition.append(batch(2))
    woken = Woken()
    partition.add_waiter(woken)
    monkeypatch.setattr(disk, "current", FullDisk())
    with pytest.raises(NotLeaderError):
        await partition.append(batch(1))
    assert woken.reasons == [WakeReason.LEADERSHIP]
    assert partition.leader_state is None and partition.high_watermark == 0
    assert len(failures) == 1 and "No space left" in failures[0]
    with pytest.raises(NotLeaderError):
        await partition.append(batch(1))
    monkeypatch.setattr(disk, "current", disk.Disk())
    await partition.close()
