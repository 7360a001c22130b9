"""A hypothesis state machine: a Partition (log in a temp dir) against a plain model.

The model is the list of batches the log should hold.  What the partition answers
an idempotent producer's batch follows from that list alone: a producer's state is
its last batches of its newest epoch still in the log (what the partition rebuilds
on open, and after a truncation for the producers it touched).  Steps: appends of
one to three batches, plain or of three producers (next sequences, retries of
recent or truncated batches, gaps, unknown-producer and epoch cases), inline or
through the awaited path; truncations to any offset; close and reopen.  After every
step: the partition's invariants (producer state below the log end included), its
offsets and truncation count, and the batches read back.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from broker.partition import AppendResult, Partition
from broker.producer_state import REMEMBERED_BATCHES_MAX, SEQUENCE_MODULUS
from broker.storage.config import LogConfig
from client.errors import DistributaryError, OutOfOrderSequenceError, UnknownProducerIdError
from client.records.builder import BatchBuilder
from client.records.header import iter_batches

# A pass takes seconds; shrinking a failure to a short example takes minutes.
pytestmark = pytest.mark.timeout(600)

START_MS = 1_700_000_000_000
# Small segments: a truncation often spans several.
CONFIG = LogConfig.from_mapping({"segment_bytes": 1024, "index_interval_bytes": 128})
PRODUCERS = (1, 2, 3)
# Truncations and closes fsync: on tmpfs that costs nothing, and the model tests
# the partition's logic, not the disk.
TEMP_PARENT = "/dev/shm" if Path("/dev/shm").is_dir() else None
SEQUENCE_KINDS = ("next", "next", "retry", "zero", "gap", "any")


@dataclass(frozen=True)
class ModelBatch:
    base_offset: int
    count: int
    producer_id: int = -1
    epoch: int = -1
    base_sequence: int = -1

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.count - 1

    @property
    def last_sequence(self) -> int:
        return (self.base_sequence + self.count - 1) % SEQUENCE_MODULUS


@dataclass(frozen=True)
class Spec:
    """A batch to send: its record count and (producer id, epoch, base sequence)."""

    count: int
    producer_id: int = -1
    epoch: int = -1
    base_sequence: int = -1

    def build(self) -> bytes:
        builder = BatchBuilder(
            producer_id=self.producer_id,
            producer_epoch=self.epoch,
            base_sequence=self.base_sequence,
        )
        for index in range(self.count):
            builder.append(b"r%d" % index, timestamp_ms=START_MS + index)
        return bytes(builder.build())


class PartitionModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="partition-model-", dir=TEMP_PARENT))
        self.partition = trio.run(self._open)
        self.batches: list[ModelBatch] = []
        self.truncations = 0
        # Every batch ever sent per producer, truncated ones included: retries pick here.
        self.sent: dict[int, list[Spec]] = {producer_id: [] for producer_id in PRODUCERS}

    async def _open(self) -> Partition:
        return await Partition.open(self.directory, "t", 0, CONFIG, lambda: START_MS)

    def teardown(self) -> None:
        trio.run(self.partition.close)
        shutil.rmtree(self.directory)

    @property
    def end(self) -> int:
        return self.batches[-1].last_offset + 1 if self.batches else 0

    # -- the model's verdicts ---------------------------------------------------------

    def producer_batches(self, producer_id: int) -> list[ModelBatch]:
        """The producer's last batches of its newest epoch in the log (what the
        partition remembers)."""
        mine = [batch for batch in self.batches if batch.producer_id == producer_id]
        if not mine:
            return []
        newest = [batch for batch in mine if batch.epoch == mine[-1].epoch]
        return newest[-REMEMBERED_BATCHES_MAX:]

    def verdict(self, spec: Spec) -> ModelBatch | type[DistributaryError] | None:
        """The remembered batch (a duplicate), an error class, or None (appended)."""
        if spec.producer_id < 0:
            return None
        remembered = self.producer_batches(spec.producer_id)
        if not remembered:
            return None if spec.base_sequence == 0 else UnknownProducerIdError
        epoch = remembered[-1].epoch
        if spec.epoch != epoch:
            if spec.epoch > epoch and spec.base_sequence == 0:
                return None
            return OutOfOrderSequenceError
        if spec.base_sequence == (remembered[-1].last_sequence + 1) % SEQUENCE_MODULUS:
            return None
        for batch in remembered:
            if batch.base_sequence == spec.base_sequence:
                return batch
        return OutOfOrderSequenceError

    # -- drawing batches --------------------------------------------------------------

    def draw_spec(self, data: st.DataObject) -> Spec:
        count = data.draw(st.integers(1, 3), label="count")
        producer_id = data.draw(st.sampled_from((-1, *PRODUCERS, *PRODUCERS)), label="producer")
        if producer_id < 0:
            return Spec(count)
        remembered = self.producer_batches(producer_id)
        epoch = remembered[-1].epoch if remembered else 0
        epoch = max(0, epoch + data.draw(st.sampled_from((0, 0, 0, 1, -1)), label="epoch"))
        kind = data.draw(st.sampled_from(SEQUENCE_KINDS), label="sequence kind")
        sent = self.sent[producer_id]
        if kind == "retry" and sent:
            return sent[-data.draw(st.integers(1, min(len(sent), 8)), label="retry")]
        next_sequence = (remembered[-1].last_sequence + 1) % SEQUENCE_MODULUS if remembered else 0
        sequence = {
            "next": next_sequence,
            "retry": next_sequence,
            "zero": 0,
            "gap": next_sequence + data.draw(st.integers(1, 3), label="gap"),
            "any": data.draw(st.integers(0, 30), label="sequence"),
        }[kind]
        return Spec(count, producer_id, epoch, sequence)

    # -- rules ------------------------------------------------------------------------

    @initialize(rounds=st.integers(0, 8), producer_ids=st.permutations(PRODUCERS))
    def prefill(self, rounds: int, producer_ids: list[int]) -> None:
        """Some producers' in-order history first, interleaved: more than the
        remembered batches each, so truncations cut into it."""
        for round_number in range(rounds):
            for producer_id in producer_ids[: 1 + round_number % len(producer_ids)]:
                remembered = self.producer_batches(producer_id)
                sequence = remembered[-1].last_sequence + 1 if remembered else 0
                spec = Spec(1, producer_id, 0, sequence)
                self.sent[producer_id].append(spec)
                self.batches.append(ModelBatch(self.end, 1, producer_id, 0, sequence))
                self.partition.append_now(memoryview(bytearray(spec.build())))

    @rule(
        data=st.data(), batch_count=st.integers(1, 3), inline=st.sampled_from((True, True, False))
    )
    def append(self, data: st.DataObject, batch_count: int, inline: bool) -> None:
        specs = [self.draw_spec(data) for _ in range(batch_count)]
        payload = memoryview(bytearray(b"".join(spec.build() for spec in specs)))
        expected_error: type[DistributaryError] | None = None
        first = last = -1
        for spec in specs:
            verdict = self.verdict(spec)
            event(_verdict_name(spec, verdict))
            if isinstance(verdict, type):
                expected_error = verdict
                break
            if spec.producer_id >= 0:
                self.sent[spec.producer_id].append(spec)
            if verdict is None:
                verdict = ModelBatch(
                    self.end, spec.count, spec.producer_id, spec.epoch, spec.base_sequence
                )
                self.batches.append(verdict)
            first = verdict.base_offset if first < 0 else first
            last = verdict.last_offset
        try:
            result = self._append(payload, inline=inline)
        except (UnknownProducerIdError, OutOfOrderSequenceError) as error:
            assert type(error) is expected_error, (error, expected_error)
            return
        assert expected_error is None, expected_error
        assert (result.base_offset, result.last_offset) == (first, last), (result, first, last)

    def _append(self, payload: memoryview, *, inline: bool) -> AppendResult:
        partition = self.partition
        if inline and partition.can_append_now():
            return partition.append_now(payload)

        async def append() -> AppendResult:
            return await partition.append(payload)

        return trio.run(append)

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        end = self.end
        recent = st.integers(max(0, end - 6), end)  # mostly the last few batches
        offset = data.draw(st.one_of(recent, recent, st.integers(0, end + 1)), label="offset")

        async def truncate() -> int:
            return await self.partition.truncate_to(offset)

        new_end = trio.run(truncate)
        if offset < self.end:
            kept = [batch for batch in self.batches if batch.last_offset < offset]
            cut_producers = {batch.producer_id for batch in self.batches[len(kept) :]} - {-1}
            if cut_producers & {batch.producer_id for batch in kept}:
                event("truncation into a producer's batches, some kept")
            self.batches = kept
            self.truncations += 1
        assert new_end == self.end

    @rule()
    def reopen(self) -> None:
        async def reopen() -> Partition:
            await self.partition.close()
            return await self._open()

        self.partition = trio.run(reopen)
        self.truncations = 0

    # -- after every step -------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        partition = self.partition
        partition.check_invariants()
        assert partition.log_start_offset == 0
        assert partition.log_end_offset == partition.high_watermark == self.end
        assert partition.truncations == self.truncations
        read: list[ModelBatch] = []
        offset = 0
        for _ in range(len(self.batches) + 1):
            if offset >= self.end:
                break
            with partition.read(offset, 1 << 20, whole_batch=True) as region:
                data = region.read_bytes()
                offset = region.next_offset
            read.extend(
                ModelBatch(
                    header.base_offset,
                    header.record_count,
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence,
                )
                for header in iter_batches(data)
            )
        assert read == self.batches


def _verdict_name(spec: Spec, verdict: ModelBatch | type[DistributaryError] | None) -> str:
    if spec.producer_id < 0:
        return "plain batch"
    if verdict is None:
        return "sequenced batch appended"
    if isinstance(verdict, ModelBatch):
        return "duplicate"
    return verdict.__name__


PartitionModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,  # one bug shrunk well rather than several by halves
)
TestPartitionModel = PartitionModel.TestCase
TestPartitionModel.__doc__ = (
    "Proves a partition's offsets, verdicts on idempotent batches and contents follow "
    "its log under appends, retries, truncations and reopenings."
)
