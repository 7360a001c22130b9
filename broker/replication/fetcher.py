"""A follower's fetcher: one task per leader broker pulls every partition this
broker follows there, the way a consumer fetches, and appends what it gets as it
is (offsets and leader epochs already stamped by the leader).

Each followed partition starts TRUNCATING (every new leadership, also of the
same leader in a new epoch): the fetcher asks the leader where this replica's
latest epoch ends (OffsetsForLeaderEpoch), truncates there
(:func:`truncation_point`, KIP-279: when the leader names an epoch this replica
lacks, truncate to the end of the largest one it has below and ask again), and
then it is FETCHING: every round sends one Fetch holding all its fetching
partitions (``replica_id`` this node, ``current_leader_epoch``,
``last_fetched_epoch``, ``max_wait_ms`` FETCH_MAX_WAIT_MS), appends each
partition's batches with ``Partition.append_replicated`` and sets the follower's
high watermark to min(leader HW, own log end).  An answer naming a diverging
epoch sends the partition back to truncation, with the answer as the leader's
reply.  A partition answered with an error the metadata will resolve (not
leader, fenced or unknown epoch) waits PARTITION_RETRY_S and is tried again
until the replica manager moves it.

The connection is opened from this broker's listen address (so a firewall rule
on that address cuts replication too); a lost connection or a failed request is
retried with a bounded exponential backoff, reading the leader's address from the
metadata again.  A change of the followed set cuts the wait for a fetch answer
short, so a new partition is not held behind a long poll.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import anyio
import trio

from broker.logging import get_logger
from broker.partition import Partition
from broker.replication.epochs import UNDEFINED_EPOCH, LeaderEpochCache
from client._io.connection import BrokerConnection, open_connection
from client.errors import DistributaryError, ErrorCode, ProtocolError, error_for_code
from client.protocol.messages import (
    FetchPartition,
    FetchRequest,
    FetchResponse,
    FetchTopic,
    HelloRequest,
    HelloResponse,
    OffsetForLeaderEpochPartition,
    OffsetForLeaderEpochTopic,
    OffsetsForLeaderEpochRequest,
    OffsetsForLeaderEpochResponse,
)

PartitionKey = tuple[str, int]

FETCH_MAX_WAIT_MS: Final = 500
FETCH_MIN_BYTES: Final = 1
PARTITION_FETCH_BYTES_MAX: Final = 1 << 20
FETCH_BYTES_MAX: Final = 16 << 20
CONNECT_TIMEOUT_MS: Final = 2_000
# A fetch answer is due after at most FETCH_MAX_WAIT_MS; this much more is slack.
REQUEST_TIMEOUT_MS: Final = 5_000
# Connection and request failures: exponential backoff between these bounds.
BACKOFF_MIN_S: Final = 0.05
BACKOFF_MAX_S: Final = 1.0
# A partition answered with an error that a metadata change resolves.
PARTITION_RETRY_S: Final = 0.2
# KIP-279 rounds of OffsetsForLeaderEpoch at most per truncation (each asks about
# a lower epoch than the one before, so the loop ends anyway).
TRUNCATION_ROUNDS_MAX: Final = 64
# The error codes that wait for the metadata to move the partition.
_WAIT_FOR_METADATA: Final = frozenset(
    {
        ErrorCode.NOT_LEADER,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.NOT_REPLICA,
    }
)

_logger = get_logger()


class Phase(enum.Enum):
    TRUNCATING = "truncating"
    FETCHING = "fetching"


@dataclass(eq=False)
class Followed:
    """One partition this broker follows, and where it stands."""

    key: PartitionKey
    partition: Partition
    leader_epoch: int
    phase: Phase = Phase.TRUNCATING
    # TRUNCATING: the epoch to ask the leader about (None: this replica's latest).
    ask_epoch: int | None = None
    truncation_rounds: int = 0
    # trio.current_time() before which the partition is not fetched.
    retry_at: float = 0.0
    errors: int = field(default=0)


def truncation_point(
    epochs: LeaderEpochCache, log_end_offset: int, leader_epoch: int, leader_end_offset: int
) -> tuple[int, int | None]:
    """Where to truncate after the leader said its log holds ``leader_epoch`` up to
    ``leader_end_offset`` (its answer to OffsetsForLeaderEpoch, or a fetch's
    diverging epoch): ``(offset, None)`` when that is the divergence point, or
    ``(offset, epoch)`` when this replica lacks ``leader_epoch`` -- truncate to the
    end of its largest epoch below and ask again about ``epoch`` (KIP-279).  The
    leader knowing no such epoch (UNDEFINED_EPOCH) keeps the log as it is."""
    if leader_epoch == UNDEFINED_EPOCH or leader_end_offset < 0:
        return log_end_offset, None
    local = epochs.end_offset_for(leader_epoch, log_end_offset)
    if local.epoch == UNDEFINED_EPOCH:
        # The leader's epoch is above every epoch here: the log as it is holds only
        # what the leader has.
        return min(leader_end_offset, log_end_offset), None
    if local.epoch == leader_epoch:
        return min(leader_end_offset, local.start_offset, log_end_offset), None
    return min(local.start_offset, log_end_offset), local.epoch


class LeaderFetcher:
    """Fetches from broker ``leader_id`` every partition followed there (module
    docstring).  :meth:`run` is the task; :meth:`follow` and :meth:`unfollow`
    change the set at any time."""

    def __init__(
        self,
        node_id: int,
        leader_id: int,
        address_of: Callable[[int], tuple[str, int] | None],
        local_host: str | None,
    ) -> None:
        self.node_id = node_id
        self.leader_id = leader_id
        self._address_of = address_of
        self._local_host = local_host
        self.followed: dict[PartitionKey, Followed] = {}
        self._changed = trio.Event()
        self._wait_scope: trio.CancelScope | None = None
        self._backoff_s = BACKOFF_MIN_S
        self.logger = get_logger(leader=leader_id)

    def follow(self, key: PartitionKey, partition: Partition, leader_epoch: int) -> None:
        """Follow ``partition`` in ``leader_epoch`` from now on: truncate first."""
        self.followed[key] = Followed(key, partition, leader_epoch)
        self._wake()

    def unfollow(self, key: PartitionKey) -> None:
        if self.followed.pop(key, None) is not None:
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def run(self) -> None:
        """Fetch until cancelled: connect, truncate what needs it, fetch; back off
        after each failure."""
        while True:  # one pass per connection, until cancelled
            if not self.followed:
                self._changed = trio.Event()
                await self._changed.wait()
                continue
            address = self._address_of(self.leader_id)
            if address is None:
                await self._back_off("leader not registered")
                continue
            failure: DistributaryError | None = None
            async with anyio.create_task_group() as connection_tasks:
                try:
                    connection = await self._connect(address, connection_tasks)
                    try:
                        await self._fetch_rounds(connection)
                    finally:
                        with trio.CancelScope(shield=True):
                            await connection.aclose()
                except DistributaryError as error:
                    failure = error
                connection_tasks.cancel_scope.cancel()
            if failure is not None:
                await self._back_off(failure.message)

    async def _connect(
        self, address: tuple[str, int], task_group: anyio.abc.TaskGroup
    ) -> BrokerConnection:
        """Raises BrokerUnavailableError, InvalidConfigError, ProtocolError."""
        host, port = address
        connection = await open_connection(
            host,
            port,
            task_group,
            connect_timeout_ms=CONNECT_TIMEOUT_MS,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
            local_host=self._local_host,
        )
        response = await connection.request(
            HelloRequest(f"replica-{self.node_id}", "distributary-broker", ""),
            timeout_ms=CONNECT_TIMEOUT_MS,
        )
        body = response.body
        assert isinstance(body, HelloResponse)
        if body.error_code:
            raise error_for_code(body.error_code, body.error_message)
        self.logger.info("replica fetcher connected", address=f"{host}:{port}")
        return connection

    async def _back_off(self, reason: str) -> None:
        self.logger.info("replica fetch failed; retrying", reason=reason, backoff_s=self._backoff_s)
        with trio.move_on_after(self._backoff_s):
            self._changed = trio.Event()
            await self._changed.wait()
        self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)

    async def _fetch_rounds(self, connection: BrokerConnection) -> None:
        """Rounds on one connection until it fails (raises DistributaryError) or
        nothing is followed any more."""
        while self.followed:
            self._changed = trio.Event()
            now = trio.current_time()
            truncating = [
                f
                for f in self.followed.values()
                if f.phase is Phase.TRUNCATING and f.retry_at <= now
            ]
            if truncating:
                await self._truncate(connection, truncating)
                continue
            fetching = [
                f for f in self.followed.values() if f.phase is Phase.FETCHING and f.retry_at <= now
            ]
            if not fetching:
                retry_at = min(f.retry_at for f in self.followed.values())
                with trio.move_on_at(retry_at):
                    await self._changed.wait()
                continue
            await self._fetch(connection, fetching)
            self._backoff_s = BACKOFF_MIN_S

    # -- truncation -------------------------------------------------------------------

    async def _truncate(self, connection: BrokerConnection, truncating: list[Followed]) -> None:
        """One OffsetsForLeaderEpoch for every truncating partition, then the
        truncations it calls for.  Raises DistributaryError (the connection)."""
        by_topic: dict[str, list[OffsetForLeaderEpochPartition]] = {}
        asked: dict[PartitionKey, Followed] = {}
        for followed in truncating:
            epochs = followed.partition.epochs
            epoch = followed.ask_epoch if followed.ask_epoch is not None else epochs.latest_epoch
            if epoch == UNDEFINED_EPOCH:
                # Nothing here carries an epoch: nothing to compare, fetch from the end.
                followed.phase = Phase.FETCHING
                continue
            by_topic.setdefault(followed.key[0], []).append(
                OffsetForLeaderEpochPartition(followed.key[1], epoch, followed.leader_epoch)
            )
            asked[followed.key] = followed
        if not asked:
            return
        request = OffsetsForLeaderEpochRequest(
            [OffsetForLeaderEpochTopic(name, wanted) for name, wanted in by_topic.items()],
            replica_id=self.node_id,
        )
        response = await connection.request(request, timeout_ms=REQUEST_TIMEOUT_MS)
        body = response.body
        if not isinstance(body, OffsetsForLeaderEpochResponse):
            raise ProtocolError(f"a replica fetch was answered with {type(body).__name__}")
        for topic in body.topics:
            for answer in topic.partitions:
                asker = asked.get((topic.name, answer.partition))
                if asker is None or self.followed.get(asker.key) is not asker:
                    continue  # moved while the request was out
                if answer.error_code:
                    self._partition_error(asker, answer.error_code, answer.error_message)
                    continue
                await self._truncate_to_divergence(asker, answer.leader_epoch, answer.end_offset)

    async def _truncate_to_divergence(
        self, followed: Followed, leader_epoch: int, leader_end_offset: int
    ) -> None:
        """Apply the leader's answer about ``leader_epoch`` (:func:`truncation_point`)."""
        partition = followed.partition
        offset, ask_again = truncation_point(
            partition.epochs, partition.log_end_offset, leader_epoch, leader_end_offset
        )
        if offset < partition.log_end_offset:
            await partition.truncate_to(max(offset, partition.log_start_offset))
        followed.truncation_rounds += 1
        if ask_again is not None and followed.truncation_rounds < TRUNCATION_ROUNDS_MAX:
            followed.phase = Phase.TRUNCATING
            followed.ask_epoch = ask_again
            return
        followed.phase = Phase.FETCHING
        followed.ask_epoch = None
        followed.truncation_rounds = 0
        partition.logger.info(
            "follower truncated to the leader's log",
            leader=self.leader_id,
            leader_epoch=followed.leader_epoch,
            log_end_offset=partition.log_end_offset,
        )

    # -- fetching ---------------------------------------------------------------------

    async def _fetch(self, connection: BrokerConnection, fetching: list[Followed]) -> None:
        """One Fetch for ``fetching``; appends what it brings.  Raises
        DistributaryError (the connection)."""
        by_topic: dict[str, list[FetchPartition]] = {}
        sent: dict[PartitionKey, tuple[Followed, int]] = {}
        for followed in fetching:
            partition = followed.partition
            fetch_offset = partition.log_end_offset
            by_topic.setdefault(followed.key[0], []).append(
                FetchPartition(
                    followed.key[1],
                    fetch_offset,
                    PARTITION_FETCH_BYTES_MAX,
                    current_leader_epoch=followed.leader_epoch,
                    last_fetched_epoch=partition.epochs.latest_epoch,
                )
            )
            sent[followed.key] = (followed, fetch_offset)
        request = FetchRequest(
            max_wait_ms=FETCH_MAX_WAIT_MS,
            min_bytes=FETCH_MIN_BYTES,
            max_bytes=FETCH_BYTES_MAX,
            topics=[FetchTopic(name, wanted) for name, wanted in by_topic.items()],
            replica_id=self.node_id,
        )
        pending = await connection.send(request, timeout_ms=FETCH_MAX_WAIT_MS + REQUEST_TIMEOUT_MS)
        assert pending is not None
        with trio.CancelScope() as scope:
            self._wait_scope = scope
            try:
                response = await connection.wait(pending)
            finally:
                self._wait_scope = None
        if scope.cancelled_caught:
            return  # the followed set changed: the answer is dropped, fetch again
        body = response.body
        if not isinstance(body, FetchResponse):
            raise ProtocolError(f"a replica fetch was answered with {type(body).__name__}")
        payload = response.payload
        position = 0
        for topic in body.topics:
            for answer in topic.partitions:
                start = position
                position += answer.records_bytes
                found = sent.get((topic.name, answer.partition))
                if found is None:
                    continue
                followed, fetch_offset = found
                partition = followed.partition
                if (
                    self.followed.get(followed.key) is not followed
                    or followed.phase is not Phase.FETCHING
                    or partition.log_end_offset != fetch_offset
                ):
                    continue  # moved or truncated while the fetch was out
                if answer.error_code:
                    self._partition_error(followed, answer.error_code, answer.error_message)
                    continue
                if answer.diverging_epoch >= 0 or answer.diverging_end_offset >= 0:
                    await self._truncate_to_divergence(
                        followed, answer.diverging_epoch, answer.diverging_end_offset
                    )
                    continue
                if answer.records_bytes:
                    try:
                        await partition.append_replicated(payload[start:position])
                    except DistributaryError as error:
                        # Not where this log ends, or refused by the disk: start over
                        # from the divergence check.
                        followed.phase = Phase.TRUNCATING
                        self._partition_error(followed, int(error.code), error.message)
                        continue
                followed.errors = 0
                if answer.high_watermark >= 0:
                    partition.set_follower_high_watermark(
                        min(answer.high_watermark, partition.log_end_offset)
                    )

    def _partition_error(self, followed: Followed, code: int, message: str) -> None:
        """Wait PARTITION_RETRY_S (the metadata may move it meanwhile); an offset
        past the leader's end sends it back to truncation."""
        followed.errors += 1
        followed.retry_at = trio.current_time() + PARTITION_RETRY_S
        if code == ErrorCode.OFFSET_OUT_OF_RANGE:
            followed.phase = Phase.TRUNCATING
            followed.ask_epoch = None
        log = (
            _logger.debug
            if code in _WAIT_FOR_METADATA and followed.errors < 10
            else _logger.warning
        )
        log(
            "replica fetch refused",
            topic=followed.key[0],
            partition=followed.key[1],
            leader=self.leader_id,
            error=ErrorCode(code).name if code in ErrorCode._value2member_map_ else code,
            message=message,
        )
