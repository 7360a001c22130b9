"""Tests for broker.storage.async_log.AsyncLog (trio mode)."""

from __future__ import annotations

from pathlib import Path

import trio

from broker.storage.async_log import AsyncLog
from broker.storage.log import Log

from .conftest import START_MS, ManualClock, make_batch, read_all, small_config


async def test_async_append_flush_read_close(tmp_path: Path) -> None:
    """The async shell appends, fsyncs per append when asked, reads and closes cleanly."""
    clock = ManualClock()
    log = await AsyncLog.open(
        tmp_path / "t-0", small_config(flush_policy="every-append"), clock_ms=clock
    )
    result = await log.append(make_batch(0, 3))
    assert result.base_offset == 0 and log.log.recovery_offset == 3
    with log.read(0, 1 << 20) as region:
        assert region.read_bytes() == log.log.read_bytes(0, 1 << 20)
    with log.read(3, 100) as region:
        assert region.length == 0
    assert log.offset_for_timestamp(START_MS) == 0
    assert log.batch_at(2).base_offset == 0
    assert (log.size_bytes, log.segment_count) == (log.log.size_bytes, 1)
    log.check_invariants()
    await log.close()
    await log.close()
    assert (tmp_path / "t-0" / "clean-shutdown").exists()


async def test_concurrent_flushes_and_appends(tmp_path: Path) -> None:
    """Appends interleaved with concurrent flushes and retention stay consistent."""
    clock = ManualClock()
    log = await AsyncLog.open(tmp_path / "t-0", small_config(retention_bytes=2000), clock_ms=clock)

    async def appender() -> None:
        for number in range(100):
            await log.append(make_batch(number, 1))
            await trio.sleep(0)

    async def flusher() -> None:
        for _ in range(20):
            await log.flush()
            await log.enforce_retention()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(appender)
        nursery.start_soon(flusher)
        nursery.start_soon(flusher)
    log.log.check_invariants()
    assert log.end_offset == 100 and log.start_offset > 0
    assert [value for _, value in read_all(log.log)][-1] == b"v99"
    assert await log.flush() == 100
    await log.close()


async def test_maintenance_flushes_on_interval_and_enforces_retention(tmp_path: Path) -> None:
    """A maintenance round flushes under the interval policy and runs retention when due."""
    clock = ManualClock()
    config = small_config(
        flush_policy="interval",
        flush_interval_ms=10,
        retention_bytes=0,
        retention_check_interval_ms=10,
    )
    log = await AsyncLog.open(tmp_path / "t-0", config, clock_ms=clock)
    await log.append(make_batch(0, 1))
    log.log.roll()
    log.append_now(make_batch(1, 1))
    assert log.log.recovery_offset == 0 and not log.needs_flush()
    clock.advance(10)
    assert log.needs_flush()
    await log.maintain()
    assert log.log.recovery_offset == 2
    assert log.start_offset == 1
    await log.close()


async def test_async_truncate_and_reopen(tmp_path: Path) -> None:
    """truncate_to through the shell (in a worker thread) is durable across a reopen."""
    clock = ManualClock()
    log = await AsyncLog.open(tmp_path / "t-0", small_config(), clock_ms=clock)
    for number in range(5):
        await log.append(make_batch(number, 1))
    assert await log.truncate_to(3) == 3
    await log.close()
    reopened = Log.open(tmp_path / "t-0", small_config(), clock_ms=clock)
    assert reopened.end_offset == 3
    reopened.close()
