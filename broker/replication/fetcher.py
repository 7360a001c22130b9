"""A follower's fetcher: one task per leader broker pulls every partition this
broker follows there, the way a consumer fetches, and appends what it gets as it
is (offsets and leader epochs already stamped by the leader).

Each followed partition has a FollowerState (broker/replication/follower_state.py)
that decides what to send and what an answer means; this shell does the I/O.  A
partition starts truncating (every new leadership, also of the same leader in a
new epoch): the fetcher asks the leader where this replica's last epoch ends
(OffsetsForLeaderEpoch, one request for every partition that asks) and
truncates as told, asking again while the state says so (KIP-279).  Then each
round sends one Fetch holding all its fetching partitions (``replica_id`` this
node, ``replica_epoch`` its registration's revision, ``current_leader_epoch``,
``last_fetched_epoch``, ``max_wait_ms`` FETCH_MAX_WAIT_MS), appends each partition's batches with
``Partition.append_replicated`` and sets the follower's high watermark.  An
answer naming a diverging epoch truncates the same way.  A partition answered
with an error the metadata will resolve (not leader, fenced or unknown epoch)
waits PARTITION_RETRY_S and is tried again until the replica manager moves it.

The connection is opened from this broker's listen address (so a firewall rule
on that address cuts replication too); a lost connection or a failed request is
retried with a bounded exponential backoff, reading the leader's address from the
metadata again.  A change of the followed set cuts the wait for a fetch answer
short, so a new partition is not held behind a long poll.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import anyio
import trio

from broker.logging import get_logger
from broker.partition import Partition
from broker.replication.follower_state import (
    AskLeaderEpoch,
    FetchFrom,
    FollowerPhase,
    FollowerState,
    FollowerStep,
)
from client._io.connection import BrokerConnection, open_connection
from client.errors import DistributaryError, ErrorCode, ProtocolError, error_for_code
from client.protocol.messages import (
    FetchPartition,
    FetchPartitionResponse,
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
# Refusals the metadata resolves are logged at debug this many times in a row,
# then as warnings.
ERRORS_LOGGED_QUIETLY: Final = 10
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


@dataclass(eq=False)
class Followed:
    """One partition this broker follows, and where it stands."""

    key: PartitionKey
    partition: Partition
    state: FollowerState
    # trio.current_time() before which the partition is not asked about again.
    retry_at: float = 0.0
    errors: int = field(default=0)


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
        own_broker_epoch: Callable[[], int] = lambda: -1,
    ) -> None:
        self.node_id = node_id
        self.leader_id = leader_id
        self._address_of = address_of
        self._own_broker_epoch = own_broker_epoch
        self._local_host = local_host
        self.followed: dict[PartitionKey, Followed] = {}
        self._changed = trio.Event()
        self._wait_scope: trio.CancelScope | None = None
        self._backoff_s = BACKOFF_MIN_S
        self.logger = get_logger(leader=leader_id)

    def follow(self, key: PartitionKey, partition: Partition, leader_epoch: int) -> None:
        """Follow ``partition`` in ``leader_epoch`` from now on: truncate first."""
        state = FollowerState(
            leader_id=self.leader_id, leader_epoch=leader_epoch, epochs=partition.epochs
        )
        self.followed[key] = Followed(key, partition, state)
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
            asks: list[tuple[Followed, AskLeaderEpoch]] = []
            fetches: list[tuple[Followed, FetchFrom]] = []
            for followed in self.followed.values():
                if followed.retry_at > now:
                    continue
                wanted = followed.state.next_request(followed.partition.log_end_offset)
                if isinstance(wanted, AskLeaderEpoch):
                    asks.append((followed, wanted))
                else:
                    fetches.append((followed, wanted))
            if asks:
                await self._truncate(connection, asks)
            elif fetches:
                await self._fetch(connection, fetches)
                self._backoff_s = BACKOFF_MIN_S
            else:
                retry_at = min(f.retry_at for f in self.followed.values())
                with trio.move_on_at(retry_at):
                    await self._changed.wait()

    # -- truncation -------------------------------------------------------------------

    async def _truncate(
        self, connection: BrokerConnection, asks: list[tuple[Followed, AskLeaderEpoch]]
    ) -> None:
        """One OffsetsForLeaderEpoch for every partition that asks, then the
        truncations the answers call for.  Raises DistributaryError (the
        connection)."""
        by_topic: dict[str, list[OffsetForLeaderEpochPartition]] = {}
        asked: dict[PartitionKey, Followed] = {}
        for followed, ask in asks:
            by_topic.setdefault(followed.key[0], []).append(
                OffsetForLeaderEpochPartition(
                    followed.key[1], ask.leader_epoch, ask.current_leader_epoch
                )
            )
            asked[followed.key] = followed
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
                partition = asker.partition
                step = asker.state.on_leader_epoch_answer(
                    answer.leader_epoch,
                    answer.end_offset,
                    partition.log_end_offset,
                    partition.high_watermark,
                )
                await self._take_step(asker, step)

    async def _take_step(self, followed: Followed, step: FollowerStep) -> None:
        """Do what the follower state asked.  A storage failure puts the partition
        back to truncation after PARTITION_RETRY_S."""
        partition = followed.partition
        try:
            if step.truncate_to is not None:
                # Also at the log end: it drops epoch entries starting there.
                end_before = partition.log_end_offset
                await partition.truncate_to(max(step.truncate_to, partition.log_start_offset))
                if partition.log_end_offset < end_before:
                    partition.logger.info(
                        "follower truncated to the leader's log",
                        leader=self.leader_id,
                        leader_epoch=followed.state.leader_epoch,
                        log_end_offset=partition.log_end_offset,
                    )
            if step.restart_at is not None:
                # The leader's log starts past this one's end (retention ran ahead).
                await partition.truncate_fully_and_start_at(step.restart_at)
                partition.logger.info(
                    "follower log restarted at the leader's log start",
                    leader=self.leader_id,
                    log_start_offset=step.restart_at,
                )
        except DistributaryError as error:
            followed.state.phase = FollowerPhase.TRUNCATING
            self._partition_error(followed, int(error.code), error.message)
            return
        if step.high_watermark is not None:
            partition.set_follower_high_watermark(
                min(step.high_watermark, partition.log_end_offset)
            )

    # -- fetching ---------------------------------------------------------------------

    async def _fetch(
        self, connection: BrokerConnection, fetches: list[tuple[Followed, FetchFrom]]
    ) -> None:
        """One Fetch for ``fetches``; appends what it brings.  Raises
        DistributaryError (the connection)."""
        by_topic: dict[str, list[FetchPartition]] = {}
        sent: dict[PartitionKey, tuple[Followed, int]] = {}
        for followed, wanted in fetches:
            by_topic.setdefault(followed.key[0], []).append(
                FetchPartition(
                    followed.key[1],
                    wanted.fetch_offset,
                    PARTITION_FETCH_BYTES_MAX,
                    current_leader_epoch=wanted.current_leader_epoch,
                    last_fetched_epoch=wanted.last_fetched_epoch,
                )
            )
            sent[followed.key] = (followed, wanted.fetch_offset)
        request = FetchRequest(
            max_wait_ms=FETCH_MAX_WAIT_MS,
            min_bytes=FETCH_MIN_BYTES,
            max_bytes=FETCH_BYTES_MAX,
            topics=[FetchTopic(name, wanted) for name, wanted in by_topic.items()],
            replica_id=self.node_id,
            replica_epoch=self._own_broker_epoch(),
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
                if (
                    self.followed.get(followed.key) is not followed
                    or followed.partition.log_end_offset != fetch_offset
                ):
                    continue  # moved or truncated while the fetch was out
                await self._fetched(followed, answer, payload[start:position])

    async def _fetched(
        self, followed: Followed, answer: FetchPartitionResponse, records: memoryview
    ) -> None:
        """One partition's fetch answer (a storage failure sends it back to truncation)."""
        partition = followed.partition
        state = followed.state
        if answer.error_code == ErrorCode.OFFSET_OUT_OF_RANGE:
            step = state.on_offset_out_of_range(
                answer.log_start_offset, answer.high_watermark, partition.log_end_offset
            )
            await self._take_step(followed, step)
            self._partition_error(followed, answer.error_code, answer.error_message)
            return
        if answer.error_code:
            self._partition_error(followed, answer.error_code, answer.error_message)
            return
        if answer.diverging_epoch >= 0 or answer.diverging_end_offset >= 0:
            step = state.on_diverging_epoch(
                answer.diverging_epoch,
                answer.diverging_end_offset,
                partition.log_end_offset,
                partition.high_watermark,
            )
            await self._take_step(followed, step)
            return
        if records:
            try:
                await partition.append_replicated(records)
            except DistributaryError as error:
                # Not where this log ends, or refused by the disk: start over from
                # the divergence check.
                state.phase = FollowerPhase.TRUNCATING
                self._partition_error(followed, int(error.code), error.message)
                return
        followed.errors = 0
        if answer.high_watermark >= 0:
            await self._take_step(
                followed, state.on_fetch_answer(answer.high_watermark, partition.log_end_offset)
            )

    def _partition_error(self, followed: Followed, code: int, message: str) -> None:
        """Wait PARTITION_RETRY_S before asking about it again (the metadata may move
        it meanwhile)."""
        followed.errors += 1
        followed.retry_at = trio.current_time() + PARTITION_RETRY_S
        quiet = code in _WAIT_FOR_METADATA and followed.errors < ERRORS_LOGGED_QUIETLY
        (_logger.debug if quiet else _logger.warning)(
            "replica fetch refused",
            topic=followed.key[0],
            partition=followed.key[1],
            leader=self.leader_id,
            error=_code_name(code),
            message=message,
        )


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)
