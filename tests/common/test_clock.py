"""``wait_with_timeout`` and ``wait_for_event`` on both clocks: the result when the awaitable
finishes first, a ``TimeoutError`` (and the awaitable cancelled) when the clock's time runs out
first."""

from __future__ import annotations

import asyncio

import pytest

from common.clock import Clock, FakeClock, SystemClock, wait_with_timeout


async def _never(cancelled: list[bool]) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.append(True)
        raise


async def _value() -> str:
    await asyncio.sleep(0)
    return "done"


@pytest.mark.parametrize("kind", ["system", "fake"])
async def test_the_first_to_finish_decides(kind: str) -> None:
    clock: Clock = SystemClock() if kind == "system" else FakeClock()
    assert await wait_with_timeout(clock, _value(), 5.0) == "done"
    cancelled: list[bool] = []
    waiter = asyncio.ensure_future(wait_with_timeout(clock, _never(cancelled), 0.01))
    if isinstance(clock, FakeClock):
        await clock.advance(0.01)
    with pytest.raises(TimeoutError):
        await waiter  # the real clock: 10 ms of real time, the one thing measured here
    assert cancelled == [True]


async def test_errors_of_the_awaitable_propagate() -> None:
    async def boom() -> None:
        raise ValueError("inner")

    with pytest.raises(ValueError, match="inner"):
        await wait_with_timeout(SystemClock(), boom(), 5.0)


@pytest.mark.parametrize("kind", ["system", "fake"])
async def test_wait_for_event_says_whether_the_event_came(kind: str) -> None:
    from common.clock import wait_for_event

    clock: Clock = SystemClock() if kind == "system" else FakeClock()
    event = asyncio.Event()
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_for_event(clock, event, 5.0) is True
    assert await wait_for_event(clock, event, 0.0) is True  # already set: at once
    quiet = asyncio.Event()
    waiter = asyncio.ensure_future(wait_for_event(clock, quiet, 0.01))
    if isinstance(clock, FakeClock):
        await clock.advance(0.01)
    assert await waiter is False  # the real clock: 10 ms of real time
