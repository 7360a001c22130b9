"""The scrubber task: re-verify the CRCs of every sealed segment, forever, at a
bounded rate (``limits.scrub_bytes_per_second``; 0 turns it off).

Round robin over the open partitions, one step of at most :data:`STEP_BYTES_MAX`
per partition per round (AsyncLog.scrub_step: a worker thread reads and checks
whole batches); after each step the task sleeps as long as those bytes take at
the configured rate, so the disk sees a steady trickle, never a burst.  What it
finds is logged by the log (``corrupt batch found by the scrubber``) and counted
here; the log stops serving the corrupt range, so a consumer gets the records
before it and then CORRUPT_BATCH naming the offsets to skip.  Nothing on the
produce or fetch path waits for it.
"""

from __future__ import annotations

from typing import Final

import trio

from broker.logging import get_logger
from broker.state import Broker
from client.errors import LogCorruptError, StorageError

# One step reads at most 1 MiB: a short worker-thread job, fine-grained pacing.
STEP_BYTES_MAX: Final = 1024 * 1024
# With nothing sealed to verify anywhere, look again this often (10 s).
IDLE_RECHECK_S: Final = 10.0

_logger = get_logger()


class ScrubStats:
    """What the scrubber did since start (for tests and operators)."""

    __slots__ = ("bytes_verified", "corrupt_batches")

    def __init__(self) -> None:
        self.bytes_verified = 0
        self.corrupt_batches = 0


async def scrub_forever(broker: Broker, stats: ScrubStats) -> None:
    """Run until cancelled; returns at once when scrubbing is off."""
    rate = broker.limits.scrub_bytes_per_second
    if rate == 0:
        return
    step_bytes = min(STEP_BYTES_MAX, rate)
    while True:  # until the server's nursery is cancelled
        verified_this_round = 0
        for partition in broker.topics.all_partitions():
            if partition.closed:
                continue
            try:
                read, corrupt = await partition.storage_log.scrub_step(step_bytes)
            except (StorageError, LogCorruptError) as error:
                partition.logger.error("scrub step failed", error=error.message)
                continue
            stats.bytes_verified += read
            stats.corrupt_batches += corrupt is not None
            verified_this_round += read
            if read:
                await trio.sleep(read / rate)
        if not verified_this_round:
            await trio.sleep(IDLE_RECHECK_S)
