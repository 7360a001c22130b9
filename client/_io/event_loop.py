"""The running event loop's native tools: Event class, clock, checkpoint, timed waits.

The SDK runs on trio and on asyncio (anyio for everything but the per-request
path).  anyio's ``Event()`` and ``current_time()`` look the running loop up on
every call; the per-request path (one event and one clock read per request)
uses the loop's own ones instead, gathered once per client in
:class:`EventLoopTools`.  Both cancel correctly under anyio's cancel scopes: a
cancelled wait is a cancelled wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import sniffio


class LoopEvent(Protocol):
    """What we need of ``asyncio.Event`` / ``trio.Event``."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


class EventLoopTools:
    """The running event loop's native Event class and clock.

    anyio's ``Event()`` and ``current_time()`` look the loop up on every call;
    on the per-request path we use the native ones directly (both cancel
    correctly under anyio's cancel scopes: a cancelled wait is a cancelled wait).
    """

    __slots__ = (
        "call_at",
        "call_soon",
        "checkpoint",
        "clock",
        "event",
        "is_asyncio",
        "wait_or_timeout",
    )

    def __init__(self) -> None:
        library = sniffio.current_async_library()
        self.is_asyncio = library == "asyncio"
        self.checkpoint: Callable[[], Awaitable[None]]
        # wait_or_timeout(event, timeout_s): park until the event is set or the
        # time has passed, without a cancel scope.  On asyncio the timeout sets
        # the event, so use a fresh event per wait.
        self.wait_or_timeout: Callable[[LoopEvent, float], Awaitable[None]]
        # asyncio: call_at(when, callback) on the ``clock`` scale (a cancellable
        # timer handle); None on trio.
        self.call_at: Callable[[float, Callable[[], None]], asyncio.TimerHandle] | None = None
        # asyncio: call_soon(callback), after what is already due (tasks just woken
        # included); None on trio.
        self.call_soon: Callable[[Callable[[], None]], asyncio.Handle] | None = None
        if self.is_asyncio:
            loop = asyncio.get_running_loop()
            self.call_at = loop.call_at
            self.call_soon = loop.call_soon
            self.event: Callable[[], LoopEvent] = partial(_AsyncioEvent, loop)
            # The standard loop's time() is time.monotonic() behind a Python call:
            # read the C function directly (once per request and per poll).
            self.clock: Callable[[], float] = (
                time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
            )
            self.checkpoint = _asyncio_checkpoint
            self.wait_or_timeout = partial(_asyncio_wait_or_timeout, loop)
        else:
            assert library == "trio", f"unsupported event loop {library!r}"
            import trio

            self.event = trio.Event
            self.clock = trio.current_time
            self.checkpoint = trio.lowlevel.checkpoint
            self.wait_or_timeout = _trio_wait_or_timeout


async def _asyncio_checkpoint() -> None:
    """Let the other ready tasks run (what anyio.lowlevel.checkpoint does on asyncio)."""
    await asyncio.sleep(0)


async def _asyncio_wait_or_timeout(
    loop: asyncio.AbstractEventLoop, event: LoopEvent, timeout_s: float
) -> None:
    # A timer that sets the event costs a fraction of a cancel scope.
    timer = loop.call_later(max(0.0, timeout_s), event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()


class _AsyncioEvent:
    """``asyncio.Event`` bound to its loop when made: asyncio.Event looks the
    running loop up on its first wait, which costs a getpid() system call."""

    __slots__ = ("_loop", "_value", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._value = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(self) -> bool:
        if self._value:
            return True
        # One future per waiter, as asyncio.Event: a cancelled waiter cancels
        # only its own.
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)
        return True


async def _trio_wait_or_timeout(event: LoopEvent, timeout_s: float) -> None:
    import trio

    with trio.move_on_after(max(0.0, timeout_s)):
        await event.wait()
