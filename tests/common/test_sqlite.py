"""common/sqlite.py: a transaction is never left open, whatever cancels its task."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.sqlite import open_db, read_one, write_one, write_tx


async def _begin_then_cancelled(db: object, stage: str) -> None:
    async def body() -> None:
        async with write_tx(db):  # type: ignore[arg-type]
            await write_one_inside(db, "x")
            if stage == "body":
                await asyncio.Event().wait()  # cancelled here, inside the transaction

    task = asyncio.create_task(body())
    for _ in range(1 if stage == "begin" else 50):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def write_one_inside(db: object, value: str) -> None:
    await db.execute("INSERT INTO t (v) VALUES (?)", (value,))  # type: ignore[attr-defined]


@pytest.mark.parametrize("stage", ["begin", "body"])
async def test_a_cancelled_transaction_leaves_the_connection_usable(tmp_path: Path, stage: str) -> None:
    """Cancelled while BEGIN is on the database thread (it still runs there) or inside the
    body: the next transaction starts and commits (it used to fail with "cannot start a
    transaction within a transaction" for good), and nothing of the cancelled one is kept."""
    db = await open_db(str(tmp_path / "t.db"))
    try:
        await write_one(db, "CREATE TABLE t (v TEXT)")
        await _begin_then_cancelled(db, stage)
        async with write_tx(db):
            await write_one_inside(db, "y")
        assert await read_one(db, "SELECT group_concat(v) FROM t") == ("y",)
    finally:
        await db.close()
