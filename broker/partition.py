"""One partition as the request handlers see it: a replica's state around its log.

Three layers, each with one job:

- :class:`broker.partition_state.PartitionState` (sans-I/O) holds the numbers
  replication reasons about: log start and end, the high watermark, the leader
  epoch and the leader-epoch cache, a truncation count, and the
  idempotent-produce table (broker/producer_state.py);
- :class:`broker.storage.async_log.AsyncLog` is the only door to the storage log;
- :class:`Partition` (this module, trio) does the I/O and keeps the state in step
  with the log: it appends, reads, truncates and runs the maintenance round.

An append validates each batch's header and CRC (client.records.header.iter_batches),
lets the log stamp offsets and the leader epoch, and records the new log end in the
state.  Batches of an idempotent producer first pass the producer-state check: a
retried duplicate is answered with its first offsets instead of being appended.
Reads serve what lies below the high watermark.  No per-record work anywhere.

Roles.  A partition leads (the default: on one node it leads everything) or
follows.  A leader without a :attr:`Partition.leader_state` (one replica) commits
what it appends: after the append (and its fsync under FlushPolicy.EVERY_APPEND)
the high watermark advances to the log end and every Fetch waiting on the
partition is woken.  A leader with one (broker/replication/leader_state.py: the
followers' progress) moves the high watermark only through it: after its own
appends, on each follower fetch (:meth:`Partition.follower_fetched`) and when an
ISR change commits (:meth:`Partition.high_watermark_advanced`).  A follower refuses
produce appends; it takes batches its leader stamped (:meth:`append_replicated`)
and the high watermark its leader reports (:meth:`set_follower_high_watermark`).
A leader with followers whose append or flush fails (StorageError) gives the
partition up at once: it drops its leader state (acks=all waiters answer
NOT_LEADER), refuses produce, and tells :attr:`Partition.on_storage_failure` (the
replica manager has another ISR member elected).

Leader epochs.  The epoch cache (which epoch starts at which offset) mirrors the
batch headers' epochs and is persisted to ``leader-epoch-checkpoint``
(broker/storage/epoch_checkpoint.py) on every role change, replicated epoch
change and truncation; an append that starts a new epoch on a leader notes it in
memory and the next maintenance round writes it (a crash before that rebuilds
it from the headers on open).

Concurrency: one trio task at a time appends or truncates (``_append_lock``),
because the log assigns offsets; reads may run concurrently with an append (the log
hands out reference-counted file regions), but not with a truncation, which runs in
a worker thread: reads meanwhile find nothing new.  Everything else runs on the
event-loop thread.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import trio

from broker.logging import get_logger
from broker.metrics.counters import PartitionTraffic
from broker.partition_state import PartitionState
from broker.producer_state import REBUILD_SCAN_BYTES_MAX, Verdict
from broker.replication.epochs import LeaderEpochCache
from broker.replication.leader_state import LeaderState
from broker.storage.async_log import AsyncLog
from broker.storage.config import FlushPolicy, LogConfig
from broker.storage.epoch_checkpoint import load_epochs, write_epoch_checkpoint
from broker.storage.file_handle import FileRegion
from broker.waiting import Waiter, WakeReason
from client.errors import (
    DistributaryError,
    FencedLeaderEpochError,
    InvalidBatchError,
    NotLeaderError,
    OffsetOutOfRangeError,
    StorageError,
    UnknownTopicOrPartitionError,
)
from client.records.header import LENGTH_PREFIX_BYTES, MAGIC, BatchHeader, iter_batches


@dataclass(frozen=True)
class AppendResult:
    base_offset: int
    last_offset: int
    log_start_offset: int
    log_append_time_ms: int


@dataclass(frozen=True)
class PartitionStats:
    log_start_offset: int
    log_end_offset: int
    size_bytes: int
    segment_count: int


def partition_directory(data_dir: Path, topic: str, partition: int) -> Path:
    """``<data_dir>/<topic>-<partition>``: unambiguous because a topic name is
    recovered with ``rpartition("-")`` and a partition number has no dash."""
    return data_dir / f"{topic}-{partition}"


class Partition:
    """A replica of a partition on this node: its leader (every partition, on one
    node) or a follower.

    A partition whose log failed to open (:meth:`failed`) has no log: it is closed
    from the start, and every request for it raises its ``failure``.
    """

    _log: AsyncLog

    def __init__(
        self,
        topic: str,
        index: int,
        log: AsyncLog | None,
        config: LogConfig,
        failure: DistributaryError | None = None,
    ) -> None:
        assert (log is None) == (failure is not None), (topic, index)
        self.topic = topic
        self.index = index
        self.config = config
        self.failure = failure
        if log is not None:
            self._log = log
            self._state = PartitionState(log.start_offset, log.end_offset)
        else:
            self._state = PartitionState(0, 0)
        self._flush_every_append = config.flush_policy is FlushPolicy.EVERY_APPEND
        # The followers' progress while leading with replicas (None: one replica, or
        # following); see the module docstring.
        self.leader_state: LeaderState | None = None
        self.is_follower = False
        # Called when a leader with followers gives the partition up after a
        # storage failure (:meth:`_give_up_leadership`): the replica manager's.
        self.on_storage_failure: Callable[[StorageError], None] | None = None
        # The epoch the cache last recorded for this leader's appends: an append
        # stamped with another (a new epoch) records where it starts.
        self._epoch_recorded = -1
        self._epoch_write_lock = trio.Lock()
        self._append_lock = trio.Lock()
        self._appends_now_allowed = False
        # While a truncation runs in a worker thread, reads keep off the log and
        # stats() answers with this snapshot taken before it.
        self._truncating = False
        self._stats_before_truncation: PartitionStats | None = None
        self._waiters: set[Waiter] = set()
        self.closed = failure is not None
        self._update_appends_now_allowed()
        self.logger = get_logger(topic=topic, partition=index)
        self.traffic = PartitionTraffic()  # produced and fetched, for the metrics

    @classmethod
    def failed(
        cls, topic: str, index: int, config: LogConfig, failure: DistributaryError
    ) -> Partition:
        """A partition whose log could not be opened: requests for it raise
        ``failure`` (LogCorruptError, StorageError) until the broker restarts."""
        return cls(topic, index, None, config, failure)

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        topic: str,
        index: int,
        config: LogConfig,
        clock_ms: Callable[[], int],
    ) -> Partition:
        """Open (or create, or recover) the partition's log in a worker thread and
        rebuild its producer state from the log's tail.  Raises LogCorruptError,
        StorageError."""
        log = await AsyncLog.open(
            partition_directory(data_dir, topic, index),
            config,
            clock_ms=clock_ms,
            topic=topic,
            partition=index,
        )
        partition = cls(topic, index, log, config)
        try:
            await partition._rebuild_producers(None)
            await partition._load_epochs()
        except BaseException:
            with trio.CancelScope(shield=True):
                await log.close()
            raise
        # Until a role says otherwise (one replica): everything in the log was
        # committed.
        partition._state.advance_high_watermark(log.end_offset)
        return partition

    async def _load_epochs(self) -> None:
        """Read the epoch cache (or rebuild it from the batch headers) in a worker
        thread, write it back if it had to change, and resume stamping its latest
        epoch.  Raises StorageError, LogCorruptError."""
        log = self._log
        loaded = await trio.to_thread.run_sync(
            lambda: load_epochs(
                log.log.directory,
                log_start_offset=log.start_offset,
                log_end_offset=log.end_offset,
                log_size_bytes=log.size_bytes,
                header_fields=log.tail_header_fields,
            )
        )
        state = self._state
        state.epochs = loaded.cache
        state.epochs_dirty = loaded.source != "read"
        if loaded.source == "rebuilt" and len(loaded.cache):
            self.logger.info("leader epochs rebuilt from the log", epochs=len(loaded.cache))
        state.set_leader_epoch(max(state.leader_epoch, loaded.cache.latest_epoch))
        self._epoch_recorded = loaded.cache.latest_epoch
        if state.epochs_dirty and len(loaded.cache):
            await self.write_epochs()
        else:
            state.epochs_dirty = False

    def set_config(self, config: LogConfig) -> None:
        """Take a topic's altered config: the log reads it from its next append, roll
        or retention pass; the flush policy decides the next acknowledgement."""
        self.config = config
        self._flush_every_append = config.flush_policy is FlushPolicy.EVERY_APPEND
        self._update_appends_now_allowed()
        if self.failure is None:
            self._log.set_config(config)

    @property
    def storage_log(self) -> AsyncLog:
        """The partition's log, for the scrubber (broker/scrubbing.py); only of an
        open partition."""
        assert self.failure is None, (self.topic, self.index)
        return self._log

    # -- reads ------------------------------------------------------------------------

    @property
    def log_start_offset(self) -> int:
        return self._state.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._state.log_end_offset

    @property
    def high_watermark(self) -> int:
        """Consumers see the offsets below this one."""
        return self._state.high_watermark

    @property
    def leader_epoch(self) -> int:
        return self._state.leader_epoch

    @property
    def epochs(self) -> LeaderEpochCache:
        """Which leader epoch starts at which offset in this log (read only: the
        partition changes it)."""
        return self._state.epochs

    @property
    def truncations(self) -> int:
        """How many truncations the partition went through since it was opened: a
        position remembered with an older count may point past the log end, or at
        records replaced since."""
        return self._state.truncations

    def set_leader_epoch(self, leader_epoch: int) -> None:
        """Stamp ``leader_epoch`` into every batch appended from now on (a leader
        without followers; :meth:`become_leader` is the full form).  Epochs never go
        back (the caller refuses a stale one first)."""
        self._state.set_leader_epoch(leader_epoch)

    def stats(self) -> PartitionStats:
        if self.failure is not None:
            return PartitionStats(0, 0, 0, 0)
        if self._stats_before_truncation is not None:
            return self._stats_before_truncation
        state = self._state
        return PartitionStats(
            state.log_start_offset,
            state.log_end_offset,
            self._log.size_bytes,
            self._log.segment_count,
        )

    def read(
        self,
        offset: int,
        max_bytes: int,
        *,
        whole_batch: bool,
        end_offset_max: int | None = None,
    ) -> FileRegion:
        """Whole batches from ``offset`` up to ``max_bytes``; with ``whole_batch`` at
        least the first batch even when it is bigger.  Never past ``end_offset_max``
        (exclusive), which is the high watermark unless given: a consumer's fetch
        reads only committed records (a replica's fetch would pass the log end).
        Empty at the bound, and while a truncation runs.  The caller releases the
        region.  Raises OffsetOutOfRangeError (``offset`` outside [log start, log
        end]), UnknownTopicOrPartitionError."""
        self.check_open()
        state = self._state
        if not state.log_start_offset <= offset <= state.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside [{state.log_start_offset}, {state.log_end_offset}]"
            )
        if self._truncating:
            return FileRegion.empty(offset)
        if end_offset_max is None:
            end_offset_max = state.high_watermark
        region = self._log.read(offset, max_bytes, end_offset_max=end_offset_max)
        if region.length > max_bytes and not whole_batch:
            region.release()
            return FileRegion.empty(offset)
        return region

    def offset_for_timestamp(self, timestamp_ms: int) -> tuple[int, int] | None:
        """``(offset, timestamp_ms)``: the base offset of the first batch whose max
        timestamp is >= ``timestamp_ms`` and the timestamp of its first record
        (batch granularity: records are not decoded), or None -- also when that
        batch is not below the high watermark yet.  Raises
        UnknownTopicOrPartitionError, NotLeaderError (retriable: a truncation
        runs)."""
        self.check_open()
        if self._truncating:
            raise NotLeaderError(f"{self.topic}-{self.index} is being truncated")
        offset = self._log.offset_for_timestamp(timestamp_ms)
        if offset is None or offset >= self._state.high_watermark:
            return None
        return offset, self._log.batch_at(offset).first_timestamp_ms

    def batch_timestamp_ms(self, offset: int) -> int | None:
        """The first timestamp of the batch holding ``offset`` (a header read, for
        the consumer-lag metric), None while a truncation runs.  Raises
        OffsetOutOfRangeError, StorageError, UnknownTopicOrPartitionError."""
        self.check_open()
        return None if self._truncating else self._log.batch_at(offset).first_timestamp_ms

    # -- appends ----------------------------------------------------------------------

    async def append(self, payload: memoryview) -> AppendResult:
        """Append a Produce payload (whole batches back to back).  Every header and
        CRC is checked first (:meth:`_checked_headers`), the log stamps the offsets;
        with FlushPolicy.EVERY_APPEND it returns once the bytes are fsynced.

        Batches with a producer id go through the idempotence check one by one,
        in order (header fields only): a retried batch already in the log is not
        appended again and answers with its remembered offsets.

        Raises RecordBatchError subclasses (bad header, CRC, size: nothing is
        appended), UnknownProducerIdError and OutOfOrderSequenceError (batches
        before the offending one are appended), UnknownTopicOrPartitionError
        (deleted meanwhile), StorageError.
        """
        headers = self._checked_headers(payload)
        lock = self._append_lock
        try:
            lock.acquire_nowait()  # uncontended (the usual case): no scheduler trip
        except trio.WouldBlock:
            await lock.acquire()
        try:
            self.check_open()
            if self.is_follower:
                raise NotLeaderError(f"{self.topic}-{self.index} is a follower here")
            end_before = self._state.log_end_offset
            try:
                result = self._append_batches(payload, headers)
            finally:
                # With the every-append policy the acknowledgement waits for the
                # disk -- also for the batches before a refused one.
                if self._log.needs_flush():
                    await self._log.flush()
                if self._state.log_end_offset != end_before:
                    self._commit_appended(end_before)
        except StorageError as error:
            if self._give_up_leadership(error):
                raise self._gave_up_error(error) from error
            raise
        finally:
            lock.release()
        return result

    def can_append_now(self) -> bool:
        """Whether :meth:`append_now` may be used: no append or truncation in
        progress and the acknowledgement need not wait for the disk (any policy but
        every-append; an interval flush falling due is then done by the maintenance
        task, within its 100 ms tick)."""
        return not self._append_lock.locked() and self._appends_now_allowed

    def _update_appends_now_allowed(self) -> None:
        """Recompute what :meth:`can_append_now` reads besides the lock (one
        attribute on the produce path)."""
        self._appends_now_allowed = not (
            self.closed or self._flush_every_append or self.is_follower
        )

    def append_now(self, payload: memoryview) -> AppendResult:
        """:meth:`append` without any wait, for when :meth:`can_append_now` said so
        (checked again, as a programmer error).  Raises like :meth:`append`."""
        assert not self._append_lock.locked() and not self.closed, (self.topic, self.index)
        assert not self.is_follower, (self.topic, self.index)
        headers = self._checked_headers(payload)
        state = self._state
        end_before = state.log_end_offset
        try:
            try:
                return self._append_batches(payload, headers)
            finally:
                if state.log_end_offset != end_before:
                    self._commit_appended(end_before)
        except StorageError as error:
            if self._give_up_leadership(error):
                raise self._gave_up_error(error) from error
            raise

    def _give_up_leadership(self, error: StorageError) -> bool:
        """A leader with followers that failed to store (write or fsync) stops
        leading at once: no acks=all waiter is answered as success from now on
        (they answer NOT_LEADER), produce appends are refused, and
        ``on_storage_failure`` tells the replica manager, which has the controller
        elect another ISR member.  Whether it gave up: a single replica (no one to
        take over) or a follower keeps its role and the error."""
        if self.leader_state is None:
            return False
        self.leader_state = None
        self.is_follower = True
        self._update_appends_now_allowed()
        self.wake_waiters(WakeReason.LEADERSHIP)
        self.logger.error("storage failed; giving up leadership", error=error.message)
        if self.on_storage_failure is not None:
            self.on_storage_failure(error)
        return True

    def _gave_up_error(self, error: StorageError) -> NotLeaderError:
        """What an append that made the leader give up answers: NOT_LEADER, so the
        producer retries at the new leader."""
        return NotLeaderError(
            f"{self.topic}-{self.index}: this replica failed to store the append and "
            f"stopped leading: {error.message}"
        )

    def _commit_appended(self, end_before: int) -> None:
        """After a leader's append from ``end_before``: note a new epoch's start, then
        advance the high watermark -- to the log end with one replica, else as far
        as the leader state says -- and wake the waiting fetches (a follower's
        waits for the records themselves)."""
        state = self._state
        if state.leader_epoch != self._epoch_recorded:
            state.assign_epoch(state.leader_epoch, end_before)
            self._epoch_recorded = state.leader_epoch
        leader_state = self.leader_state
        if leader_state is None:
            state.advance_high_watermark(state.log_end_offset)
            self.wake_waiters()
        elif leader_state.on_append(state.log_end_offset):
            state.advance_high_watermark(leader_state.high_watermark)
            self.wake_waiters()
        else:
            self.wake_waiters(WakeReason.APPENDED)

    def _checked_headers(self, payload: memoryview) -> list[BatchHeader]:
        """Every header and CRC, checked once here (the log takes the parsed
        headers): a bad batch anywhere refuses the whole payload before anything is
        written.  Raises RecordBatchError subclasses."""
        if payload.nbytes == 0:
            raise InvalidBatchError("produce payload for a partition holds no batch")
        return iter_batches(payload, batch_bytes_max=self.config.batch_bytes_max)

    def _append_batches(self, payload: memoryview, headers: list[BatchHeader]) -> AppendResult:
        """Append (no flush); batches with a producer id go through the idempotence
        check one by one, in order, and a retried batch already in the log is not
        appended again: it answers with its remembered offsets.  The result spans
        the first to the last batch, duplicates included.  Raises
        UnknownProducerIdError, OutOfOrderSequenceError (the batches before are
        appended), StorageError."""
        if len(headers) == 1:
            if headers[0].producer_id < 0:
                return self._append_to_log(payload, headers)
            return self._append_sequenced(payload, headers[0], headers)
        if not any(header.producer_id >= 0 for header in headers):
            return self._append_to_log(payload, headers)
        base_offset = last_offset = -1
        append_time_ms = -1
        for header in headers:
            batch = payload[header.position : header.end]
            if header.producer_id < 0:
                result = self._append_to_log(batch, None)
            else:
                result = self._append_sequenced(batch, header, None)
            if base_offset < 0:
                base_offset = result.base_offset
                append_time_ms = result.log_append_time_ms
            last_offset = result.last_offset
        return AppendResult(base_offset, last_offset, self._state.log_start_offset, append_time_ms)

    def _append_sequenced(
        self, batch: memoryview, header: BatchHeader, headers: list[BatchHeader] | None
    ) -> AppendResult:
        """One batch with a producer id, through the idempotence check: appended
        and remembered, or -- a retry already in the log -- answered with its
        remembered offsets.  ``headers``: ``batch``'s, if already parsed.  Raises
        InvalidBatchError, UnknownProducerIdError, OutOfOrderSequenceError (nothing
        appended), StorageError."""
        producer_id = header.producer_id
        epoch, sequence = header.producer_epoch, header.base_sequence
        if epoch < 0 or sequence < 0:
            raise InvalidBatchError(
                f"producer {producer_id}: epoch {epoch} and base sequence "
                f"{sequence} must not be negative"
            )
        producers = self._state.producers
        verdict, remembered = producers.check(producer_id, epoch, sequence)
        if verdict is Verdict.DUPLICATE:
            assert remembered is not None
            self.logger.info("duplicate batch", producer_id=producer_id, base_sequence=sequence)
            return AppendResult(
                remembered.base_offset, remembered.last_offset, self._state.log_start_offset, -1
            )
        result = self._append_to_log(batch, headers)
        producers.record(
            producer_id,
            epoch,
            sequence,
            header.record_count,
            result.base_offset,
            result.last_offset,
        )
        return result

    def _append_to_log(
        self, payload: memoryview, headers: list[BatchHeader] | None
    ) -> AppendResult:
        """``headers``: ``payload``'s, already validated (None: the log parses them).
        Records the new log end in the state."""
        state = self._state
        appended = self._log.append_now(payload, headers=headers, leader_epoch=state.leader_epoch)
        assert appended.base_offset == state.log_end_offset, (appended, state.log_end_offset)
        assert appended.last_offset >= appended.base_offset >= 0, appended
        state.log_end_offset = appended.last_offset + 1
        self.traffic.produced(appended.last_offset - appended.base_offset + 1, payload.nbytes)
        return AppendResult(
            appended.base_offset,
            appended.last_offset,
            state.log_start_offset,
            appended.log_append_time_ms,
        )

    async def _rebuild_producers(self, producer_ids: Collection[int] | None) -> None:
        """Replay the headers of the log's last REBUILD_SCAN_BYTES_MAX bytes into the
        producer table (for every producer, or only ``producer_ids``), in a worker
        thread.  The caller keeps appends and truncations off.  Raises StorageError,
        LogCorruptError (the headers do not follow each other)."""
        producers = self._state.producers
        log = self._log
        await trio.to_thread.run_sync(
            lambda: producers.replay(log.tail_header_fields(REBUILD_SCAN_BYTES_MAX), producer_ids)
        )

    # -- roles ------------------------------------------------------------------------

    async def become_leader(
        self,
        leader_epoch: int,
        leader_state: LeaderState | None,
        *,
        build_leader_state: Callable[[int, int], LeaderState] | None = None,
    ) -> None:
        """Lead from ``leader_epoch`` on: the epoch starts at the log end (recorded
        and persisted before anything is appended in it), appends are stamped with
        it, and -- with a ``leader_state`` (followers to wait for) -- the high
        watermark moves only through it, starting from the larger of the
        partition's and the state's.  None: one replica, HW = LEO at each append.
        ``build_leader_state`` (instead of ``leader_state``) is called with the log
        end and high watermark as they are once appends are held off: a replicated
        append in flight when a follower is made leader may still move them.
        Waiters are woken (LEADERSHIP).  Raises FencedLeaderEpochError (an epoch
        older than the partition's), UnknownTopicOrPartitionError (closed),
        StorageError (the checkpoint could not be written: do not lead)."""
        assert leader_state is None or build_leader_state is None
        async with self._append_lock:
            self.check_open()
            state = self._state
            self._check_epoch_not_stale(leader_epoch)
            if build_leader_state is not None:
                leader_state = build_leader_state(state.log_end_offset, state.high_watermark)
            assert leader_state is None or (
                leader_state.leader_epoch == leader_epoch
                and leader_state.log_end_offset == state.log_end_offset
            ), (leader_state.leader_epoch, leader_state.log_end_offset, leader_epoch, state)
            state.set_leader_epoch(leader_epoch)
            state.assign_epoch(leader_epoch, state.log_end_offset)
            self._epoch_recorded = leader_epoch
            self.leader_state = leader_state
            self.is_follower = False
            self._update_appends_now_allowed()
            if leader_state is None:
                state.advance_high_watermark(state.log_end_offset)
            else:
                state.advance_high_watermark(min(leader_state.high_watermark, state.log_end_offset))
            self.wake_waiters(WakeReason.LEADERSHIP)
            await self.write_epochs()
        self.logger.info(
            "leading",
            epoch=leader_epoch,
            log_end_offset=state.log_end_offset,
            high_watermark=state.high_watermark,
            followers=leader_state is not None,
        )

    async def become_follower(self, leader_epoch: int) -> None:
        """Follow the leader of ``leader_epoch``: produce appends are refused
        (NOT_LEADER), the leader state is dropped, waiters are woken (LEADERSHIP:
        long polls and acks=all produces answer now).  The epoch cache changes only
        through replicated batches and truncations.  Raises FencedLeaderEpochError
        (an epoch older than the partition's), UnknownTopicOrPartitionError."""
        async with self._append_lock:
            self.check_open()
            self._check_epoch_not_stale(leader_epoch)
            self._state.set_leader_epoch(leader_epoch)
            self.leader_state = None
            self.is_follower = True
            self._update_appends_now_allowed()
            self.wake_waiters(WakeReason.LEADERSHIP)
        self.logger.info("following", epoch=leader_epoch)

    def _check_epoch_not_stale(self, leader_epoch: int) -> None:
        if leader_epoch < self._state.leader_epoch:
            raise FencedLeaderEpochError(
                f"{self.topic}-{self.index}: leader epoch {leader_epoch} is older than "
                f"{self._state.leader_epoch}"
            )

    def follower_fetched(
        self, replica: int, fetch_offset: int, now_ms: int, broker_epoch: int = -1
    ) -> None:
        """A leader's follower ``replica`` (its broker's incarnation ``broker_epoch``;
        -1: unknown) fetched at ``fetch_offset`` (checked by the caller: an assigned
        replica, the current epoch, no divergence, within the log): tell the leader
        state; when the high watermark moves, take it and wake the waiters
        (consumers, acks=all produces)."""
        leader_state = self.leader_state
        assert leader_state is not None, (self.topic, self.index)
        if leader_state.on_follower_fetch(replica, fetch_offset, now_ms, broker_epoch):
            self._take_leader_high_watermark()

    def high_watermark_advanced(self) -> None:
        """The shell changed the leader state outside an append or a fetch (an ISR
        change committed: ``isr_committed`` returned True): take its high
        watermark and wake the waiters if it moved."""
        if self.leader_state is not None:
            self._take_leader_high_watermark()

    def _take_leader_high_watermark(self) -> None:
        leader_state = self.leader_state
        assert leader_state is not None
        state = self._state
        before = state.high_watermark
        state.advance_high_watermark(min(leader_state.high_watermark, state.log_end_offset))
        if state.high_watermark != before:
            self.wake_waiters()

    # -- replicated appends (a follower) ------------------------------------------------

    async def append_replicated(self, payload: memoryview) -> AppendResult:
        """Append batches a leader already stamped (a follower's fetch answer) as they
        are: the first must start at this log's end and each at the end of the one
        before; headers and CRCs are checked; offsets and epochs are not re-stamped.
        A batch starting a newer epoch records it in the epoch cache (persisted
        before this returns); batches of idempotent producers update the producer
        state, so a retry reaching a later leader is still recognised.  Waiters
        are woken (APPENDED).

        Raises RecordBatchError subclasses (bad header or CRC: nothing appended),
        OffsetOutOfRangeError (the batches do not start at the log end),
        InvalidBatchError (they do not follow each other, or carry no epoch),
        NotLeaderError (this replica leads: it takes no replicated batches),
        UnknownTopicOrPartitionError, StorageError."""
        headers = self._checked_headers(payload)
        lock = self._append_lock
        try:
            # Uncontended (the usual case): no scheduler pass between the fetch
            # answer and the next fetch, which reports this append to the leader.
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            self.check_open()
            if not self.is_follower:
                raise NotLeaderError(
                    f"{self.topic}-{self.index} leads here: it takes no replicated batches"
                )
            state = self._state
            if headers[0].base_offset != state.log_end_offset:
                raise OffsetOutOfRangeError(
                    f"{self.topic}-{self.index}: replicated batches start at "
                    f"{headers[0].base_offset}, the log ends at {state.log_end_offset}"
                )
            epoch_starts, producer_fields = replicated_batch_facts(headers)
            appended = self._log.append_now(payload, headers=headers, leader_epoch=None)
            del headers
            assert appended.base_offset == state.log_end_offset, appended
            state.log_end_offset = appended.last_offset + 1
            for epoch, start_offset in epoch_starts:
                state.assign_epoch(epoch, start_offset)
            if producer_fields:
                state.producers.replay(producer_fields)
            self.wake_waiters(WakeReason.APPENDED)
            if self._log.needs_flush():
                await self._log.flush()
            if state.epochs_dirty:
                await self.write_epochs()
        finally:
            lock.release()
        return AppendResult(
            appended.base_offset,
            appended.last_offset,
            state.log_start_offset,
            appended.log_append_time_ms,
        )

    def set_follower_high_watermark(self, high_watermark: int) -> None:
        """A follower's high watermark as its leader reported it, capped at this
        log's end (it may go back across a leader change); waiters are woken when
        it moves."""
        state = self._state
        before = state.high_watermark
        state.set_high_watermark(high_watermark)
        if state.high_watermark != before:
            self.wake_waiters()

    # -- epoch checkpoint -------------------------------------------------------------

    async def write_epochs(self) -> None:
        """Persist the epoch cache if it changed since the last write (in a worker
        thread; one write at a time, each of the then-current entries).
        Raises StorageError (the cache stays marked unwritten)."""
        state = self._state
        async with self._epoch_write_lock:
            if not state.epochs_dirty:
                return
            state.epochs_dirty = False
            entries = state.epochs.entries()
            directory = self._log.log.directory
            try:
                await trio.to_thread.run_sync(write_epoch_checkpoint, directory, entries)
            except BaseException:
                state.epochs_dirty = True
                raise

    # -- truncation -------------------------------------------------------------------

    async def truncate_to(self, offset: int) -> int:
        """Cut the log so that it ends at ``offset`` -- a batch holding ``offset`` goes
        whole, so the new end may be lower -- and return the new log end (at or past
        the end only epoch-cache entries starting at or past ``offset`` go).  One operation under the append lock: the log (segments,
        indexes, its last-append cache; the fsyncs and unlinks in a worker thread),
        the producer state (each producer with a batch past the new end rebuilt
        from the log's remaining tail), the high watermark (clamped), the
        truncation count (bumped); waiters are woken.  Reads meanwhile find nothing.

        Raises OffsetOutOfRangeError (below the log start),
        UnknownTopicOrPartitionError (closed), StorageError.
        """
        async with self._append_lock:
            self.check_open()
            state = self._state
            if offset >= state.log_end_offset:
                # The log keeps its batches; an epoch that starts at or past
                # ``offset`` with none (a leader's, at its log end) still goes.
                if state.epochs.truncate_from_end(offset):
                    state.epochs_dirty = True
                    await self.write_epochs()
                return state.log_end_offset
            if offset < state.log_start_offset:
                raise OffsetOutOfRangeError(
                    f"cannot truncate {self.topic}-{self.index} to {offset}: "
                    f"below the log start {state.log_start_offset}"
                )
            self._stats_before_truncation = self.stats()
            self._truncating = True
            try:
                try:
                    await self._log.truncate_to(offset)
                finally:
                    # Also after a failure: the log may have been cut before it.
                    end = self._log.end_offset
                    forgotten = state.truncated(end) if end < state.log_end_offset else []
                if forgotten:
                    await self._rebuild_producers(forgotten)
                if state.epochs_dirty:
                    await self.write_epochs()
            finally:
                self._truncating = False
                self._stats_before_truncation = None
                self.wake_waiters(WakeReason.TRUNCATED)
            self.logger.info(
                "partition truncated",
                offset=offset,
                log_end_offset=state.log_end_offset,
                producers_rebuilt=len(forgotten),
            )
            return state.log_end_offset

    async def truncate_fully_and_start_at(self, offset: int) -> None:
        """Empty the log and start it at ``offset`` (a follower whose leader's log now
        starts past this one's end: FollowerStep.restart_at).  Offsets, high
        watermark, producer state and epoch cache (persisted) start over; the
        truncation count is bumped and waiters are woken (TRUNCATED).  Reads
        meanwhile find nothing.  Raises UnknownTopicOrPartitionError (closed),
        StorageError (the log is then offline)."""
        async with self._append_lock:
            self.check_open()
            self._stats_before_truncation = self.stats()
            self._truncating = True
            try:
                await self._log.truncate_fully_and_start_at(offset)
                self._state.restarted(offset)
                await self.write_epochs()
            finally:
                self._truncating = False
                self._stats_before_truncation = None
                self.wake_waiters(WakeReason.TRUNCATED)
            self.logger.warning("partition restarted empty", offset=offset)

    # -- long-poll waiters ------------------------------------------------------------

    def add_waiter(self, waiter: Waiter) -> None:
        self._waiters.add(waiter)

    def remove_waiter(self, waiter: Waiter) -> None:
        self._waiters.discard(waiter)

    def wake_waiters(self, reason: WakeReason = WakeReason.HIGH_WATERMARK) -> None:
        """Wake (and forget) every waiter: the high watermark advanced, the
        leadership changed, the log was truncated or closed (``reason``)."""
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            waiter.wake(reason)

    # -- maintenance ------------------------------------------------------------------

    async def maintain(self) -> None:
        """Flush (FlushPolicy.INTERVAL) and enforce retention if due (the log keeps
        the schedule).  Raises StorageError."""
        if self.closed:
            return
        try:
            await self._log.maintain()
        except StorageError as error:
            self._give_up_leadership(error)
            raise
        start = self._log.start_offset
        if start != self._state.log_start_offset:
            self._state.log_start_advanced(start)
            self.logger.info("retention", log_start_offset=start)
        if self._state.epochs_dirty:
            await self.write_epochs()

    async def close(self) -> None:
        """Flush and close the log (writing its clean-shutdown marker); wakes
        waiters so a long poll answers now.  Idempotent.  Raises StorageError."""
        if self.closed:
            return
        async with self._append_lock:
            self.closed = True
            self._update_appends_now_allowed()
            self.wake_waiters(WakeReason.CLOSED)
            try:
                await self.write_epochs()
            finally:
                await self._log.close()

    def check_invariants(self) -> None:
        """The state's invariants (0 <= log start <= high watermark <= log end; every
        remembered producer batch below the log end) and the log's, and the state
        agrees with the log.  Walks the producer table and the segments: for tests."""
        if self.closed:
            return
        state = self._state
        state.check_invariants()
        if self._truncating:
            return
        assert (state.log_start_offset, state.log_end_offset) == (
            self._log.start_offset,
            self._log.end_offset,
        ), (self.topic, self.index, state.log_start_offset, state.log_end_offset)
        self._log.check_invariants()

    def check_open(self) -> None:
        """Raises the failure of a partition that could not be opened (LogCorruptError,
        StorageError), UnknownTopicOrPartitionError once closed."""
        if self.closed:
            if self.failure is not None:
                raise type(self.failure)(self.failure.message)
            raise UnknownTopicOrPartitionError(f"{self.topic}-{self.index} is closed")


def replicated_batch_facts(
    headers: list[BatchHeader],
) -> tuple[list[tuple[int, int]], list[tuple[int, ...]]]:
    """From the headers of replicated batches (per batch): where each epoch newer than
    the batches before it starts, and the header fields (HEADER order) of the
    batches of idempotent producers.  Raises InvalidBatchError when a batch does not
    start where the one before it ends, or carries no leader epoch."""
    epoch_starts: list[tuple[int, int]] = []
    producer_fields: list[tuple[int, ...]] = []
    expected = headers[0].base_offset
    latest_epoch = -1
    for header in headers:
        if header.base_offset != expected or header.leader_epoch < 0:
            raise InvalidBatchError(
                f"replicated batch at {header.base_offset} (leader epoch "
                f"{header.leader_epoch}) does not follow offset {expected}"
            )
        if header.leader_epoch > latest_epoch:
            epoch_starts.append((header.leader_epoch, header.base_offset))
            latest_epoch = header.leader_epoch
        if header.producer_id >= 0:
            producer_fields.append(
                (
                    header.base_offset,
                    header.batch_bytes - LENGTH_PREFIX_BYTES,
                    header.leader_epoch,
                    MAGIC,
                    header.crc,
                    header.attributes,
                    header.last_offset_delta,
                    header.first_timestamp,
                    header.max_timestamp,
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence,
                    header.record_count,
                )
            )
        expected = header.next_offset
    return epoch_starts, producer_fields
