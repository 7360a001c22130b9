"""Requests that wait for something to happen to a partition.

A request that cannot be answered yet (a long-polling Fetch; a Produce with
acks=all while followers have not caught up) leaves a *waiter* with each partition
it depends on.  The partition wakes all its waiters, synchronously and for an
explicit reason (:class:`WakeReason`), when:

- its high watermark advances (records became visible to consumers),
- records are appended that are not committed yet (a leader with followers, or
  a follower: replica fetches wait for those),
- its leadership changes (leader or leader epoch),
- its log is truncated, or it is closed (deleted, shutting down),
- the broker begins a graceful shutdown.

Waking is cheap and never answers anything itself: a waiter is one-shot (the
partition forgets it) and only records that it was woken, then calls its
owner back -- for a connection's fetch, that wakes the *connection's own*
writer task, which collects the answer and sends it (no task ever writes on
another connection's socket).  A woken fetch that still finds too little data
registers again.

:class:`PendingFetch` is a Fetch from its turn on one connection until its
last answer; :func:`wait_for_partitions` is the plain awaitable form, for a
caller that holds a task of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import trio

from client.protocol.connection import IncomingRequest
from client.protocol.messages import FetchRequest

if TYPE_CHECKING:
    from broker.partition import Partition
    from broker.response_slots import Slot


class WakeReason(enum.Enum):
    """Why a partition woke its waiters."""

    HIGH_WATERMARK = "high_watermark"  # records became visible to consumers
    APPENDED = "appended"  # records appended, not yet committed (followers fetch them)
    LEADERSHIP = "leadership"  # the leader or leader epoch changed
    TRUNCATED = "truncated"  # the log was cut back
    CLOSED = "closed"  # the partition was closed (topic deleted, broker stopping)
    SHUTDOWN = "shutdown"  # the broker began a graceful shutdown


class Waiter(Protocol):
    """What a waiting request leaves with a partition.  ``wake`` runs
    synchronously inside the change that causes it and must not raise."""

    def wake(self, reason: WakeReason) -> None: ...


class PendingFetch:
    """One Fetch on one connection, from its turn until its last answer.

    The connection's writer drives it: ``started`` once its offsets are
    resolved; then each pass either answers it or (re)registers it with its
    partitions until ``deadline``.  ``woken``: a partition changed since it was
    registered.  ``interrupted``: a request other than a continuation waits
    behind it, so it answers with what is there now (requests are answered in
    order).  ``on_wake`` wakes the owning connection's writer."""

    __slots__ = (
        "body",
        "deadline",
        "interrupted",
        "on_wake",
        "partitions",
        "request",
        "slot",
        "started",
        "woken",
        "woken_by",
    )

    def __init__(self, request: IncomingRequest, slot: Slot, on_wake: Callable[[], None]) -> None:
        body = request.body
        assert isinstance(body, FetchRequest), body
        self.request = request
        self.body = body
        self.slot = slot
        self.on_wake = on_wake
        self.started = False
        self.deadline = 0.0  # trio time; set when started
        self.woken = False
        self.woken_by: WakeReason | None = None
        self.interrupted = False
        self.partitions: list[Partition] = []  # where it is registered

    def wake(self, reason: WakeReason) -> None:
        if self.woken:
            return
        self.woken = True
        self.woken_by = reason
        self.on_wake()

    def interrupt(self) -> None:
        if self.interrupted:
            return
        self.interrupted = True
        self.on_wake()

    def register(self, partitions: list[Partition]) -> None:
        """Wait on ``partitions`` (again): the next change to one wakes it."""
        for partition in self.partitions:
            partition.remove_waiter(self)
        self.woken = False
        self.woken_by = None
        self.partitions = partitions
        for partition in partitions:
            partition.add_waiter(self)

    def unregister(self) -> None:
        for partition in self.partitions:
            partition.remove_waiter(self)
        self.partitions = []


class _EventWaiter:
    """A waiter that sets a trio.Event."""

    __slots__ = ("event", "woken_by")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.woken_by: WakeReason | None = None

    def wake(self, reason: WakeReason) -> None:
        if self.woken_by is None:
            self.woken_by = reason
        self.event.set()


async def wait_for_partitions(partitions: list[Partition], deadline: float) -> WakeReason | None:
    """Sleep until one of ``partitions`` wakes its waiters (the reason) or
    ``deadline`` passes (None)."""
    waiter = _EventWaiter()
    for partition in partitions:
        partition.add_waiter(waiter)
    try:
        with trio.move_on_at(deadline):
            await waiter.event.wait()
    finally:
        for partition in partitions:
            partition.remove_waiter(waiter)
    return waiter.woken_by
