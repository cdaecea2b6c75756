"""SQLite under simulation: every call runs on the loop thread, and a process can be killed.

``InlineConnection`` is an ``aiosqlite.Connection`` whose calls run at once on the event loop
thread instead of aiosqlite's worker thread (one ``sleep(0)`` after each, where the real hop
would yield), so the order in which tasks see their results depends only on the seed, never on
thread timing. Each call may first be held up by a simulated busy database (``DbFaults``, on
virtual time). ``kill()`` closes the file without a commit: what a ``kill -9`` leaves behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import aiosqlite

from common.clock import Clock


class DbFaults:
    """Draws "SQLite busy" holds from the schedule: a ``BEGIN`` that waits in SQLite's busy
    handler for 0.05-2 s of virtual time (``chance`` per ``BEGIN``; ``count`` holds so far).
    The statement runs first and the caller waits after it, as on aiosqlite's thread: a caller
    cancelled while it waits still has its ``BEGIN`` applied."""

    def __init__(self, draw: Callable[[], float], clock: Clock, chance: float) -> None:
        self._draw = draw
        self.clock = clock
        self.chance = chance
        self.count = 0

    def hold_s(self, args: tuple[Any, ...]) -> float:
        """Seconds this call is held (0: none)."""
        if not self.chance or not args or not isinstance(args[0], str):
            return 0.0
        if not args[0].lstrip().upper().startswith("BEGIN"):
            return 0.0
        if self._draw() < self.chance:
            self.count += 1
            return 0.05 + 1.95 * self._draw()
        return 0.0


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection that runs each call on the loop thread (see the module doc)."""

    def __init__(self, path: str, faults: DbFaults | None) -> None:
        super().__init__(partial(sqlite3.connect, path, isolation_level=None, check_same_thread=False), 64)
        self._faults = faults

    def __await__(self) -> Generator[Any, None, InlineConnection]:
        return self._open().__await__()

    async def _open(self) -> InlineConnection:
        self._connection = self._connector()
        await asyncio.sleep(0)
        return self

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        result = fn(*args, **kwargs)
        # The real hop hands the result back on a later loop turn (or after a busy wait): a
        # caller cancelled meanwhile still had its statement run, as with aiosqlite's thread.
        hold = self._faults.hold_s(args) if self._faults is not None else 0.0
        if hold:
            await self._faults.clock.sleep(hold)  # type: ignore[union-attr]
        else:
            await asyncio.sleep(0)
        return result

    def stop(self) -> asyncio.Future[Any] | None:
        self.kill()
        return None

    async def close(self) -> None:
        self.kill()
        await asyncio.sleep(0)

    def kill(self) -> None:
        """Close the file now; an open transaction is rolled back (a crashed process)."""
        self._running = False
        conn, self._connection = self._connection, None
        if conn is not None:
            # close() leaves the handle a zombie, its transaction and locks intact, while a
            # cursor still holds a statement; a dead process holds nothing: roll back first.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            conn.close()
