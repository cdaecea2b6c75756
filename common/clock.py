"""Injected time: a ``Clock`` (monotonic + wall + sleep), the real one, and a jumping fake.

Monotonic time drives timeouts and backoff; wall time (Unix epoch seconds, UTC) drives cron and
``wakeAt``; the two together detect a resume (see ``ResumeDetector``). Model: trio's MockClock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """What every timed component takes instead of calling ``time``/``asyncio.sleep``."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (only differences mean anything)."""
        ...

    def wall(self) -> float:
        """Unix epoch seconds (UTC); may jump on suspend/resume or NTP steps."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds`` of monotonic time (<= 0 yields once)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when a test calls ``advance``/``jump_wall``.

    ``advance(s)`` moves both clocks forward through every sleeper deadline in order, waking each
    sleeper and letting the loop run before moving on, so timing tests are exact and instant.
    ``jump_wall(s)`` moves the wall clock alone (a suspended machine: monotonic frozen).
    ``sleeps`` records every requested sleep duration, in order.
    """

    def __init__(self, wall: float = 1_800_000_000.0, monotonic: float = 1_000.0) -> None:
        self._mono = monotonic
        self._wall = wall
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []
        self._sleeper_added = asyncio.Event()

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self._mono + seconds, next(self._seq), fut))
        self._sleeper_added.set()
        await fut

    @property
    def pending(self) -> list[float]:
        """Remaining seconds of every sleeper still waiting, soonest first."""
        return sorted(d - self._mono for d, _, f in self._heap if not f.done())

    async def settle(self, rounds: int = 20) -> None:
        """Let woken tasks run (yield to the loop ``rounds`` times)."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move monotonic and wall time forward by ``seconds``, waking sleepers in order."""
        target = self._mono + seconds
        await self.settle()
        while self._heap and self._heap[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._heap)
            if fut.done():
                continue
            self._wall += deadline - self._mono
            self._mono = deadline
            fut.set_result(None)
            await self.settle()
        self._wall += target - self._mono
        self._mono = target
        await self.settle()

    async def jump(self, seconds: float) -> None:
        """Move both clocks at once, then wake every sleeper whose deadline passed (late).

        Unlike ``advance``, sleepers do not run at their own deadlines: a process that was
        frozen for ``seconds`` and then noticed.
        """
        self._mono += seconds
        self._wall += seconds
        while self._heap and self._heap[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._heap)
            if not fut.done():
                fut.set_result(None)
        await self.settle()

    def jump_wall(self, seconds: float) -> None:
        """Move only the wall clock (simulates a suspend: monotonic did not count it)."""
        self._wall += seconds


async def wait_with_timeout(clock: Clock, awaitable: Awaitable[T], seconds: float) -> T:
    """Await ``awaitable`` for at most ``seconds`` of ``clock`` time.

    Returns its result; raises ``TimeoutError`` when the clock's sleep finishes first (the
    awaitable, run as a task of its own, is then cancelled and left to finish its cleanup:
    the caller does not wait for it). Exceptions of the awaitable propagate. To wait for an
    ``asyncio.Event`` use ``wait_for_event`` (cheaper on the real clock).
    """
    task = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        done, _ = await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        timer.cancel()
        raise
    if task in done:
        timer.cancel()
        return task.result()
    task.cancel()
    raise TimeoutError(f"timed out after {seconds} s")


async def wait_for_event(clock: Clock, event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` of ``clock`` time pass: True if it was set.

    On the real clock one loop timer around ``event.wait()`` (``asyncio.timeout``), no task:
    the cron scheduler and the watchers sleep this way between every two ticks, and two tasks
    and an ``asyncio.wait`` per sleep were a tenth of the cron bench's CPU (issue #16). Any
    other clock goes through ``wait_with_timeout``.
    """
    if event.is_set():
        return True
    try:
        if type(clock) is SystemClock:
            async with asyncio.timeout(max(0.0, seconds)):
                await event.wait()
        else:
            await wait_with_timeout(clock, event.wait(), seconds)
    except TimeoutError:
        return event.is_set()
    return True
