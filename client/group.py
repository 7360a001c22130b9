"""Consumer-group membership for the async Consumer: heartbeats, assignment, commits.

The broker assigns partitions (KIP-848, docs/groups.md); a member only
reconciles.  :class:`GroupMembership` runs in the consumer's task group:

* **Heartbeat loop**: every ``heartbeat_interval_ms`` (the broker says how
  often) it sends the member id, epoch, subscription and the partitions it
  owns.  New partitions in the answer are added at once: their committed
  offsets are fetched (``auto_offset_reset`` only where there is none; an
  error is retried, and partitions whose offsets could not be fetched are
  left for the next answer, never started elsewhere) and ``on_assign`` is
  called.  Partitions missing from the answer must be
  released: see revocation below.  UNKNOWN_MEMBER / FENCED_MEMBER_EPOCH mean
  the broker gave our partitions away: they are dropped without a commit
  (``on_lost``, by default ``on_revoke``) and the member rejoins.  If no
  heartbeat gets through for a whole session timeout, the same happens.
* **Revocation** happens only at a point where every record handed to the
  application has been processed: when the application next asks for records
  (``getmany`` / the next iteration), or at once if it is already waiting in
  one.  Then the partitions stop being fetched, their positions are committed
  (with auto-commit), ``on_revoke`` runs, and a heartbeat reports them
  released right away.  This is what makes a clean rebalance deliver every
  record exactly once: the new owner starts where the old one stopped.
* **Auto-commit** (``enable_auto_commit``, every ``auto_commit_interval_ms``)
  commits the positions as of the application's last ``getmany`` / iteration
  step, i.e. only records it has finished with, so a crash re-delivers but
  never skips.  Until the first of these commits after an assignment has
  committed something, it runs every ``FIRST_AUTO_COMMIT_MS`` (when that is
  shorter): a member killed a few seconds after its first records re-delivers
  about the last second of them, not all.  Commits are serialised (one in
  flight), so an older commit never lands after a newer one.
* **Leaving** (``close``): commit (with auto-commit), ``on_revoke``, then a
  leave heartbeat (epoch -1; -2 for a static member, which keeps its
  partitions for a restart within its session timeout).

Callbacks may be plain functions or coroutines; they run in the consumer's
background task or inside ``getmany`` and must not call ``getmany`` themselves.

The membership sees its consumer only through :class:`GroupMember` (the
partitions it fetches and the positions it has handed out), and sends every
request to the group's coordinator (``Cluster.request_coordinator``).
Commits and offset fetches retry as client/group_offsets.py says (which also
holds :func:`commit_offsets` and :func:`fetch_committed`, imported from here too).
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import anyio

from client._io.cluster import Cluster, backoff_ms
from client._logging import get_logger
from client.errors import (
    DistributaryError,
    FencedMemberEpochError,
    UnknownMemberError,
    error_for_code,
)
from client.group_offsets import commit_offsets, fetch_committed, should_retry
from client.protocol.messages import (
    ADMIN_COMMIT_EPOCH,
    JOIN_GROUP_EPOCH,
    LEAVE_GROUP_EPOCH,
    STATIC_LEAVE_GROUP_EPOCH,
    ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
    GroupTopicPartitions,
)
from client.types import TopicPartition

__all__ = [
    "GroupMember",
    "GroupMembership",
    "GroupOptions",
    "PartitionsCallback",
    "commit_offsets",
    "fetch_committed",
    "from_wire",
    "to_wire",
]

log = get_logger("client.group")

PartitionsCallback = Callable[[set[TopicPartition]], Awaitable[None] | None]
RETRY_BACKOFF_MS: Final = 100
RETRY_BACKOFF_MAX_MS: Final = 1_000
# Until the broker says otherwise (its first answer carries the real values).
HEARTBEAT_INTERVAL_MS_DEFAULT: Final = 1_000
SESSION_TIMEOUT_MS_DEFAULT: Final = 10_000
# Auto-commit runs at least this often until it first commits something after an
# assignment (see the module docstring).
FIRST_AUTO_COMMIT_MS: Final = 1_000
# close() waits at most this long for the final commit and the leave heartbeat.
LEAVE_TIMEOUT_MS: Final = 5_000


class GroupMember(Protocol):
    """What a group membership needs from its consumer."""

    @property
    def client_id(self) -> str: ...

    @property
    def request_timeout_ms(self) -> int: ...

    @property
    def reconnect_attempts_max(self) -> int: ...

    @property
    def busy(self) -> bool:
        """True from handing records out until the application asks for more (it
        may be processing them, so a revocation waits)."""
        ...

    def report_error(self, error: BaseException) -> None:
        """Hand an error to the application's next getmany / iteration."""

    async def add_partitions(self, partitions: Mapping[TopicPartition, int | None]) -> None:
        """Start fetching newly assigned partitions from these committed offsets
        (None: by ``auto_offset_reset``)."""

    def freeze_partitions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Stop handing out partitions being released; the processed positions to
        commit."""
        ...

    def remove_partitions(self, partitions: Collection[TopicPartition]) -> None:
        """Stop fetching these partitions and forget them."""

    def processed_positions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The positions as of the application's last getmany / iteration step."""
        ...

    def current_positions(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The position of each partition (everything handed out counts as processed)."""
        ...


@dataclass(frozen=True)
class GroupOptions:
    group_id: str
    instance_id: str | None = None
    session_timeout_ms: int | None = None  # None: the broker's default
    heartbeat_interval_ms: int | None = None
    rebalance_timeout_ms: int | None = None
    assignor: str | None = None  # "range" | "sticky"; None: the broker's default
    enable_auto_commit: bool = True
    auto_commit_interval_ms: int = 5_000
    on_assign: PartitionsCallback | None = None
    on_revoke: PartitionsCallback | None = None
    on_lost: PartitionsCallback | None = None


def to_wire(partitions: Iterable[TopicPartition]) -> list[GroupTopicPartitions]:
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(partitions):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return [GroupTopicPartitions(topic, numbers) for topic, numbers in by_topic.items()]


def from_wire(partitions: Iterable[GroupTopicPartitions]) -> set[TopicPartition]:
    return {TopicPartition(item.topic, number) for item in partitions for number in item.partitions}


class GroupMembership:
    """One consumer's membership of one group (see the module docstring)."""

    def __init__(
        self, consumer: GroupMember, cluster: Cluster, options: GroupOptions, rng: random.Random
    ) -> None:
        self.consumer = consumer
        self.cluster = cluster
        self.options = options
        self.group_id = options.group_id
        self._random = rng
        self.member_id = ""
        self.member_epoch = JOIN_GROUP_EPOCH
        self.heartbeat_interval_ms = options.heartbeat_interval_ms or HEARTBEAT_INTERVAL_MS_DEFAULT
        self.session_timeout_ms = options.session_timeout_ms or SESSION_TIMEOUT_MS_DEFAULT
        self.topic_names: list[str] = []
        self.pattern: str | None = None
        self.owned: set[TopicPartition] = set()
        self.revoking: set[TopicPartition] = set()  # told to release, not released yet
        self._wake = anyio.Event()
        self._commit_wake = anyio.Event()  # set once, by leave()
        self._commit_lock = anyio.Lock()
        self._revocation_lock = anyio.Lock()
        self._last_committed: dict[TopicPartition, int] = {}
        # True until an auto-commit commits something after the last assignment.
        self._auto_commit_soon = True
        self._scopes: list[anyio.CancelScope] = []
        self._loops_done: list[anyio.Event] = []
        self._running = False
        self._stopped = False
        # Set after each answer: tests and tools wait on "an assignment arrived".
        self.assignment_changed = anyio.Event()

    @property
    def running(self) -> bool:
        """True once :meth:`run` started."""
        return self._running

    # -- subscription -------------------------------------------------------------------

    def subscribe(self, topics: Iterable[str], pattern: str | None) -> None:
        self.topic_names = sorted(set(topics))
        self.pattern = pattern
        self._wake.set()

    # -- the heartbeat loop -------------------------------------------------------------

    async def run(self) -> None:
        """Heartbeat until stopped (runs in the consumer's task group)."""
        if self._running:
            return
        self._running = True
        done = anyio.Event()
        self._loops_done.append(done)
        try:
            with self._scope():
                await self._heartbeat_loop()
        finally:
            done.set()

    def _scope(self) -> anyio.CancelScope:
        """A scope for one background loop; the loop sets its event when it ends, so
        leave() can let it finish its request instead of cutting it half-way."""
        scope = anyio.CancelScope()
        self._scopes.append(scope)
        return scope

    async def _heartbeat_loop(self) -> None:
        failures = 0
        last_success = time.monotonic()
        while not self._stopped:
            try:
                with anyio.fail_after(self._request_timeout_s()):
                    response = await self._send_heartbeat(self.member_epoch)
            except (DistributaryError, TimeoutError) as error:
                if isinstance(error, DistributaryError) and not error.retriable:
                    self.consumer.report_error(error)
                    return
                failures += 1
                log.info("heartbeat failed", group=self.group_id, error=str(error))
                if time.monotonic() - last_success > self.session_timeout_ms / 1000:
                    # The broker has surely expelled us: our partitions are others' now.
                    await self._lose_all("session timed out without a heartbeat")
                    self.member_id, self.member_epoch = "", JOIN_GROUP_EPOCH
                await self._sleep_ms(
                    backoff_ms(failures, RETRY_BACKOFF_MS, RETRY_BACKOFF_MAX_MS, self._random)
                )
                continue
            last_success = time.monotonic()
            failures = 0
            if response.error_code:
                if not await self._handle_error(response):
                    return
                continue
            released = await self._apply(response)
            if not released:
                await self._sleep_ms(self.heartbeat_interval_ms)

    def _request_timeout_s(self) -> float:
        return min(self.consumer.request_timeout_ms, self.session_timeout_ms) / 1000

    async def _sleep_ms(self, delay_ms: float, wake: anyio.Event | None = None) -> None:
        event = self._wake if wake is None else wake
        with anyio.move_on_after(delay_ms / 1000):
            await event.wait()
        if wake is None:
            self._wake = anyio.Event()

    async def _send_heartbeat(self, epoch: int) -> ConsumerGroupHeartbeatResponse:
        options = self.options
        request = ConsumerGroupHeartbeatRequest(
            group_id=self.group_id,
            member_id=self.member_id,
            member_epoch=epoch,
            instance_id=options.instance_id,
            rebalance_timeout_ms=options.rebalance_timeout_ms or -1,
            subscribed_topic_names=self.topic_names,
            subscribed_topic_regex=self.pattern or "",
            server_assignor=options.assignor,
            owned_partitions=to_wire(self.owned),
            session_timeout_ms=options.session_timeout_ms or -1,
            heartbeat_interval_ms=options.heartbeat_interval_ms or -1,
            client_id=self.consumer.client_id,
        )
        body = await self.cluster.request_coordinator(self.group_id, request)
        assert isinstance(body, ConsumerGroupHeartbeatResponse)
        return body

    async def _handle_error(self, response: ConsumerGroupHeartbeatResponse) -> bool:
        """React to a heartbeat error; False when the loop must stop."""
        error = error_for_code(response.error_code, response.error_message)
        if isinstance(error, UnknownMemberError | FencedMemberEpochError):
            log.info("member fenced, rejoining", group=self.group_id, error=error.message)
            await self._lose_all(error.message)
            if isinstance(error, UnknownMemberError):
                self.member_id = ""
            self.member_epoch = JOIN_GROUP_EPOCH
            return True
        if error.retriable:
            await self._sleep_ms(RETRY_BACKOFF_MAX_MS)
            return True
        self.consumer.report_error(error)
        return False

    async def _apply(self, response: ConsumerGroupHeartbeatResponse) -> bool:
        """Adopt an answer; True if partitions were just released (heartbeat at once)."""
        self.member_id = response.member_id
        self.member_epoch = response.member_epoch
        if response.heartbeat_interval_ms > 0:
            self.heartbeat_interval_ms = response.heartbeat_interval_ms
        if response.session_timeout_ms > 0:
            self.session_timeout_ms = response.session_timeout_ms
        assignment = from_wire(response.assignment)
        to_release = self.owned - assignment
        added = assignment - self.owned
        changed = bool(to_release - self.revoking)
        self.revoking |= to_release
        released = False
        if self.revoking and not self.consumer.busy:
            released = await self.complete_revocation()
        if added and await self._assign(added):
            changed = True
        if changed:
            self.assignment_changed.set()
            self.assignment_changed = anyio.Event()
        return released

    async def _assign(self, added: set[TopicPartition]) -> bool:
        """Take newly assigned partitions: fetch their committed offsets (retried,
        see client/group_offsets.py), start fetching them, on_assign.  Only a
        partition without a commit starts by ``auto_offset_reset``.  If the
        committed offsets cannot be fetched within :meth:`retry_budget_ms`, the
        partitions are not taken now (not fetched, not reported owned): the next
        heartbeat answer assigns them again and this runs again.  A non-retriable
        error also goes to the application.  True if the partitions were taken."""
        try:
            committed = await fetch_committed(
                self.cluster, self.group_id, added, timeout_ms=self.retry_budget_ms()
            )
        except DistributaryError as error:
            log.warning(
                "committed offsets not fetched; partitions taken at a later heartbeat",
                group=self.group_id,
                partitions=sorted(map(str, added)),
                error=str(error),
            )
            if not should_retry(error):
                self.consumer.report_error(error)
            return False
        await self.consumer.add_partitions({tp: committed.get(tp) for tp in added})
        self.owned |= added
        self._auto_commit_soon = True
        for tp, offset in committed.items():
            self._last_committed[tp] = offset
        log.info("partitions assigned", group=self.group_id, partitions=sorted(map(str, added)))
        await self._callback(self.options.on_assign, set(added))
        return True

    def retry_budget_ms(self) -> int:
        """How long a commit or a fetch of committed offsets may retry: half the
        session timeout (they may run in the heartbeat loop, whose next heartbeat
        must still reach the coordinator in time), at most the request timeout."""
        return max(1, min(self.consumer.request_timeout_ms, self.session_timeout_ms // 2))

    async def complete_revocation(self) -> bool:
        """Release what the broker asked for: stop fetching, commit, on_revoke, then
        wake the heartbeat loop.  Only at a point where the application has processed
        every record it was handed (see the module docstring).  True if anything
        was released."""
        async with self._revocation_lock:
            partitions = self.revoking & self.owned
            if not partitions:
                self.revoking.clear()
                return False
            positions = self.consumer.freeze_partitions(partitions)
            if self.options.enable_auto_commit:
                await self._commit_quietly(positions)
            await self._callback(self.options.on_revoke, set(partitions))
            self.consumer.remove_partitions(partitions)
            self.owned -= partitions
            self.revoking -= partitions
            for tp in partitions:
                self._last_committed.pop(tp, None)
            log.info(
                "partitions released", group=self.group_id, partitions=sorted(map(str, partitions))
            )
        self._wake.set()
        return True

    async def _lose_all(self, reason: str) -> None:
        """Our partitions were given away: drop them, no commit, on_lost."""
        lost = set(self.owned)
        self.owned.clear()
        self.revoking.clear()
        self._last_committed.clear()
        if not lost:
            return
        self.consumer.freeze_partitions(lost)
        self.consumer.remove_partitions(lost)
        log.warning("partitions lost", group=self.group_id, reason=reason, count=len(lost))
        await self._callback(self.options.on_lost or self.options.on_revoke, lost)

    async def _callback(
        self, callback: PartitionsCallback | None, partitions: set[TopicPartition]
    ) -> None:
        if callback is None or not partitions:
            return
        try:
            result = callback(partitions)
            if inspect.isawaitable(result):
                await result
        except Exception as error:  # the application's code: report it, keep the group alive
            log.error("partition callback failed", group=self.group_id, error=repr(error))
            self.consumer.report_error(error)

    # -- commits ------------------------------------------------------------------------

    async def commit(self, offsets: Mapping[TopicPartition, int], metadata: str = "") -> None:
        """Commit as this member (as an admin before the first join), retrying for at
        most :meth:`retry_budget_ms`.  Raises the typed error of a refused commit
        (UnknownMemberError, FencedMemberEpochError at once; a retriable one such
        as CoordinatorNotAvailableError once the retries are used up)."""
        if not offsets:
            return
        async with self._commit_lock:
            await commit_offsets(
                self.cluster,
                self.group_id,
                offsets,
                member_id=self.member_id,
                member_epoch=self.member_epoch if self.member_id else ADMIN_COMMIT_EPOCH,
                metadata=metadata,
                timeout_ms=self.retry_budget_ms(),
            )
            self._last_committed.update(offsets)

    async def _commit_quietly(self, positions: Mapping[TopicPartition, int]) -> bool:
        """Commit what moved since the last commit; False if nothing was committed
        (nothing moved, or the commit failed: logged)."""
        changed = {tp: o for tp, o in positions.items() if self._last_committed.get(tp) != o}
        if not changed:
            return False
        try:
            await self.commit(changed)
        except DistributaryError as error:
            log.warning("commit failed", group=self.group_id, error=str(error))
            return False
        return True

    async def auto_commit_loop(self) -> None:
        """Commit processed positions every auto_commit_interval_ms (consumer task group)."""
        done = anyio.Event()
        self._loops_done.append(done)
        try:
            with self._scope():
                while True:  # until leave() stops it
                    interval_ms = self.options.auto_commit_interval_ms
                    if self._auto_commit_soon:
                        interval_ms = min(interval_ms, FIRST_AUTO_COMMIT_MS)
                    await self._sleep_ms(interval_ms, self._commit_wake)
                    if self._stopped:
                        break
                    positions = self.consumer.processed_positions(self.owned - self.revoking)
                    if await self._commit_quietly(positions):
                        self._auto_commit_soon = False
        finally:
            done.set()

    # -- leaving ------------------------------------------------------------------------

    async def leave(self) -> None:
        """Final commit (auto-commit), on_revoke, leave heartbeat.  Never raises an
        operating error (logged instead)."""
        self._stopped = True
        self._wake.set()
        self._commit_wake.set()
        with anyio.move_on_after(LEAVE_TIMEOUT_MS / 1000):
            for done in self._loops_done:
                await done.wait()
        for scope in self._scopes:
            scope.cancel()
        with anyio.move_on_after(LEAVE_TIMEOUT_MS / 1000):
            if self.owned:
                positions = self.consumer.current_positions(self.owned)
                if self.options.enable_auto_commit and self.member_id:
                    await self._commit_quietly(positions)
                await self._callback(self.options.on_revoke, set(self.owned))
            if not self.member_id:
                return
            epoch = STATIC_LEAVE_GROUP_EPOCH if self.options.instance_id else LEAVE_GROUP_EPOCH
            try:
                await self._send_heartbeat(epoch)
            except DistributaryError as error:
                log.info("leave heartbeat failed", group=self.group_id, error=str(error))
