"""Keep a WAL database's log bounded without checkpointing on its writers' connection.

SQLite's automatic checkpoint runs inside the ``COMMIT`` that crosses ``wal_autocheckpoint``
pages, on the committing connection: on state.db that is the sidecar's one aiosqlite thread,
so a tick of the cron scheduler waited behind it (issue #16: p99 lateness 5.4 ms with it, 2.2
without). ``WalCheckpointer`` turns it off on that connection and checkpoints from a
connection of its own instead, on its own thread:

- while writes go on: ``PASSIVE`` every ``period_s``. It never blocks a writer, but under
  continuous writes it never finishes either, and a log restarts from its start only after a
  checkpoint finished (passive checkpoints alone let it grow to 140-570 MB). So once the log
  holds ``max_wal_bytes``, one passive checkpoint runs while the writers are held in the event
  loop (``common.sqlite.writes_held``): it copies only what the previous one left, finishes,
  and the next write restarts the log. TRUNCATE or RESTART would hold writers in SQLite's busy
  handler instead, which sleeps in whole milliseconds (stalls of 30-90 ms were measured);
- once a period passes without a write: ``TRUNCATE`` (the log file back to 0 bytes), the
  connection is closed and the checkpointer sleeps until the next write: no wake-ups while idle.

Writes are noticed through ``common.sqlite.on_write`` (every ``write_one``, ``write_tx`` and
``run_tx`` on the connection). ``journal_size_limit`` caps what a restarted log keeps on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import aiosqlite

from common.clock import Clock
from common.sqlite import on_write, open_db, writes_held

log = logging.getLogger("common.wal")

PERIOD_S = 0.1
"""Seconds between checkpoints while writes go on, and the quiet time that counts as idle."""
MAX_WAL_BYTES = 16 * 1024 * 1024
"""A log holding this much is checkpointed to the end with the writers held, so it restarts."""
CATCH_UP_BYTES = 256 * 1024
"""What a held checkpoint may be left to copy (bytes); more is first copied unheld."""
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
"""``PRAGMA journal_size_limit``: the most a restarted log keeps of its file, bytes."""


class WalCheckpointer:
    """Checkpoints the database at ``path`` for the writer connection ``db``.

    ``start()`` turns ``db``'s automatic checkpoint off and registers for its writes; ``run()``
    is the task (cancel it to stop: the automatic checkpoint is turned back on by ``aclose()``).
    ``checkpoints`` counts them (``PASSIVE``, ``TRUNCATE``, ``restart``: a passive one with the
    writers held) for the bench and tests. Errors of one checkpoint
    (a busy database) are logged and the next period tries again.
    """

    def __init__(
        self,
        path: str,
        db: aiosqlite.Connection,
        clock: Clock,
        *,
        period_s: float = PERIOD_S,
        max_wal_bytes: int = MAX_WAL_BYTES,
    ) -> None:
        self.path = path
        self.db = db
        self.clock = clock
        self.period_s = period_s
        self.max_wal_bytes = max_wal_bytes
        self.checkpoints: dict[str, int] = {}
        self.checkpointed = asyncio.Event()
        """Set after every checkpoint (tests and the bench clear and await it)."""
        self._dirty = asyncio.Event()
        self._conn: aiosqlite.Connection | None = None
        self._frame_bytes = 4096 + 24

    async def start(self) -> None:
        await self.db.execute("PRAGMA wal_autocheckpoint=0")
        await self.db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        on_write(self.db, self._dirty.set)
        self._dirty.set()  # whatever the log holds now is checkpointed soon

    def wal_bytes(self) -> int:
        """The size of the ``-wal`` file now (0 when there is none)."""
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    async def run(self) -> None:
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                await self.clock.sleep(self.period_s)
                if not self._dirty.is_set():
                    await self._checkpoint("TRUNCATE")  # idle: the log back to 0 bytes
                    await self._close_conn()
                    continue
                logged, left = await self._checkpoint("PASSIVE")
                if logged < self.max_wal_bytes:
                    continue
                # Catch up unheld while much is left, so the held one is short.
                for _ in range(3):
                    if left <= CATCH_UP_BYTES:
                        break
                    logged, left = await self._checkpoint("PASSIVE")
                async with writes_held(self.db):
                    await self._checkpoint("PASSIVE", "restart")
        finally:
            await self._close_conn()

    async def aclose(self) -> None:
        """Turn ``db``'s automatic checkpoint back on (after the task was cancelled)."""
        on_write(self.db, None)
        with contextlib.suppress(Exception):
            await self.db.execute("PRAGMA wal_autocheckpoint=1000")

    async def _checkpoint(self, mode: str, label: str | None = None) -> tuple[int, int]:
        """Run one checkpoint: (bytes the log held, bytes it could not copy yet), or (0, 0)
        after an error."""
        try:
            if self._conn is None:
                self._conn = await open_db(self.path)
                page = await self._conn.execute_fetchall("PRAGMA page_size")
                self._frame_bytes = int(list(page)[0][0]) + 24  # a WAL frame: header + page
            rows = list(await self._conn.execute_fetchall(f"PRAGMA wal_checkpoint({mode})"))
        except Exception as exc:  # the next period tries again
            log.warning("wal checkpoint (%s) of %s failed: %s", mode, os.path.basename(self.path), exc)
            return 0, 0
        key = label or mode
        self.checkpoints[key] = self.checkpoints.get(key, 0) + 1
        self.checkpointed.set()
        if not rows:
            return 0, 0
        logged, copied = max(0, int(rows[0][1])), max(0, int(rows[0][2]))
        return logged * self._frame_bytes, max(0, logged - copied) * self._frame_bytes

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
