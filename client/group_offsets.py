"""Committing and fetching a group's offsets, retried as Kafka's consumer retries them.

:func:`commit_offsets` (OffsetCommit) and :func:`fetch_committed` (OffsetFetch)
send one request to the group's coordinator and sort what goes wrong, whether
it is raised on the way (connection lost, no answer in time) or answered in the
response body (for the whole request or per partition):

* **The coordinator moved or is unreachable** (``COORDINATOR_NOT_AVAILABLE``,
  the broker unreachable, the connection lost, no answer in time): the cached
  coordinator is forgotten, so the next attempt asks FindCoordinator again, and
  the request is retried after a backoff.
* **A transient refusal** (``REQUEST_TIMED_OUT``: the commit was not replicated
  in time; ``NOT_ENOUGH_REPLICAS`` / ``NOT_ENOUGH_REPLICAS_AFTER_APPEND``: too
  few in-sync replicas of ``__consumer_offsets``; ``TOO_MANY_REQUESTS``):
  retried after a backoff.  Only the partitions that failed are sent again.
* **The member lost its place** (``UNKNOWN_MEMBER``, ``FENCED_MEMBER_EPOCH``,
  ``REBALANCE_IN_PROGRESS``: Kafka's CommitFailedException cases): raised at
  once (:data:`COMMIT_REFUSED_ERRORS`); the member must rejoin, and its
  partitions may be someone else's already.
* **Anything else** (``GROUP_NOT_EMPTY``, ``INVALID_REQUEST``,
  ``UNKNOWN_TOPIC_OR_PARTITION`` for a partition the coordinator does not know):
  raised at once as its typed error.

Retries back off exponentially (``RETRY_BACKOFF_MS`` doubling up to
``RETRY_BACKOFF_MAX_MS``, with jitter) and stop at whichever comes first of
``attempts_max`` attempts and ``timeout_ms`` after the call; then the last
error is raised.  A committed offset of -1 in an OffsetFetch answer means the
partition has no commit: it is left out of the result, and only then does a
consumer start it by ``auto_offset_reset``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import anyio

from client._io.cluster import Cluster, backoff_ms
from client._logging import get_logger
from client.errors import (
    BrokerUnavailableError,
    ConnectionClosedError,
    CoordinatorNotAvailableError,
    DistributaryError,
    FencedMemberEpochError,
    RebalanceInProgressError,
    RequestTimedOutError,
    UnknownMemberError,
    UnknownTopicOrPartitionError,
    error_for_code,
)
from client.protocol.messages import (
    ADMIN_COMMIT_EPOCH,
    OffsetCommitPartition,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetCommitTopic,
    OffsetFetchRequest,
    OffsetFetchResponse,
    OffsetFetchTopic,
)
from client.types import TopicPartition

log = get_logger("client.group_offsets")

RETRY_BACKOFF_MS: Final = 100
RETRY_BACKOFF_MAX_MS: Final = 1_000
# A coordinator failover (lease expiry plus an election) takes a few seconds;
# Kafka's commitSync waits up to default.api.timeout.ms (60 s) for it.
GROUP_OFFSETS_TIMEOUT_MS_DEFAULT: Final = 30_000
# With the backoff capped at 1 s, the default timeout allows about 30 attempts.
GROUP_OFFSETS_ATTEMPTS_MAX_DEFAULT: Final = 50

# The member was expelled, fenced or is mid-rebalance: its commit is refused for
# good (Kafka's CommitFailedException), never retried.
COMMIT_REFUSED_ERRORS: Final = (
    UnknownMemberError,
    FencedMemberEpochError,
    RebalanceInProgressError,
)
# The coordinator moved or cannot be reached: look it up again before retrying.
_COORDINATOR_LOST_ERRORS: Final = (
    CoordinatorNotAvailableError,
    BrokerUnavailableError,
    ConnectionClosedError,
    RequestTimedOutError,
)


def should_retry(error: DistributaryError) -> bool:
    """Whether a commit or offset fetch that failed with ``error`` is tried again
    (see the module docstring)."""
    if isinstance(error, (*COMMIT_REFUSED_ERRORS, UnknownTopicOrPartitionError)):
        return False
    return error.retriable


class _Retries:
    """The bound and the backoff of one call's attempts, and whether an earlier
    attempt may have been written (it reached the coordinator and failed)."""

    def __init__(
        self, cluster: Cluster, group_id: str, what: str, *, timeout_ms: int, attempts_max: int
    ) -> None:
        assert timeout_ms > 0 and attempts_max >= 1, (timeout_ms, attempts_max)
        self.cluster = cluster
        self.group_id = group_id
        self.what = what
        self.attempts_max = attempts_max
        self.deadline_s = anyio.current_time() + timeout_ms / 1000
        # Whether the current attempt's request went out on a connection.
        self.sent = False
        # The first retried error of an attempt whose request went out.
        self.maybe_written: DistributaryError | None = None

    def left_s(self) -> float:
        return self.deadline_s - anyio.current_time()

    async def request(self, request: OffsetCommitRequest | OffsetFetchRequest) -> object:
        """One attempt at the coordinator (looked up if not cached), cut at the
        deadline.  Raises the typed error of a failed request (BrokerUnavailableError,
        ConnectionClosedError, RequestTimedOutError, CoordinatorNotAvailableError
        from FindCoordinator)."""
        self.sent = False
        with anyio.move_on_after(max(0.0, self.left_s())):
            address = await self.cluster.coordinator_address(self.group_id)
            connection = await self.cluster.connection_to(address)
            self.sent = True
            response = await connection.request(request)
            return response.body
        raise RequestTimedOutError(f"{self.what} for group {self.group_id!r}: no answer in time")

    async def after_failure(self, attempt: int, error: DistributaryError) -> None:
        """Back off before attempt ``attempt + 1``; raises ``error`` when it must not
        be retried (with the first failure of an attempt that may have been written
        as its ``__cause__``), or the attempts or the time are used up."""
        if isinstance(error, _COORDINATOR_LOST_ERRORS):
            self.cluster.forget_coordinator(self.group_id)
        if not should_retry(error):
            if self.maybe_written is not None:
                raise error from self.maybe_written
            raise error
        if self.sent and self.maybe_written is None:
            self.maybe_written = error
        delay_ms = backoff_ms(attempt, RETRY_BACKOFF_MS, RETRY_BACKOFF_MAX_MS, self.cluster.random)
        if attempt + 1 >= self.attempts_max or self.left_s() * 1000 <= delay_ms:
            raise type(error)(
                f"{self.what} for group {self.group_id!r} still failing after "
                f"{attempt + 1} attempts: {error.message}"
            ) from error
        log.info(
            "retrying", what=self.what, group=self.group_id, attempt=attempt, error=error.message
        )
        await anyio.sleep(delay_ms / 1000)


async def commit_offsets(
    cluster: Cluster,
    group_id: str,
    offsets: Mapping[TopicPartition, int],
    *,
    member_id: str = "",
    member_epoch: int = ADMIN_COMMIT_EPOCH,
    metadata: str = "",
    attempts_max: int = GROUP_OFFSETS_ATTEMPTS_MAX_DEFAULT,
    timeout_ms: int = GROUP_OFFSETS_TIMEOUT_MS_DEFAULT,
) -> None:
    """OffsetCommit, retried as the module docstring says.  Raises at once
    UnknownMemberError, FencedMemberEpochError, RebalanceInProgressError (the
    member must rejoin), GroupNotEmptyError, a partition's non-retriable error
    (e.g. UnknownTopicOrPartitionError); after the retries, the last retriable
    error (e.g. CoordinatorNotAvailableError, NotEnoughReplicasError).

    A refusal raised after an earlier attempt reached the coordinator and failed
    has that failure as its ``__cause__``: the earlier attempt's record may still
    take effect (docs/replication.md), so the commit is not certainly refused."""
    retries = _Retries(
        cluster, group_id, "offset commit", timeout_ms=timeout_ms, attempts_max=attempts_max
    )
    left = dict(offsets)
    for attempt in range(attempts_max):
        if not left:
            return
        try:
            left, error = await _commit_once(retries, member_id, member_epoch, metadata, left)
        except DistributaryError as raised:
            error = raised
        if error is not None:
            await retries.after_failure(attempt, error)
    assert not left, "after_failure raises after the last attempt"


async def _commit_once(
    retries: _Retries,
    member_id: str,
    member_epoch: int,
    metadata: str,
    offsets: Mapping[TopicPartition, int],
) -> tuple[dict[TopicPartition, int], DistributaryError | None]:
    """One OffsetCommit.  Returns the offsets to send again and the first of their
    partitions' errors (all retried ones; None: everything was committed).
    Raises the whole request's error, or a partition's error that is not retried."""
    by_topic: dict[str, list[OffsetCommitPartition]] = {}
    for tp, offset in sorted(offsets.items()):
        by_topic.setdefault(tp.topic, []).append(
            OffsetCommitPartition(tp.partition, offset, metadata=metadata)
        )
    request = OffsetCommitRequest(
        retries.group_id,
        member_id,
        member_epoch,
        [OffsetCommitTopic(name, parts) for name, parts in by_topic.items()],
    )
    body = await retries.request(request)
    assert isinstance(body, OffsetCommitResponse)
    if body.error_code:
        raise error_for_code(body.error_code, body.error_message)
    again: dict[TopicPartition, int] = {}
    first_error: DistributaryError | None = None
    for topic in body.topics:
        for part in topic.partitions:
            if not part.error_code:
                continue
            tp = TopicPartition(topic.name, part.partition)
            error = error_for_code(part.error_code, f"{tp}: {part.error_message}")
            if not should_retry(error):
                raise error
            first_error = first_error or error
            if tp in offsets:
                again[tp] = offsets[tp]
    return again, first_error


async def fetch_committed(
    cluster: Cluster,
    group_id: str,
    partitions: Iterable[TopicPartition] | None,
    *,
    attempts_max: int = GROUP_OFFSETS_ATTEMPTS_MAX_DEFAULT,
    timeout_ms: int = GROUP_OFFSETS_TIMEOUT_MS_DEFAULT,
) -> dict[TopicPartition, int]:
    """Committed offsets (None: all of the group's), retried as the module
    docstring says; partitions without a commit (offset -1) are left out.
    Raises a non-retriable error at once; after the retries, the last retriable
    one (e.g. CoordinatorNotAvailableError, RequestTimedOutError)."""
    retries = _Retries(
        cluster, group_id, "offset fetch", timeout_ms=timeout_ms, attempts_max=attempts_max
    )
    wanted = None if partitions is None else sorted(set(partitions))
    committed: dict[TopicPartition, int] = {}
    for attempt in range(attempts_max):
        error: DistributaryError | None
        try:
            again, error = await _fetch_once(retries, wanted, committed)
        except DistributaryError as raised:
            error = raised
        else:
            wanted = again
        if error is None:
            return committed
        await retries.after_failure(attempt, error)
    raise AssertionError("after_failure raises after the last attempt")


async def _fetch_once(
    retries: _Retries,
    wanted: list[TopicPartition] | None,
    committed: dict[TopicPartition, int],
) -> tuple[list[TopicPartition], DistributaryError | None]:
    """One OffsetFetch of ``wanted`` (None: every partition); adds the answered
    commits to ``committed``.  Returns the partitions to ask again and the first
    of their errors (all retried ones; None: every partition was answered).
    Raises the whole request's error, or a partition's error that is not retried."""
    topics: list[OffsetFetchTopic] | None = None
    if wanted is not None:
        by_topic: dict[str, list[int]] = {}
        for tp in wanted:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        topics = [OffsetFetchTopic(name, numbers) for name, numbers in by_topic.items()]
    body = await retries.request(OffsetFetchRequest(retries.group_id, topics))
    assert isinstance(body, OffsetFetchResponse)
    if body.error_code:
        raise error_for_code(body.error_code, body.error_message)
    again: list[TopicPartition] = []
    first_error: DistributaryError | None = None
    for topic in body.topics:
        for part in topic.partitions:
            tp = TopicPartition(topic.name, part.partition)
            if part.error_code:
                error = error_for_code(part.error_code, f"{tp}: {part.error_message}")
                if not should_retry(error):
                    raise error
                first_error = first_error or error
                again.append(tp)
            elif part.offset >= 0:
                committed[tp] = part.offset
    return again, first_error
