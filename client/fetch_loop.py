"""The consumer's fetching in the background: one fetch task per leader broker.

A :class:`FetchLoop` drives a :class:`~client.fetcher.Fetcher` over the
connections of a :class:`~client._io.cluster.Cluster`.  One task per leader
broker keeps a long-polling Fetch in flight for every partition the Fetcher
says is fetchable (resolved, not paused, with room in its buffer).  Each
answer is handled in its callback, inside the connection's dispatch (no task
switch): the Fetcher decodes it, the next fetch is sent right there when that
needs no awaiting (asyncio: a write never waits; no offset to resolve, no
metadata to refresh), and the owner's ``on_data`` wakes a waiting reader.
Anything else hands back to the task (see :class:`_FetchChain`).

After a leader change a partition that has fetched records is validated
before it is fetched again (KIP-320, client/position_validation.py).

Connection trouble is retried with backoff, for as long as the loop runs; after
``reconnect_attempts_max`` failures in a row (or a non-retriable error) the error
goes to the owner's ``on_error`` once, and fetching goes on.  ``failing`` holds
the last error of each broker whose fetch task has not connected since (what a
follower reports as "broker unreachable"; empty once every task connected).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from functools import partial
from typing import Final

import anyio
import anyio.abc

from client._io.cluster import Cluster, backoff_ms
from client._io.connection import BrokerConnection, EventLoopTools, LoopEvent, PendingResponse
from client._logging import get_logger
from client.errors import DistributaryError
from client.fetcher import Fetcher, SeekCounts
from client.offsets import resolve_positions
from client.position_validation import validate_positions
from client.protocol.connection import IncomingResponse
from client.protocol.messages import FetchRequest
from client.types import TopicPartition

log = get_logger("client.fetch_loop")

# Fetches one chain keeps on the wire (asyncio): the one being answered and a
# continuation waiting at the broker behind it.
FETCHES_PIPELINED: Final = 2
# Answers one continuation may bring (a fetch stream, docs/protocol.md): each
# is at most 16 KiB, so a stream the consumer stops using (a full buffer) costs
# at most 1 MiB of ignored answers.
FETCH_STREAM_RESPONSES: Final = 64
RETRY_BACKOFF_MS: Final = 100
RETRY_BACKOFF_MAX_MS: Final = 1_000
# How long a fetch task with nothing to fetch waits before it looks at the
# leaders again (a woken wait ends sooner).
IDLE_RECHECK_MS: Final = 1_000


class _FetchChain:
    """The fetches one fetcher task has on the wire, back to back.

    The task sends the first; each response is handled in its ``on_done``
    callback, inside the connection's dispatch, which sends the next fetch right
    there (no task switch) while the connection takes a write at once and the
    partitions need nothing awaited (no offset to resolve, no metadata to
    refresh).  Otherwise the chain finishes and the task takes over again.

    Where the connection takes writes at once (asyncio), the chain keeps a second
    fetch on the wire: a continuation (FETCH_OFFSET_CONTINUE) of the same
    partitions, which the broker resolves to where the fetch before it ended.  So
    while one response travels and is handled, the next long poll already waits
    at the broker, and a record appended meanwhile leaves at once.  Each
    continuation is a stream (``responses_max``, docs/protocol.md): while the
    partition is a live tail the broker answers it again after every append, so
    the consumer sends no request per answer (:meth:`FetchLoop._fetch_more`).
    Where continuations cannot be written from a callback (trio), the task's
    fetch is itself such a stream."""

    __slots__ = (
        "connection",
        "continuation",
        "continuation_sizes",
        "continuing",
        "done",
        "error",
        "finished",
        "node",
        "pending",
        "stale",
    )

    def __init__(self, node: int, connection: BrokerConnection, done: LoopEvent) -> None:
        self.node = node
        self.connection = connection
        self.done = done
        self.pending: set[PendingResponse] = set()  # the fetches in flight
        # The partitions (in request order) that continuations may fetch: those of
        # the chain's last fetch from offsets; None: send no continuation.
        self.continuing: list[TopicPartition] | None = None
        # The continuation request of ``continuing``, reused while the partitions'
        # fetch sizes stay as they were (``continuation_sizes``: the Fetcher's
        # ``sizes_version`` when it was built).
        self.continuation: FetchRequest | None = None
        self.continuation_sizes = -1
        self.finished = False
        self.stale = False  # a partition moved: metadata must be refreshed
        self.error: DistributaryError | None = None

    def finish(self, error: DistributaryError | None = None) -> None:
        self.error = error
        self.finished = True
        self.done.set()


class FetchLoop:
    """The fetch tasks of one consumer (see the module docstring)."""

    def __init__(
        self,
        fetcher: Fetcher,
        cluster: Cluster,
        tools: EventLoopTools,
        *,
        request_timeout_ms: int,
        reconnect_attempts_max: int,
        rng: random.Random,
        on_data: Callable[[], None],
        on_error: Callable[[DistributaryError], None],
    ) -> None:
        self.fetcher = fetcher
        self.cluster = cluster
        self.tools = tools
        self.request_timeout_ms = request_timeout_ms
        self.reconnect_attempts_max = reconnect_attempts_max
        self._random = rng
        self._on_data = on_data
        self._on_error = on_error
        self._nodes: set[int] = set()  # the brokers with a fetch task
        fetcher.leader_epoch_for = cluster.leader_epoch_for  # named in every fetch
        # Per fetch task (broker): its last error, until it connects again.
        self.failing: dict[int, DistributaryError] = {}
        # Set (and dropped) by wake(): an idle fetch task waits on it.
        self.room: LoopEvent | None = None
        self.closed = False

    def wake(self) -> None:
        """Something may be fetchable again (room in a buffer, a seek, a resume)."""
        room = self.room
        if room is not None:
            self.room = None
            room.set()

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """A fetch task for every leader of the Fetcher's partitions that has none."""
        cluster = self.cluster
        for tp in self.fetcher.states:
            leader = cluster.leader_for(tp.topic, tp.partition)
            node = leader if leader is not None else -1
            if node not in self._nodes:
                self._nodes.add(node)
                task_group.start_soon(self._run, node, task_group)

    async def resolve(self, partitions: Iterable[TopicPartition]) -> None:
        """Resolve the positions of ``partitions`` that wait for it (ListOffsets).
        Raises the typed error of the lookup."""
        await resolve_positions(
            self.cluster, self.fetcher, partitions, attempts_max=self.reconnect_attempts_max
        )

    async def _run(self, node: int, task_group: anyio.abc.TaskGroup) -> None:
        failures = 0
        while not self.closed:
            try:
                unresolved = self.fetcher.unresolved()
                if unresolved:
                    await self.resolve(unresolved)
                partitions = self._fetchable(node, unresolved_stops=False)
                to_validate = self.fetcher.to_validate()
                if to_validate:
                    await self._validate(to_validate)
                    continue
                if not partitions:
                    self.failing.pop(node, None)  # nothing to fetch here: not failing
                    self.room = room = self.tools.event()
                    await self.tools.wait_or_timeout(room, IDLE_RECHECK_MS / 1000)
                    if self.room is room:
                        self.room = None
                    continue
                await self._fetch_once(node, partitions, task_group)
                failures = 0
            except DistributaryError as error:
                if self._closing():  # the error is our own close() under the fetch
                    return
                failures += 1
                self.failing[node] = error
                if not error.retriable or failures >= self.reconnect_attempts_max:
                    self._on_error(error)
                    failures = 0
                log.info("fetch failed", node=node, error=str(error), failures=failures)
                await self.refresh_metadata()
                self.start(task_group)  # a leader the refresh found gets its fetch task
                delay = backoff_ms(failures, RETRY_BACKOFF_MS, RETRY_BACKOFF_MAX_MS, self._random)
                await anyio.sleep(delay / 1000)

    async def _validate(self, partitions: list[TopicPartition]) -> None:
        """Validate positions after a leader change (client/position_validation.py);
        what must be asked again is, after a metadata refresh and a backoff.
        Raises the typed error of the request."""
        again = await validate_positions(self.cluster, self.fetcher, partitions)
        self._on_data()  # a truncation may have left an error for the reader
        if again:
            await self.refresh_metadata()
            await anyio.sleep(RETRY_BACKOFF_MS / 1000)

    def _closing(self) -> bool:
        return self.closed

    def _fetchable(self, node: int, *, unresolved_stops: bool) -> list[TopicPartition]:
        return self.fetcher.fetchable(
            node, self.cluster.leader_for, unresolved_stops=unresolved_stops
        )

    async def refresh_metadata(self) -> None:
        """Refresh the metadata of the fetched topics (failures are logged)."""
        try:
            await self.cluster.refresh_metadata(sorted({tp.topic for tp in self.fetcher.states}))
        except DistributaryError as error:
            log.debug("metadata refresh failed", error=str(error))

    def _timeout_ms(self) -> int:
        return self.request_timeout_ms + self.fetcher.max_wait_ms

    async def _fetch_once(
        self, node: int, partitions: list[TopicPartition], task_group: anyio.abc.TaskGroup
    ) -> None:
        """Fetch ``partitions`` from ``node``, then keep fetching from the response
        callbacks (see :class:`_FetchChain`) until that needs the task again.
        Raises the typed error that ended the chain."""
        connection = await self.cluster.connection_for_node(node)
        if self.failing:
            self.failing.pop(node, None)
        # Connecting awaited: the assignment may have changed meanwhile (a group
        # revoked or lost partitions), so fetch what is fetchable here now.
        partitions = self._fetchable(node, unresolved_stops=False)
        if not partitions:
            return
        chain = _FetchChain(node, connection, self.tools.event())
        # Where no continuation can be written from a callback (trio: a write may
        # have to wait half-way), the fetch itself is a stream: the broker keeps
        # answering it while the partitions are a live tail.
        stream = not connection.writable_now
        request, seek_counts = self.fetcher.fetch_request(
            partitions, FETCH_STREAM_RESPONSES if stream else 1
        )
        if stream:
            chain.continuing = partitions  # what its answers flagged MORE may feed
        pending = await connection.send(
            request,
            timeout_ms=self._timeout_ms(),
            on_done=partial(self._fetch_done, chain, seek_counts),
            on_more=partial(self._fetch_more, chain, seek_counts) if stream else None,
            checked=False,  # valid by construction (see Fetcher.fetch_request)
        )
        assert pending is not None
        if not pending.done:  # else its callback ran already and moved the chain on
            chain.pending.add(pending)
            chain.continuing = partitions
            self._send_continuation(chain, seek_counts)
        try:
            await chain.done.wait()
        finally:
            # Finished (or cancelled): a fetch still on the wire is nobody's any
            # more; its late response is ignored (its records are fetched again).
            chain.finished = True
            for left in chain.pending:
                connection.abandon(left)
            chain.pending.clear()
        if chain.stale:
            await self.refresh_metadata()
            self.start(task_group)
        if chain.error is not None:
            raise chain.error

    def _fetch_done(
        self, chain: _FetchChain, seek_counts: SeekCounts, pending: PendingResponse
    ) -> None:
        """A fetch response (or its error), inside the connection's dispatch: hand
        the records over, then send the next fetch at once if nothing needs the
        task.  ``seek_counts``: the partitions' when the fetch was built.  Must
        not raise."""
        chain.pending.discard(pending)
        if not self._apply_in_chain(chain, seek_counts, pending):
            return
        connection = chain.connection
        partitions = self._fetchable(chain.node, unresolved_stops=True)
        if not partitions or not connection.writable_now:
            chain.finish()
            return
        fetcher = self.fetcher
        if partitions == chain.continuing and fetcher.seek_counts_unchanged(seek_counts):
            # Nothing moved since the chain's fetch from offsets: keep one
            # continuation on the wire behind the one still there.  While that one
            # waits at the broker, the next can wait until the application has
            # taken these records (call_soon runs after the woken getmany).
            call_soon = self.tools.call_soon
            if chain.pending and call_soon is not None:
                call_soon(partial(self._send_continuation, chain, seek_counts))
            else:
                self._send_continuation(chain, seek_counts)
            return
        if chain.pending:
            # Something moved (a seek, a pause, a full buffer): a fetch from
            # offsets now could overlap the one still in flight; let the task
            # start afresh (the broker ends that long poll when the next request
            # arrives behind it).
            chain.finish()
            return
        request, seek_counts = fetcher.fetch_request(partitions)
        if self._send_in_chain(chain, request, seek_counts):
            chain.continuing = partitions
            chain.continuation = None
            self._send_continuation(chain, seek_counts)

    def _fetch_more(
        self, chain: _FetchChain, seek_counts: SeekCounts, response: IncomingResponse
    ) -> None:
        """An answer flagged MORE of a continuation stream: its records, as in
        :meth:`_fetch_done`, while the stream goes on.  When something moved (a
        seek, a pause, a full buffer, a leader change) the chain finishes: the
        rest of the stream is ignored and the task starts afresh.  Must not
        raise."""
        if not self._apply_in_chain(chain, seek_counts, response):
            return
        partitions = self._fetchable(chain.node, unresolved_stops=True)
        if partitions != chain.continuing or not self.fetcher.seek_counts_unchanged(seek_counts):
            chain.finish()

    def _apply_in_chain(
        self,
        chain: _FetchChain,
        seek_counts: SeekCounts,
        answer: PendingResponse | IncomingResponse,
    ) -> bool:
        """Hand a chain's fetch answer (a completed slot, or a stream's answer
        flagged MORE) to the Fetcher; False when the chain is finished: abandoned
        before, or now by an error, a moved leader or closing."""
        if chain.finished:  # abandoned
            return False
        try:
            response = answer.result() if isinstance(answer, PendingResponse) else answer
            got_data, stale = self.fetcher.apply(response, seek_counts)
        except DistributaryError as error:
            chain.finish(error)
            return False
        if got_data:
            self._on_data()
        if stale or self.closed:
            chain.stale = stale
            chain.finish()
            return False
        return True

    def _send_continuation(self, chain: _FetchChain, seek_counts: SeekCounts) -> None:
        """Put a continuation of ``chain.continuing`` on the wire if the chain has
        room for it and the connection takes it at once (asyncio); else nothing."""
        partitions = chain.continuing
        if (
            partitions is None
            or chain.finished
            or len(chain.pending) >= FETCHES_PIPELINED
            or not chain.connection.writable_now
        ):
            return
        request = chain.continuation
        sizes_version = self.fetcher.sizes_version
        if request is None or chain.continuation_sizes != sizes_version:
            request = chain.continuation = self.fetcher.continuation_request(
                partitions, FETCH_STREAM_RESPONSES
            )
            chain.continuation_sizes = sizes_version
        self._send_in_chain(chain, request, seek_counts, stream=True)

    def _send_in_chain(
        self,
        chain: _FetchChain,
        request: FetchRequest,
        seek_counts: SeekCounts,
        *,
        stream: bool = False,
    ) -> bool:
        """Write ``request`` now (the connection takes it whole); its response goes
        to :meth:`_fetch_done` (a stream's answers flagged MORE to
        :meth:`_fetch_more`).  False when that failed (the chain is finished)."""
        try:
            sent = chain.connection.send_nowait(
                request,
                timeout_ms=self._timeout_ms(),
                on_done=partial(self._fetch_done, chain, seek_counts),
                on_more=partial(self._fetch_more, chain, seek_counts) if stream else None,
                checked=False,  # valid by construction (see Fetcher.fetch_request)
            )
        except DistributaryError as error:
            chain.finish(error)
            return False
        assert sent is not None  # a fetch always wants its response
        chain.pending.add(sent)
        return True
