"""``common.sqlite.run_tx``: a whole transaction as one function on the database thread."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from common.sqlite import _in_transaction, open_db, read_all, run_tx, write_one, write_tx


async def test_run_tx_commits_and_returns_what_the_function_returns(tmp_path: Path) -> None:
    """Every statement of the function commits together; its value comes back."""
    db = await open_db(str(tmp_path / "t.db"))
    try:
        await db.execute("CREATE TABLE t (x INTEGER)")

        def body(conn: sqlite3.Connection) -> int:
            conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
            return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])

        assert await run_tx(db, body) == 2
        assert await read_all(db, "SELECT x FROM t ORDER BY x") == [(1,), (2,)]
    finally:
        await db.close()


async def test_run_tx_rolls_everything_back_when_the_function_raises(tmp_path: Path) -> None:
    """A failing statement after a good one leaves nothing behind; the error reaches the caller,
    and the connection takes the next transaction."""
    db = await open_db(str(tmp_path / "t.db"))
    try:
        await db.execute("CREATE TABLE t (x INTEGER UNIQUE)")

        def body(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("INSERT INTO t VALUES (1)")

        with pytest.raises(sqlite3.IntegrityError):
            await run_tx(db, body)
        assert await read_all(db, "SELECT x FROM t") == []
        async with write_tx(db):
            await db.execute("INSERT INTO t VALUES (3)")
        assert await read_all(db, "SELECT x FROM t") == [(3,)]
    finally:
        await db.close()


async def test_a_commit_that_fails_is_rolled_back_and_the_connection_stays_usable(tmp_path: Path) -> None:
    """A deferred foreign key fails at COMMIT: run_tx raises it, nothing is kept, and the next
    run_tx on the connection works (no transaction left open)."""
    db = await open_db(str(tmp_path / "fk.db"))
    try:
        await db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        await db.execute(
            "CREATE TABLE child (id INTEGER PRIMARY KEY,"
            " parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            await run_tx(db, lambda conn: conn.execute("INSERT INTO child (parent) VALUES (42)"))
        await run_tx(db, lambda conn: conn.execute("INSERT INTO parent (id) VALUES (1)"))
        assert await read_all(db, "SELECT id FROM parent") == [(1,)]
        assert await read_all(db, "SELECT id FROM child") == []
    finally:
        await db.close()


async def _level(db: aiosqlite.Connection) -> int:
    rows = await read_all(db, "PRAGMA synchronous")
    return int(rows[0][0])


async def test_an_unsynced_transaction_leaves_the_connection_synced_for_the_next_one(tmp_path: Path) -> None:
    """``fsync=False`` (the cron tick) commits at ``synchronous=NORMAL``; the connection is back
    at FULL afterwards, after a failure too, so an inbox admission that follows still waits for
    the disk before its ack. On a connection opened NORMAL it changes nothing."""
    db = await open_db(str(tmp_path / "t.db"), synchronous="FULL")
    try:
        await db.execute("CREATE TABLE t (x INTEGER UNIQUE)")
        seen: list[int] = []

        def body(conn: sqlite3.Connection) -> None:
            seen.append(int(conn.execute("PRAGMA synchronous").fetchone()[0]))
            conn.execute("INSERT INTO t VALUES (1)")

        await run_tx(db, body, fsync=False)
        await run_tx(db, lambda conn: seen.append(int(conn.execute("PRAGMA synchronous").fetchone()[0])))
        assert seen == [1, 2]  # NORMAL for the unsynced one, FULL for the default
        assert await _level(db) == 2
        with pytest.raises(sqlite3.IntegrityError):
            await run_tx(db, body, fsync=False)
        assert await _level(db) == 2
        assert await read_all(db, "SELECT x FROM t") == [(1,)]
    finally:
        await db.close()
    db = await open_db(str(tmp_path / "n.db"))
    try:
        await run_tx(db, lambda conn: conn.execute("CREATE TABLE t (x)"), fsync=False)
        assert await _level(db) == 1
    finally:
        await db.close()


class _Wedged:
    """A ``sqlite3.Connection`` stand-in whose COMMIT fails with a disk error and which then
    cannot roll back or change its safety level (SQLite refuses both inside the open
    transaction): the corner ``run_tx(fsync=False)`` must not turn into unsynced commits."""

    def __init__(self) -> None:
        self.in_transaction = False

    def execute(self, sql: str, *_: object) -> None:
        if sql == "BEGIN IMMEDIATE":
            self.in_transaction = True
        elif sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        elif sql == "ROLLBACK" or (sql.startswith("PRAGMA synchronous=") and self.in_transaction):
            raise sqlite3.OperationalError("cannot change safety level inside a transaction")


async def test_a_level_that_cannot_be_set_back_is_set_before_the_next_write(tmp_path: Path) -> None:
    """The commit's own error reaches the caller (not the refused pragma's); the connection is
    marked, and its next write first sets it back to FULL."""
    db = await open_db(str(tmp_path / "t.db"), synchronous="FULL")
    try:
        wedged = _Wedged()
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            _in_transaction(wedged, lambda conn: None, "FULL", db)  # type: ignore[arg-type]
        await db.execute("PRAGMA synchronous=NORMAL")  # what the wedged connection was left at
        await write_one(db, "CREATE TABLE t (x)")
        assert await _level(db) == 2
    finally:
        await db.close()
