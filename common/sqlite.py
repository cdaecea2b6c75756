"""Shared SQLite plumbing: open a WAL database with aiosqlite and apply keyed migrations.

Every store of the project keeps one ``schema_version`` table (one row) and a list of migration
scripts; migration ``i`` (1-based) runs once, in a transaction, when the version is below ``i``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiosqlite

Connect = Callable[[str], aiosqlite.Connection]
"""Makes the (not yet awaited) connection of a database path."""


def _thread_connection(path: str) -> aiosqlite.Connection:
    return aiosqlite.connect(path, isolation_level=None)


CONNECT: contextvars.ContextVar[Connect] = contextvars.ContextVar(
    "sqlite_connect", default=_thread_connection
)
"""How ``open_db`` connects: aiosqlite's own thread per connection. The simulator (``sim/``)
sets a connection that runs each call on the loop thread, so a schedule replays the same."""


async def open_db(path: str, *, synchronous: str = "NORMAL") -> aiosqlite.Connection:
    """Open (creating folders) a SQLite database in WAL mode with ``synchronous`` set.

    ``synchronous`` is ``"FULL"`` where a commit must survive power loss before it is
    acknowledged (the connector buffer, the sidecar inbox), ``"NORMAL"`` elsewhere.
    """
    _ensure_folder(path)
    _private_file(path)
    db = await CONNECT.get()(path)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={synchronous}")
        await db.execute("PRAGMA busy_timeout=10000")
        await db.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        await db.close()  # its thread is not a daemon: never leave it behind
        raise
    return db


def _ensure_folder(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _private_file(path: str) -> None:
    """Create the database file 0600 (or tighten an existing one) before SQLite opens it:
    SQLite gives its ``-wal`` and ``-shm`` files the database file's mode, so all three stay
    readable by this user only (SPEC 8.1). Existing ``-wal``/``-shm`` files are tightened too."""
    if path == ":memory:" or path.startswith("file:"):
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for p in (path, path + "-wal", path + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(p, 0o600)


async def migrate(db: aiosqlite.Connection, migrations: Sequence[str]) -> int:
    """Bring the schema up to ``len(migrations)``; return the version now in force.

    Each script runs inside ``BEGIN IMMEDIATE`` together with the version bump, so a crash
    leaves the previous version intact and two processes never migrate twice.
    """
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    for index, script in enumerate(migrations, start=1):
        try:
            await db.execute("BEGIN IMMEDIATE")
            row = await read_one(db, "SELECT version FROM schema_version")
            current = row[0] if row else 0
            if current >= index:
                await db.execute("ROLLBACK")
                continue
            for statement in _statements(script):
                await db.execute(statement)
            if row:
                await db.execute("UPDATE schema_version SET version = ?", (index,))
            else:
                await db.execute("INSERT INTO schema_version (version) VALUES (?)", (index,))
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise
    return len(migrations)


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (``;`` at line end; triggers use ``END;``)."""
    out: list[str] = []
    buf: list[str] = []
    in_trigger = False
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        buf.append(line)
        upper = stripped.upper()
        if upper.startswith("CREATE TRIGGER") or upper.startswith("CREATE TEMP TRIGGER"):
            in_trigger = True
        if in_trigger:
            if upper == "END;":
                out.append("\n".join(buf))
                buf, in_trigger = [], False
        elif stripped.endswith(";"):
            out.append("\n".join(buf))
            buf = []
    if buf:
        out.append("\n".join(buf))
    return out


async def read_all(db: aiosqlite.Connection, sql: str, params: Any = ()) -> list[Any]:
    """Every row of one query, in a single hop to the database thread.

    Cancellation-safe, unlike ``async with db.execute(...) as cur``: a task cancelled while that
    cursor's statement is open leaves the statement unreset, which holds a read transaction
    open on the connection for good, so every later read sees the database as it was then (a
    connector replay that silently missed committed entries). Here the thread runs the whole
    query to completion whatever happens to the caller.
    """
    return list(await db.execute_fetchall(sql, params))


async def read_one(db: aiosqlite.Connection, sql: str, params: Any = ()) -> Any:
    """The first row of one query (None when there is none); cancellation-safe like ``read_all``."""
    rows = await read_all(db, sql, params)
    return rows[0] if rows else None


T = TypeVar("T")
BUSY_RETRY_S = 10.0
_locks: weakref.WeakKeyDictionary[aiosqlite.Connection, asyncio.Lock] = weakref.WeakKeyDictionary()


def _lock(db: aiosqlite.Connection) -> asyncio.Lock:
    lock = _locks.get(db)
    if lock is None:
        lock = _locks[db] = asyncio.Lock()
    return lock


async def _retry_locked(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` again while SQLite answers "database is locked", up to BUSY_RETRY_S."""
    delay, waited = 0.001, 0.0
    while True:
        try:
            return await attempt()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or waited >= BUSY_RETRY_S:
                raise
        await asyncio.sleep(delay)  # I/O contention with another connection: real time
        waited += delay
        delay = min(delay * 2, 0.05)


async def write_one(db: aiosqlite.Connection, sql: str, params: Any = ()) -> aiosqlite.Cursor:
    """One write statement in autocommit mode (one thread hop), never inside another task's
    ``write_tx``; retried while SQLite answers "locked" (a failed statement applied nothing)."""
    async with _lock(db):
        return await _retry_locked(lambda: db.execute(sql, params))


@contextlib.asynccontextmanager
async def write_tx(db: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on ``db``, one at a time per connection.

    IMMEDIATE takes the write lock up front, so the busy timeout applies and another process's
    commit can never make the write fail with a stale snapshot (SQLITE_BUSY_SNAPSHOT), which a
    plain autocommit write in WAL mode can. SQLite still answers BEGIN IMMEDIATE with "database
    is locked" without running its busy handler in some cases (its deadlock avoidance), so the
    BEGIN is retried with a short backoff for up to ``BUSY_RETRY_S``: nothing is held at that
    point, so a retry cannot deadlock.

    Rolls back on any error, including a ``CancelledError`` that arrives while ``BEGIN`` or
    ``COMMIT`` is on the database thread: the statement still runs there, and a transaction
    left open made every later ``BEGIN`` on the connection fail with "cannot start a
    transaction within a transaction" (a sidecar whose inbound worker was cancelled by a
    dropped socket mid-admit could then store nothing more).
    """
    async with _lock(db):
        try:
            await _retry_locked(lambda: db.execute("BEGIN IMMEDIATE"))
            yield db
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise


async def _rollback(db: aiosqlite.Connection) -> None:
    """``ROLLBACK`` whatever is open; nothing open (a BEGIN that never ran, a COMMIT that did)
    is fine. Queued behind the statement it undoes, so it runs after it."""
    with contextlib.suppress(sqlite3.Error, ValueError):
        await db.execute("ROLLBACK")
