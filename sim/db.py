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
    """Draws "SQLite busy" holds (a writer waits in SQLite's busy handler) from the schedule.

    ``chance`` of a hold per ``BEGIN``, held 0.05-2 s of virtual time; ``count`` holds so far.
    """

    def __init__(self, draw: Callable[[], float], clock: Clock, chance: float) -> None:
        self._draw = draw
        self._clock = clock
        self.chance = chance
        self.count = 0

    async def before(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if not self.chance or not args or not isinstance(args[0], str):
            return
        if not args[0].lstrip().upper().startswith("BEGIN"):
            return
        if self._draw() < self.chance:
            self.count += 1
            await self._clock.sleep(0.05 + 1.95 * self._draw())


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
        if self._faults is not None:
            await self._faults.before(fn, args)
            if self._connection is None:
                raise ValueError("Connection closed")
        result = fn(*args, **kwargs)
        # The real hop hands the result back on a later loop turn: a caller cancelled now still
        # had its statement run, as with aiosqlite's thread.
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
