"""A Jepsen-style checker for a history of sends, polls and group commits.

Pure: it takes a :class:`History` (built by tests/chaos/workload.py, or by hand in
the unit tests) and returns a :class:`Verdict`; no I/O, no clock.

How it works (the idea of ``jepsen.tests.kafka``, docs/testing.md):

1. **Version order per partition.**  Every ``(offset, value)`` any poll saw, plus
   the acknowledged offset of every send that *must have committed* (``ok``, or
   ``info`` with a value someone read), goes into ``log[partition][offset]`` (a
   set of values).  Dropping empty offsets gives each partition's dense order:
   ``index[value]`` is the position of the value's first appearance.
2. **Verdicts.**  Each anomaly class is counted and listed with examples:

   - ``lost``: a send that must have committed, at or below the highest index any
     poll reached, that no poll ever returned (Jepsen's lost-write); or, when the
     history holds a final read of every partition from the beginning, one absent
     from that read (Jepsen's unseen after the final drain).
   - ``duplicated``: one value at two offsets (or in two partitions).
   - ``inconsistent_offsets``: two values at one offset, as seen by readers.
   - ``offset_reuse``: an acknowledged offset that a read, or another
     acknowledgement, says holds another value.
   - ``nonmonotonic_poll``: a reader saw offsets of a partition go backwards (or
     repeat) while it kept the partition assigned.
   - ``poll_skip``: a reader that kept a partition assigned jumped over values in
     its order.  A group rebalance (an :class:`Assign` with ``group`` True) starts
     every partition afresh (positions then come from committed offsets), so a
     jump across it is allowed, as Jepsen allows skips under ``subscribe``.
   - ``nonmonotonic_send``: one producer's later acknowledged send to a partition
     landed at a lower offset than its earlier one.
   - ``aborted_read``: a value read whose send failed (``fail`` means it was
     certainly not written; the workload only says so for errors before sending).
   - ``unexpected``: a value read that was never sent.
   - ``nonmonotonic_commit``: a group's committed offset of a partition went
     backwards: an acknowledged commit, or a read of the committed offsets (the
     observer's, or where a member resumed a partition it was assigned: -1 when
     it started by ``auto_offset_reset``), lower than a commit acknowledged
     before it started (real-time order).
   - ``uncommitted_read``: a read of the committed offsets (the observer's, or
     a member's resume point) names an offset that no commit of the partition
     that may have been written (``ok``, or ``info``: an error after sending,
     which may still take effect) carried, among those invoked before the read
     ended: the coordinator served a commit it refused for certain (``fail``)
     or never received.  Reading an ``info`` commit is allowed: the broker
     documents that a refused commit whose record was replicated anyway takes
     effect.

``info`` sends (timeout, connection lost after sending) may or may not have
landed; either is fine, but one that landed counts as committed from then on.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Literal

OpType = Literal["ok", "fail", "info"]
# Examples listed per anomaly class in the report.
EXAMPLES_MAX: Final = 5

ANOMALIES: Final = (
    "lost",
    "duplicated",
    "inconsistent_offsets",
    "offset_reuse",
    "nonmonotonic_poll",
    "poll_skip",
    "nonmonotonic_send",
    "aborted_read",
    "unexpected",
    "nonmonotonic_commit",
    "uncommitted_read",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """One record sent.  ``offset`` is known only for ``ok``; ``seq`` orders one
    process's sends (the order it enqueued them)."""

    process: str
    seq: int
    type: OpType
    key: str
    value: str
    partition: int
    offset: int | None = None
    invoke_ns: int = 0
    complete_ns: int = 0
    error: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Poll:
    """Records one reader got in one poll: ``(partition, offset, value)`` in the
    order handed out.  ``final`` marks the final read of every partition."""

    process: str
    records: tuple[tuple[int, int, str], ...]
    invoke_ns: int = 0
    complete_ns: int = 0
    final: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Assign:
    """A reader's partitions changed: ``partitions`` is the new set.  ``group``
    True for a group rebalance (every partition's next read may start anywhere),
    False for an explicit assign (partitions kept must read on contiguously)."""

    process: str
    partitions: tuple[int, ...]
    group: bool
    invoke_ns: int = 0
    complete_ns: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Commit:
    """A group offset commit (``observed`` False) or a read of the committed
    offset (``observed`` True) of one partition.  ``resumed`` marks the read a
    member made when it was assigned the partition (its starting position:
    ``offset`` -1 when it started by ``auto_offset_reset``; ``invoke_ns`` is a
    time before that read was sent)."""

    process: str
    type: OpType
    group: str
    partition: int
    offset: int
    invoke_ns: int = 0
    complete_ns: int = 0
    observed: bool = False
    resumed: bool = False


Op = Send | Poll | Assign | Commit


@dataclasses.dataclass(slots=True)
class History:
    """Every operation of one run, in the order they completed."""

    ops: list[Op] = dataclasses.field(default_factory=list)

    def add(self, op: Op) -> None:
        self.ops.append(op)

    def sends(self) -> list[Send]:
        return [op for op in self.ops if isinstance(op, Send)]

    def polls(self) -> list[Poll]:
        return [op for op in self.ops if isinstance(op, Poll)]


@dataclasses.dataclass(slots=True)
class Verdict:
    """Counts and examples per anomaly class, and a few totals for the report."""

    anomalies: dict[str, list[str]]
    totals: dict[str, int]

    @property
    def valid(self) -> bool:
        return not any(self.anomalies.values())

    def count(self, kind: str) -> int:
        return len(self.anomalies[kind])

    def report(self) -> str:
        """A compact multi-line report: the verdict, totals, then one line per
        anomaly class with its count and a few examples."""
        bad = sum(len(found) for found in self.anomalies.values())
        head = "VALID" if self.valid else f"INVALID ({bad} anomalies)"
        totals = " ".join(f"{name}={value}" for name, value in self.totals.items())
        lines = [f"checker: {head}  {totals}"]
        for kind in ANOMALIES:
            found = self.anomalies[kind]
            lines.append(f"  {kind:<21}{len(found):>7}")
            lines.extend(f"      {example}" for example in found[:EXAMPLES_MAX])
        return "\n".join(lines)

    def assert_valid(self) -> None:
        """Raises AssertionError carrying the report when any anomaly was found."""
        if not self.valid:
            raise AssertionError(self.report())


class _Index:
    """Each partition's version order (step 1 of the module docstring)."""

    def __init__(self) -> None:
        self.log: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        # (partition, dense index) of each value's appearances, in offset order.
        self.places: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.order: dict[int, list[int]] = {}
        # partition -> offset -> dense index.
        self.position: dict[int, dict[int, int]] = {}

    def note(self, partition: int, offset: int, value: str) -> None:
        self.log[partition][offset].add(value)

    def build(self) -> None:
        for partition, offsets in self.log.items():
            ordered = sorted(offsets)
            self.order[partition] = ordered
            self.position[partition] = {offset: i for i, offset in enumerate(ordered)}
            for index, offset in enumerate(ordered):
                for value in sorted(offsets[offset]):
                    self.places[value].append((partition, index))

    def first(self, value: str) -> tuple[int, int] | None:
        found = self.places.get(value)
        return found[0] if found else None

    def last(self, value: str) -> tuple[int, int] | None:
        found = self.places.get(value)
        return found[-1] if found else None


def check(history: History) -> Verdict:
    """Run every check of the module docstring over ``history``."""
    ops = history.ops
    sends = [op for op in ops if isinstance(op, Send)]
    polls = [op for op in ops if isinstance(op, Poll)]
    anomalies: dict[str, list[str]] = {kind: [] for kind in ANOMALIES}
    writer: dict[str, Send] = {}
    for send in sends:
        writer.setdefault(send.value, send)
    read_by: dict[str, str] = {}
    for poll in polls:
        for _, _, value in poll.records:
            read_by.setdefault(value, poll.process)

    def committed(send: Send) -> bool:
        return send.type == "ok" or (send.type == "info" and send.value in read_by)

    index = _Index()
    for poll in polls:
        for partition, offset, value in poll.records:
            index.note(partition, offset, value)
    for send in sends:
        if committed(send) and send.offset is not None:
            index.note(send.partition, send.offset, send.value)
    index.build()

    _check_offsets(index, polls, sends, anomalies)
    _check_lost(index, polls, sends, committed, anomalies)
    _check_reads(index, ops, anomalies)
    _check_send_order(sends, anomalies)
    _check_values(polls, writer, anomalies)
    _check_commits([op for op in ops if isinstance(op, Commit)], anomalies)
    totals = {
        "sends_ok": sum(1 for s in sends if s.type == "ok"),
        "sends_info": sum(1 for s in sends if s.type == "info"),
        "sends_fail": sum(1 for s in sends if s.type == "fail"),
        "info_landed": sum(1 for s in sends if s.type == "info" and s.value in read_by),
        "polls": len(polls),
        "records_read": sum(len(p.records) for p in polls),
        "commits_ok": sum(
            1 for op in ops if isinstance(op, Commit) and op.type == "ok" and not op.observed
        ),
        "resumes": sum(1 for op in ops if isinstance(op, Commit) and op.resumed),
        "partitions": len(index.order),
    }
    return Verdict(anomalies, totals)


def _check_offsets(
    index: _Index, polls: Sequence[Poll], sends: Sequence[Send], anomalies: dict[str, list[str]]
) -> None:
    """inconsistent_offsets (reads disagree), offset_reuse (an ack disagrees),
    duplicated (a value at two places)."""
    read_at: dict[tuple[int, int], set[str]] = defaultdict(set)
    for poll in polls:
        for partition, offset, value in poll.records:
            read_at[partition, offset].add(value)
    for (partition, offset), values in sorted(read_at.items()):
        if len(values) > 1:
            anomalies["inconsistent_offsets"].append(
                f"p{partition} offset {offset} read as {sorted(values)}"
            )
    acked_at: dict[tuple[int, int], Send] = {}
    for send in sends:
        if send.type != "ok" or send.offset is None:
            continue
        place = (send.partition, send.offset)
        other = acked_at.setdefault(place, send)
        if other.value != send.value:
            anomalies["offset_reuse"].append(
                f"p{send.partition} offset {send.offset} acknowledged to {other.value!r} "
                f"({other.process}) and to {send.value!r} ({send.process})"
            )
        seen = read_at.get(place, set()) - {send.value}
        if seen:
            anomalies["offset_reuse"].append(
                f"p{send.partition} offset {send.offset} acknowledged to {send.value!r} "
                f"({send.process}) but read as {sorted(seen)}"
            )
    for value, places in sorted(index.places.items()):
        if len(places) > 1:
            where = ", ".join(
                f"p{partition}@{index.order[partition][i]}" for partition, i in places
            )
            anomalies["duplicated"].append(f"{value!r} at {where}")


def _check_lost(
    index: _Index,
    polls: Sequence[Poll],
    sends: Sequence[Send],
    committed: Callable[[Send], bool],
    anomalies: dict[str, list[str]],
) -> None:
    """lost: Jepsen's lost-write (below the highest index read, never read), and
    anything committed that the final read does not hold."""
    read: set[str] = set()
    bound: dict[int, int] = {}
    for poll in polls:
        for partition, _, value in poll.records:
            read.add(value)
            first = index.first(value)
            if first is not None and first[0] == partition:
                bound[partition] = max(bound.get(partition, -1), first[1])
    finals = [poll for poll in polls if poll.final]
    final_values = {value for poll in finals for _, _, value in poll.records}
    for send in sends:
        if not committed(send):
            continue
        last = index.last(send.value)
        if send.value not in read and last is not None and last[1] <= bound.get(last[0], -1):
            offset = index.order[last[0]][last[1]]
            anomalies["lost"].append(
                f"{send.value!r} p{last[0]} offset {offset} ({send.process}, {send.type}): "
                f"never read, though p{last[0]} was read up to index {bound[last[0]]}"
            )
        elif finals and send.value not in final_values:
            where = "" if send.offset is None else f" offset {send.offset}"
            earlier = "read earlier, " if send.value in read else ""
            anomalies["lost"].append(
                f"{send.value!r} p{send.partition}{where} ({send.process}, {send.type}): "
                f"{earlier}absent from the final read"
            )


def _check_reads(index: _Index, ops: Sequence[Op], anomalies: dict[str, list[str]]) -> None:
    """nonmonotonic_poll and poll_skip, per reader and partition, between
    assignments."""
    # process -> partition -> (offset, dense index) of the last record read.
    last: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
    for op in ops:
        if isinstance(op, Assign):
            kept = last[op.process]
            for partition in list(kept):
                if partition not in op.partitions or op.group:
                    del kept[partition]
            continue
        if not isinstance(op, Poll):
            continue
        kept = last[op.process]
        for partition, offset, _ in op.records:
            position = index.position[partition][offset]
            before = kept.get(partition)
            kept[partition] = (offset, position)
            if before is None:
                continue
            if offset <= before[0]:
                anomalies["nonmonotonic_poll"].append(
                    f"{op.process} p{partition}: offset {offset} after {before[0]}"
                )
            elif position > before[1] + 1:
                skipped = index.order[partition][before[1] + 1 : position]
                anomalies["poll_skip"].append(
                    f"{op.process} p{partition}: {before[0]} -> {offset}, skipped offsets "
                    f"{skipped[:5]}"
                )


def _check_send_order(sends: Sequence[Send], anomalies: dict[str, list[str]]) -> None:
    """nonmonotonic_send: a producer's acknowledged sends to one partition, in the
    order it enqueued them, must have increasing offsets."""
    latest: dict[tuple[str, int], Send] = {}
    for send in sorted(sends, key=lambda s: (s.process, s.seq)):
        if send.type != "ok" or send.offset is None:
            continue
        key = (send.process, send.partition)
        before = latest.get(key)
        if before is not None and before.offset is not None and send.offset <= before.offset:
            anomalies["nonmonotonic_send"].append(
                f"{send.process} p{send.partition}: {send.value!r} at {send.offset} after "
                f"{before.value!r} at {before.offset}"
            )
        latest[key] = send


def _check_values(
    polls: Sequence[Poll], writer: dict[str, Send], anomalies: dict[str, list[str]]
) -> None:
    """unexpected (never sent) and aborted_read (its send failed)."""
    reported: set[str] = set()
    for poll in polls:
        for partition, offset, value in poll.records:
            if value in reported:
                continue
            send = writer.get(value)
            if send is None:
                reported.add(value)
                anomalies["unexpected"].append(
                    f"{value!r} at p{partition}@{offset} ({poll.process}): never sent"
                )
            elif send.type == "fail":
                reported.add(value)
                anomalies["aborted_read"].append(
                    f"{value!r} at p{partition}@{offset} ({poll.process}): its send failed "
                    f"({send.error or 'no error'})"
                )


def _check_commits(commits: Iterable[Commit], anomalies: dict[str, list[str]]) -> None:
    """nonmonotonic_commit: per (group, partition), no acknowledged commit or
    observation is below a commit acknowledged before it was invoked.
    uncommitted_read: every observed offset was carried by a commit that may
    have been written, invoked before the observation ended."""
    by_place: dict[tuple[str, int], list[Commit]] = defaultdict(list)
    written: dict[tuple[str, int], list[Commit]] = defaultdict(list)
    for commit in commits:
        if commit.type == "ok":
            by_place[commit.group, commit.partition].append(commit)
        if not commit.observed:
            written[commit.group, commit.partition].append(commit)
    for (group, partition), found in sorted(by_place.items()):
        done = sorted((c for c in found if not c.observed), key=lambda c: c.complete_ns)
        done_at = [c.complete_ns for c in done]
        # highest[i]: the commit with the highest offset among done[0..i].
        highest: list[Commit] = []
        for commit in done:
            highest.append(
                commit if not highest or commit.offset > highest[-1].offset else highest[-1]
            )
        for commit in sorted(found, key=lambda c: c.invoke_ns):
            before = bisect.bisect_left(done_at, commit.invoke_ns)
            floor = highest[before - 1] if before else None
            if floor is not None and commit.offset < floor.offset:
                what = _describe_read(commit) if commit.observed else "committed"
                anomalies["nonmonotonic_commit"].append(
                    f"group {group} p{partition}: {what} {commit.offset} by {commit.process} "
                    f"after {floor.offset} was committed by {floor.process}"
                )
            if commit.observed and commit.offset >= 0:
                _check_written(commit, written[group, partition], anomalies)


def _describe_read(commit: Commit) -> str:
    return "resumed from" if commit.resumed else "read as"


def _check_written(
    read: Commit, commits: Sequence[Commit], anomalies: dict[str, list[str]]
) -> None:
    """uncommitted_read for one observation, against every commit of its partition
    (see :func:`_check_commits`)."""
    carrying = [c for c in commits if c.offset == read.offset]
    if any(c.type != "fail" and c.invoke_ns < read.complete_ns for c in carrying):
        return
    if any(c.type == "fail" for c in carrying):
        why = "only commits refused for certain carried it"
    elif carrying:
        why = "only commits invoked after the read carried it"
    else:
        why = "no commit carried it"
    anomalies["uncommitted_read"].append(
        f"group {read.group} p{read.partition}: {_describe_read(read)} {read.offset} by "
        f"{read.process}: {why}"
    )
