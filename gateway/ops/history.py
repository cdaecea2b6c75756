"""State history in state.db for the operator page (SPEC 8.5): transitions and wakes.

``HistoryStore`` queues rows and writes them from a background task, so the idle watcher
never waits on SQLite and never sees a write error: ``transition()`` and ``wake()`` append to
an in-memory queue and return at once. The writer commits everything queued in one
transaction; a failed write drops that batch with one WARNING naming the cause and the row
count (history is an observer: losing a row must never stop a flip or a wake). The queue is
bounded (``MAX_QUEUE`` rows); beyond it new rows are dropped and counted, with one WARNING
per overflow episode, so a wedged database cannot grow memory without limit.

Rows (migration 9 in ``gateway/statedb.py``):
- ``state_history``: ``at`` (Unix seconds), ``kind`` (``watcher`` or ``relay``), ``from_state``,
  ``to_state``, ``reason``. Watcher rows use the watcher's states plus ``stopped`` for the
  process start (``stopped -> live``) and a graceful shutdown (``<state> -> stopped``).
- ``wake_history``: ``at`` (when the wake left dormancy), ``trigger`` (``poke``, ``due job``,
  ``resume``), ``latency_ms`` (None when the wake never completed) and ``ended_by`` (what
  ended the measurement; see ``gateway/ops/wakes.py``).

Retention: ``prune(cutoff)`` deletes rows older than ``cutoff`` from both tables; the sidecar
runs it with ``gateway.history_retention_days`` (default 14) at start and once a day.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

import aiosqlite

from common.sqlite import write_one, write_tx

log = logging.getLogger("gateway.ops")

MAX_QUEUE = 10_000


class Transition(NamedTuple):
    at: float
    kind: str
    from_state: str
    to_state: str
    reason: str


class Wake(NamedTuple):
    at: float
    trigger: str
    latency_ms: float | None
    ended_by: str


class HistoryStore:
    """Queued writer (and pruner) of ``state_history`` and ``wake_history``."""

    def __init__(self, db: aiosqlite.Connection, *, max_queue: int = MAX_QUEUE) -> None:
        self.db = db
        self.max_queue = max_queue
        self._queue: list[Transition | Wake] = []
        self._queued = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._overflowing = False
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ops-history-writer")

    def transition(self, kind: str, from_state: str, to_state: str, reason: str, at: float) -> None:
        """Queue one transition; never blocks, never raises for a write problem."""
        self._put(Transition(at, kind, from_state, to_state, reason))

    def wake(self, at: float, trigger: str, latency_ms: float | None, ended_by: str) -> None:
        """Queue one wake; never blocks, never raises for a write problem."""
        self._put(Wake(at, trigger, latency_ms, ended_by))

    def _put(self, row: Transition | Wake) -> None:
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning("state history queue full (%d rows): dropping new rows", self.max_queue)
            return
        self._overflowing = False
        self._queue.append(row)
        self._queued.set()

    async def flush(self) -> int:
        """Write everything queued now; the number of rows written (0 after a failure)."""
        async with self._lock:
            batch, self._queue = self._queue, []
            self._queued.clear()
            if not batch:
                return 0
            transitions = [r for r in batch if isinstance(r, Transition)]
            wakes = [r for r in batch if isinstance(r, Wake)]
            try:
                async with write_tx(self.db):
                    if transitions:
                        await self.db.executemany(
                            "INSERT INTO state_history (at, kind, from_state, to_state, reason)"
                            " VALUES (?, ?, ?, ?, ?)",
                            transitions,
                        )
                    if wakes:
                        await self.db.executemany(
                            "INSERT INTO wake_history (at, trigger, latency_ms, ended_by)"
                            " VALUES (?, ?, ?, ?)",
                            wakes,
                        )
            except Exception as exc:
                self.dropped += len(batch)
                log.warning("state history write failed, %d row(s) dropped: %s", len(batch), exc)
                return 0
            self.written += len(batch)
            return len(batch)

    async def _run(self) -> None:
        while not self._closing:
            await self._queued.wait()
            await self.flush()

    async def aclose(self) -> None:
        """Write what is queued and stop the writer (asked to finish, not cancelled)."""
        self._closing = True
        self._queued.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()

    async def prune(self, cutoff: float) -> int:
        """Delete transitions and wakes older than ``cutoff`` (Unix seconds); rows deleted."""
        a = await write_one(self.db, "DELETE FROM state_history WHERE at < ?", (cutoff,))
        b = await write_one(self.db, "DELETE FROM wake_history WHERE at < ?", (cutoff,))
        return max(a.rowcount, 0) + max(b.rowcount, 0)
