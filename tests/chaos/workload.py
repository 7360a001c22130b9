"""The chaos workload: producers and a consumer group through the public SDK,
recording every operation into a :class:`~tests.chaos.checker.History`.

- ``producers`` idempotent producers send unique values (``"<producer>-<seq>"``)
  round-robin to the topic's partitions, together ``records_per_s``, each record
  awaited on its own handle.  A send whose ``enqueue`` raised never left the
  client: ``fail``.  A send that was enqueued and then raised (timeout, connection
  lost, not leader after sending...) may have landed: ``info``.  Acknowledged:
  ``ok`` with its offset.  At most ``inflight_records_max`` records per producer
  wait for an answer (beyond that the producer waits: the rate drops).
- ``consumers`` members of one group (manual commits every
  ``commit_interval_s`` of what they were handed, auto-commit off) record every
  poll, every assignment change and every commit; one observer reads the
  group's committed offsets every ``observe_interval_s``.
- :meth:`Workload.final_read` reads every partition from the beginning to its
  end with a fresh consumer, retrying with another fresh one until complete
  (bounded by ``final_read_timeout_s``).

Every timestamp comes from the injected ``clock_ns`` (monotonic by default).
Use ``async with workload.running(): ...`` (producing and consuming meanwhile;
leaving it stops producing, waits for the last answers, stops consuming), then
``await workload.final_read()`` and ``checker.check(workload.history)``.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import msgspec
import trio

from client import Admin, Consumer, DistributaryError, Producer, TopicPartition
from client.errors import FencedMemberEpochError, UnknownMemberError
from client.producer import AcksSetting, RecordHandle
from client.protocol.messages import LATEST_TIMESTAMP
from tests.chaos.checker import Assign, Commit, History, OpType, Poll, Send

POLL_TIMEOUT_MS: Final = 200
ERROR_BACKOFF_S: Final = 0.2
FINAL_ATTEMPT_S: Final = 30.0
FINAL_RETRY_S: Final = 1.0
# Attempts of the final read at most (the timeout ends them sooner).
FINAL_ATTEMPTS_MAX: Final = 1_000
# Seconds beyond the delivery timeout that stopping waits for the producers.
DRAIN_SLACK_S: Final = 10.0
# Fresh clients started after crashes, per producer or consumer.
CLIENT_RESTARTS_MAX: Final = 20
CRASH_DEPTH_MAX: Final = 20


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """What the workload does; every limit bounded (module docstring)."""

    topic: str = "chaos"
    partitions: int = 6
    producers: int = 2
    records_per_s: float = 200.0
    acks: AcksSetting = "all"
    consumers: int = 2
    group: str = "chaos-group"
    delivery_timeout_ms: int = 30_000
    request_timeout_ms: int = 5_000
    inflight_records_max: int = 5_000
    commit_interval_s: float = 1.0
    observe_interval_s: float = 2.0
    session_timeout_ms: int = 10_000
    final_read_timeout_s: float = 120.0


class Workload:
    """Runs the workload of ``config`` against ``bootstrap`` (module docstring)."""

    def __init__(
        self,
        bootstrap: str,
        config: WorkloadConfig,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.bootstrap = bootstrap
        self.config = config
        self.clock_ns = clock_ns
        self.history = History()
        self.final_read_complete = False
        self.final_read_errors: list[str] = []
        # One line per client that crashed (an exception out of the SDK).
        self.crashes: list[str] = []

    def _partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.config.topic, p) for p in range(self.config.partitions)]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Produce and consume while the body runs (module docstring)."""
        config = self.config
        stop_producing = trio.Event()
        stop_consuming = trio.Event()
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as consumers:
                for index in range(config.consumers):
                    consumers.start_soon(
                        self._restarting, self._consume, f"consumer-{index}", stop_consuming
                    )
                consumers.start_soon(self._observe_commits, stop_consuming)
                try:
                    async with trio.open_nursery() as producers:
                        for index in range(config.producers):
                            producers.start_soon(
                                self._restarting,
                                self._produce,
                                f"producer-{index}",
                                stop_producing,
                            )
                        try:
                            yield
                        finally:
                            stop_producing.set()
                            # The producers' nursery waits for their last answers
                            # (bounded by the delivery timeout).
                finally:
                    stop_consuming.set()
            nursery.cancel_scope.cancel()

    async def _restarting(
        self,
        client: Callable[[str, trio.Event], Awaitable[None]],
        name: str,
        stop: trio.Event,
    ) -> None:
        """Run ``client`` until ``stop``; when it crashes, note the crash and start a
        fresh one under a new name (as Jepsen replaces a crashed client)."""
        for incarnation in range(CLIENT_RESTARTS_MAX):
            current = name if incarnation == 0 else f"{name}.{incarnation}"
            try:
                await client(current, stop)
            except Exception as error:  # any crash: recorded, then a fresh client
                self.crashes.append(f"{current}: {crash_summary(error)}")
                if stop.is_set():
                    return
                await trio.sleep(ERROR_BACKOFF_S)
                continue
            return

    # -- producing ----------------------------------------------------------------------

    async def _produce(self, name: str, stop: trio.Event) -> None:
        config = self.config
        interval_s = config.producers / config.records_per_s
        room = trio.Semaphore(config.inflight_records_max)
        # seq -> (value, partition, invoke time) of the records awaiting an answer.
        waiting: dict[int, tuple[str, int, int]] = {}
        try:
            async with (
                Producer(
                    self.bootstrap,
                    client_id=name,
                    acks=config.acks,
                    idempotent=True,
                    linger_ms=2,
                    delivery_timeout_ms=config.delivery_timeout_ms,
                    request_timeout_ms=config.request_timeout_ms,
                ) as producer,
                trio.open_nursery() as answers,
            ):
                started = trio.current_time()
                seq = 0
                while True:
                    if stop.is_set():
                        break
                    seq += 1
                    partition = seq % config.partitions
                    value = f"{name}-{seq}"
                    await trio.sleep_until(started + seq * interval_s)
                    if stop.is_set():
                        break
                    await room.acquire()
                    invoke = self.clock_ns()
                    try:
                        handle = await producer.enqueue(
                            config.topic, value, key=name, partition=partition
                        )
                    except DistributaryError as error:
                        room.release()
                        self.history.add(
                            Send(
                                name,
                                seq,
                                "fail",
                                name,
                                value,
                                partition,
                                None,
                                invoke,
                                self.clock_ns(),
                                repr(error),
                            )
                        )
                        continue
                    waiting[seq] = (value, partition, invoke)
                    answers.start_soon(self._answer, name, seq, waiting, handle, room)
        finally:
            # A crash leaves records unanswered: they may have landed.
            for seq, (value, partition, invoke) in sorted(waiting.items()):
                self.history.add(
                    Send(
                        name,
                        seq,
                        "info",
                        name,
                        value,
                        partition,
                        None,
                        invoke,
                        self.clock_ns(),
                        "the producer crashed",
                    )
                )

    async def _answer(
        self,
        name: str,
        seq: int,
        waiting: dict[int, tuple[str, int, int]],
        handle: RecordHandle,
        room: trio.Semaphore,
    ) -> None:
        value, partition, invoke = waiting[seq]
        try:
            metadata = await handle
        except DistributaryError as error:
            del waiting[seq]
            self.history.add(
                Send(
                    name,
                    seq,
                    "info",
                    name,
                    value,
                    partition,
                    None,
                    invoke,
                    self.clock_ns(),
                    repr(error),
                )
            )
        else:
            del waiting[seq]
            self.history.add(
                Send(
                    name,
                    seq,
                    "ok",
                    name,
                    value,
                    partition,
                    metadata.offset,
                    invoke,
                    self.clock_ns(),
                )
            )
        finally:
            room.release()

    # -- consuming ----------------------------------------------------------------------

    async def _consume(self, name: str, stop: trio.Event) -> None:
        config = self.config
        assigned: set[int] = set()
        # partition -> the next offset to commit (one past the last record handed out).
        pending: dict[int, int] = {}
        clients: list[Consumer] = []
        # Before the member's next OffsetFetch of newly assigned partitions: the end
        # of its last on_assign (they run one after the other), or its start.
        fetched_after_ns = self.clock_ns()

        def changed(added: set[TopicPartition], removed: set[TopicPartition]) -> None:
            nonlocal fetched_after_ns
            assigned.update(tp.partition for tp in added)
            for tp in removed:
                assigned.discard(tp.partition)
                pending.pop(tp.partition, None)
            now = self.clock_ns()
            self.history.add(Assign(name, tuple(sorted(assigned)), True, now, now))
            if added and clients:
                self._note_resumes(name, clients[0], added, fetched_after_ns, now)
                fetched_after_ns = self.clock_ns()

        async with Consumer(
            self.bootstrap,
            client_id=name,
            group=config.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=config.session_timeout_ms,
            request_timeout_ms=config.request_timeout_ms,
            on_assign=lambda tps: changed(tps, set()),
            on_revoke=lambda tps: changed(set(), tps),
            on_lost=lambda tps: changed(set(), tps),
        ) as consumer:
            clients.append(consumer)
            await consumer.subscribe([config.topic])
            next_commit = trio.current_time() + config.commit_interval_s
            while True:
                if stop.is_set():
                    break
                invoke = self.clock_ns()
                try:
                    batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
                except DistributaryError:
                    await trio.sleep(ERROR_BACKOFF_S)
                    continue
                records = tuple(
                    (tp.partition, record.offset, bytes(record.value or b"").decode())
                    for tp, found in batches.items()
                    for record in found
                )
                if records:
                    self.history.add(Poll(name, records, invoke, self.clock_ns()))
                    for tp, found in batches.items():
                        if found and tp.partition in assigned:
                            pending[tp.partition] = found[-1].offset + 1
                if trio.current_time() >= next_commit and pending:
                    next_commit = trio.current_time() + config.commit_interval_s
                    await self._commit(name, consumer, dict(pending))
                    pending.clear()

    def _note_resumes(
        self,
        name: str,
        consumer: Consumer,
        added: set[TopicPartition],
        fetched_after_ns: int,
        now_ns: int,
    ) -> None:
        """Record where ``consumer`` starts each newly assigned partition: called
        from on_assign, before anything of them was handed out, so each position
        is the committed offset the member fetched (-1: none, auto_offset_reset)."""
        wanted = {tp.partition for tp in added if tp.topic == self.config.topic}
        for row in consumer.metrics().partitions:
            if row.topic == self.config.topic and row.partition in wanted:
                self.history.add(
                    Commit(
                        name,
                        "ok",
                        self.config.group,
                        row.partition,
                        row.position,
                        fetched_after_ns,
                        now_ns,
                        observed=True,
                        resumed=True,
                    )
                )

    async def _commit(self, name: str, consumer: Consumer, offsets: dict[int, int]) -> None:
        """Commit ``offsets`` and record the outcome, also when cancelled or crashed
        meanwhile (then ``info``: the commit may still take effect)."""
        config = self.config
        invoke = self.clock_ns()
        outcome: OpType = "info"
        try:
            with trio.move_on_after(config.request_timeout_ms / 1000):
                try:
                    await consumer.commit(
                        {TopicPartition(config.topic, p): o for p, o in offsets.items()}
                    )
                    outcome = "ok"
                except (UnknownMemberError, FencedMemberEpochError) as error:
                    # Refused for certain, unless an earlier attempt reached the
                    # coordinator (then it is the refusal's cause, and may land).
                    outcome = "fail" if error.__cause__ is None else "info"
                except DistributaryError:
                    outcome = "info"
        finally:
            complete = self.clock_ns()
            for partition, offset in sorted(offsets.items()):
                self.history.add(
                    Commit(name, outcome, config.group, partition, offset, invoke, complete)
                )

    async def _observe_commits(self, stop: trio.Event) -> None:
        config = self.config
        async with Admin(self.bootstrap, request_timeout_ms=config.request_timeout_ms) as admin:
            while True:
                with trio.move_on_after(config.observe_interval_s):
                    await stop.wait()
                if stop.is_set():
                    break
                invoke = self.clock_ns()
                with trio.move_on_after(config.request_timeout_ms / 1000):
                    try:
                        found = await admin.committed_offsets(config.group)
                    except DistributaryError:
                        continue
                    complete = self.clock_ns()
                    for tp, offset in sorted(found.items()):
                        if tp.topic == config.topic:
                            self.history.add(
                                Commit(
                                    "observer",
                                    "ok",
                                    config.group,
                                    tp.partition,
                                    offset,
                                    invoke,
                                    complete,
                                    observed=True,
                                )
                            )

    # -- the final read -----------------------------------------------------------------

    async def final_read(self) -> bool:
        """Read every partition from the beginning to its end; a fresh consumer per
        attempt until one completes or ``final_read_timeout_s`` passes.  Returns
        whether one completed (also kept as ``final_read_complete``; why attempts
        failed is in ``final_read_errors``)."""
        deadline = trio.current_time() + self.config.final_read_timeout_s
        for attempt in range(FINAL_ATTEMPTS_MAX):
            left_s = deadline - trio.current_time()
            if left_s <= 0:
                break
            with trio.move_on_after(min(FINAL_ATTEMPT_S, left_s)) as scope:
                try:
                    await self._read_all(f"final-{attempt}")
                except DistributaryError as error:
                    self.final_read_errors.append(f"final-{attempt}: {error!r}")
                    await trio.sleep(FINAL_RETRY_S)
                    continue
                self.final_read_complete = True
                return True
            if scope.cancelled_caught:
                self.final_read_errors.append(
                    f"final-{attempt}: not complete within {FINAL_ATTEMPT_S} s"
                )
        return False

    async def _read_all(self, name: str) -> None:
        """One complete read of every partition.  Raises DistributaryError."""
        partitions = self._partitions()
        async with Consumer(
            self.bootstrap,
            client_id=name,
            auto_offset_reset="earliest",
            request_timeout_ms=self.config.request_timeout_ms,
        ) as consumer:
            ends = await consumer.list_offsets({tp: LATEST_TIMESTAMP for tp in partitions})
            await consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            now = self.clock_ns()
            self.history.add(
                Assign(name, tuple(tp.partition for tp in partitions), False, now, now)
            )
            remaining = {tp for tp in partitions if ends[tp] > 0}
            while remaining:
                invoke = self.clock_ns()
                batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
                records = tuple(
                    (tp.partition, record.offset, bytes(record.value or b"").decode())
                    for tp, found in batches.items()
                    for record in found
                )
                if records:
                    self.history.add(Poll(name, records, invoke, self.clock_ns(), final=True))
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)


def crash_summary(error: BaseException) -> str:
    """The innermost exception of ``error`` (through exception groups) and where it
    was raised."""
    for _ in range(CRASH_DEPTH_MAX):
        if isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = error.exceptions[0]
        else:
            break
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}"
    return f"{error!r}{where if frames else ''}"


_OP_TYPES: Final = {cls.__name__: cls for cls in (Send, Poll, Assign, Commit)}


def read_history(path: Path) -> History:
    """A history written by :func:`write_history`.  Raises ValueError on a bad line."""
    history = History()
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            fields = msgspec.json.decode(line)
            cls = _OP_TYPES.get(fields.pop("op", None))
            if cls is None:
                raise ValueError(f"{path}:{number}: not an operation")
            if cls is Poll:
                fields["records"] = tuple(tuple(record) for record in fields["records"])
            elif cls is Assign:
                fields["partitions"] = tuple(fields["partitions"])
            history.add(cls(**fields))
    return history


def write_history(history: History, path: Path) -> None:
    """The history as JSON lines, one operation a line with its kind in ``op``."""
    encoder = msgspec.json.Encoder()
    with path.open("wb") as out:
        for op in history.ops:
            out.write(encoder.encode({"op": type(op).__name__, **dataclasses.asdict(op)}))
            out.write(b"\n")
