"""``common.wal.WalCheckpointer`` on a FakeClock: the log stays bounded under writes, goes back
to 0 bytes once they stop, and the writers' connection never checkpoints by itself."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from common.clock import FakeClock
from common.loop import loop_name, run
from common.sqlite import open_db, write_one
from common.wal import WalCheckpointer

ROW = "x" * 3000  # about one page per row


async def _period(clock: FakeClock, cp: WalCheckpointer) -> None:
    """Let one period pass and wait for the checkpoint it triggers."""
    cp.checkpointed.clear()
    await clock.advance(1)
    await asyncio.wait_for(cp.checkpointed.wait(), 10)


async def test_wal_stays_bounded_under_writes_and_truncates_when_idle(tmp_path: Path) -> None:
    """200 page-sized commits with a 64 KiB bound: held checkpoints restart the log, so the file
    stays far below the ~1.6 MB those commits append; a quiet period truncates it to 0."""
    path = str(tmp_path / "s.db")
    db = await open_db(path)
    clock = FakeClock()
    cp = WalCheckpointer(path, db, clock, period_s=1, max_wal_bytes=64 * 1024)
    await db.execute("CREATE TABLE t (v TEXT)")
    await cp.start()
    task = asyncio.ensure_future(cp.run())
    try:
        largest = 0
        for i in range(200):
            await write_one(db, "INSERT INTO t VALUES (?)", (ROW,))
            if i % 10 == 9:
                await _period(clock, cp)  # t = i/10 s: a period with writes in it
                largest = max(largest, cp.wal_bytes())
        assert cp.checkpoints.get("restart", 0) >= 1
        assert largest < 400 * 1024
        # The last writes' period, then a quiet one (TRUNCATE): two periods at most, whatever
        # the period the last write's flag landed in (the file may already read 0 bytes after a
        # held checkpoint, so only the TRUNCATE itself says the quiet period came).
        for _ in range(3):
            if cp.checkpoints.get("TRUNCATE", 0):
                break
            cp.checkpointed.clear()
            await clock.advance(1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cp.checkpointed.wait(), 5)
        assert cp.checkpoints.get("TRUNCATE", 0) >= 1
        assert cp.wal_bytes() == 0
        assert list(await db.execute_fetchall("PRAGMA wal_autocheckpoint")) == [(0,)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await cp.aclose()
        assert list(await db.execute_fetchall("PRAGMA wal_autocheckpoint")) == [(1000,)]
        await db.close()


def test_loop_run_returns_the_result_on_the_named_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HERMES_EVENT_LOOP=asyncio`` forces asyncio's loop; ``run`` returns the coroutine's value."""
    monkeypatch.setenv("HERMES_EVENT_LOOP", "asyncio")
    assert loop_name() == "asyncio"

    async def name() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(name()).startswith("asyncio")
