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
from collections import Counter
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import aiosqlite

from common.clock import Clock


class DbFaults:
    """Holds drawn from the schedule, on virtual time: a ``BEGIN`` that waits in SQLite's busy
    handler for 0.05-2 s (``busy`` chance per BEGIN) and a ``SELECT`` slowed by I/O contention
    for 1-200 ms (``slow_read`` chance per SELECT); ``counts`` by kind. The statement runs
    first and its caller waits after it, as on aiosqlite's thread: a caller cancelled while it
    waits still has its statement applied (a BEGIN left open, a read statement left unreset)."""

    def __init__(self, draw: Callable[[], float], clock: Clock, busy: float, slow_read: float) -> None:
        self._draw = draw
        self.clock = clock
        self.busy = busy
        self.slow_read = slow_read
        self.counts: Counter[str] = Counter()

    def hold_s(self, args: tuple[Any, ...]) -> float:
        """Virtual seconds this call's caller waits for its result (0: the next loop turn)."""
        if not args or not isinstance(args[0], str):
            return 0.0
        verb = args[0].lstrip()[:6].upper()
        if verb.startswith("BEGIN") and self.busy and self._draw() < self.busy:
            self.counts["sqlite_busy"] += 1
            return 0.05 + 1.95 * self._draw()
        if verb == "SELECT" and self.slow_read and self._draw() < self.slow_read:
            self.counts["sqlite_slow_read"] += 1
            return 0.001 + 0.199 * self._draw()
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
        if args and isinstance(args[0], str) and args[0].upper().startswith("PRAGMA BUSY_TIMEOUT"):
            # One thread for every connection: SQLite's busy handler would block the loop while
            # the holder it waits for cannot run. Busy is answered at once instead (a checkpoint
            # reports busy and is retried; waits are the schedule's holds).
            args = ("PRAGMA busy_timeout=0", *args[1:])
        result = fn(*args, **kwargs)
        # The real hop hands the result back on a later loop turn (or after a busy wait or a
        # slow read): a caller cancelled meanwhile still had its statement run, as with
        # aiosqlite's thread.
        faults = self._faults
        hold = faults.hold_s(args) if faults is not None else 0.0
        if faults is not None and hold:
            await faults.clock.sleep(hold)
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
