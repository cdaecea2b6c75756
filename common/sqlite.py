"""Shared SQLite plumbing: open a WAL database with aiosqlite, apply keyed migrations, read
and write through the connection's thread (``read_all``, ``write_one``, ``write_tx``, and
``run_tx``: a whole transaction as one function, one thread hop), and tell a listener of writes
(``on_write``, for ``common.wal``).

Every store of the project keeps one ``schema_version`` table (one row) and a list of migration
scripts; migration ``i`` (1-based) runs once, in a transaction, when the version is below ``i``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

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
    pending = CONNECT.get()(path)
    try:
        db = await pending
    except BaseException:
        # aiosqlite queued its thread's stop; wait for the thread, or its last call back into
        # this loop can land after the loop closed (a traceback on stderr as the process exits).
        thread = getattr(pending, "_thread", None)
        if thread is not None and thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 5.0)
        raise
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={synchronous}")
        _synchronous[db] = synchronous.upper()
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
    # Only a file that does not exist yet is opened here: closing any descriptor of a file
    # drops every POSIX lock this process holds on it, so re-opening the database of a
    # connection already open in this process (a second connection) would silently release
    # that connection's SQLite locks; another process could then think it is the last one
    # and delete the -wal and -shm files under it.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
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
_synchronous: weakref.WeakKeyDictionary[aiosqlite.Connection, str] = weakref.WeakKeyDictionary()
"""Each ``open_db`` connection's ``synchronous`` level (``run_tx(fsync=False)`` restores it)."""
_level_lost: weakref.WeakSet[aiosqlite.Connection] = weakref.WeakSet()
"""Connections an unsynced transaction could not set back to their level (SQLite refuses the
pragma inside a transaction a failed ``ROLLBACK`` left open): every write on them sets it
again first (``_relevel``), and fails while it cannot, rather than commit unsynced."""


_Hooks = weakref.WeakKeyDictionary[aiosqlite.Connection, Callable[[], None]]
_write_hooks: _Hooks = weakref.WeakKeyDictionary()


def on_write(db: aiosqlite.Connection, hook: Callable[[], None] | None) -> None:
    """Call ``hook()`` after every ``write_one``, ``write_tx`` and ``run_tx`` on ``db`` (None:
    stop). ``common.wal.WalCheckpointer`` learns of writes this way."""
    if hook is None:
        _write_hooks.pop(db, None)
    else:
        _write_hooks[db] = hook


def _wrote(db: aiosqlite.Connection) -> None:
    hook = _write_hooks.get(db)
    if hook is not None:
        hook()


@contextlib.asynccontextmanager
async def writes_held(db: aiosqlite.Connection) -> AsyncIterator[None]:
    """No ``write_one``, ``write_tx`` or ``run_tx`` on ``db`` starts inside this block (they
    wait for it, in the event loop); one already running finishes first. ``common.wal`` holds
    it for the moment a checkpoint needs without a writer."""
    async with _lock(db):
        yield


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
        await _relevel(db)
        cur = await _retry_locked(lambda: db.execute(sql, params))
    _wrote(db)
    return cur


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
        await _relevel(db)
        try:
            await _retry_locked(lambda: db.execute("BEGIN IMMEDIATE"))
            yield db
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise
    _wrote(db)


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE`` on the database thread, retried while SQLite answers "locked"
    without running its busy handler (as ``write_tx`` does), for up to ``BUSY_RETRY_S``."""
    delay, waited = 0.001, 0.0
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or waited >= BUSY_RETRY_S:
                raise
        time.sleep(delay)  # on the database thread, never the event loop: I/O contention
        waited += delay
        delay = min(delay * 2, 0.05)


def _in_transaction(
    conn: sqlite3.Connection,
    fn: Callable[[sqlite3.Connection], T],
    restore: str | None = None,
    owner: aiosqlite.Connection | None = None,
) -> T:
    """``fn(conn)`` between ``BEGIN IMMEDIATE`` and ``COMMIT``. If ``fn`` or the ``COMMIT``
    fails (a deferred constraint, a full disk), whatever is still open is rolled back and the
    original error raised: a transaction left open would fail every later ``BEGIN``.

    ``restore``: commit with ``synchronous=NORMAL`` (no fsync of the log), then set the
    connection back to this level (``FULL`` or ``EXTRA``), whatever happened; if SQLite refuses
    (still inside a transaction after a failed rollback), ``owner`` is marked in
    ``_level_lost`` and the error being raised, if any, is the one that reaches the caller."""
    if restore is not None:
        conn.execute("PRAGMA synchronous=NORMAL")
    try:
        _begin_immediate(conn)
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
    finally:
        if restore is not None:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.execute(f"PRAGMA synchronous={restore}")
            except sqlite3.Error:
                if owner is not None:
                    _level_lost.add(owner)
    return result


async def _relevel(db: aiosqlite.Connection) -> None:
    """Set ``db`` back to its ``synchronous`` level if an unsynced transaction could not (see
    ``_level_lost``); raises ``sqlite3.OperationalError`` while SQLite still refuses. Call with
    ``_lock(db)`` held, before a write."""
    if db in _level_lost:
        await db.execute(f"PRAGMA synchronous={_synchronous[db]}")
        _level_lost.discard(db)


async def run_tx(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T], *, fsync: bool = True) -> T:
    """``fn(conn)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` in **one** hop to ``db``'s thread.

    ``fn`` gets the plain ``sqlite3.Connection`` and runs on the database thread: it must not
    touch the event loop. Its return value is returned once the transaction committed; if it
    raises, the transaction is rolled back and the error re-raised here. Serialised with
    ``write_tx``/``write_one`` on the same connection (never inside another task's transaction).
    A caller cancelled meanwhile does not stop the thread: the transaction still commits or rolls
    back as a whole. Five statements cost one hand-off instead of five (issue #16).

    ``fsync=False`` commits this transaction without waiting for the disk (``synchronous=NORMAL``
    for it alone, the connection's own level set back in the same hop, whatever happened). In WAL
    mode such a commit survives the process being killed (it is in the log, in the OS's page
    cache) and becomes power-loss safe with the next commit that syncs the log: the log is one
    file written in order, so that sync covers every frame before it. For work a restart redoes
    by itself if a power loss takes it (the cron tick); never for what an ack or a side effect
    depends on. No effect on a connection opened ``NORMAL`` or ``OFF``.
    """
    run = cast(Callable[..., Awaitable[T]], db._execute)
    level = _synchronous.get(db, "NORMAL")
    restore = level if not fsync and level in ("FULL", "EXTRA") else None
    async with _lock(db):
        await _relevel(db)
        result = await run(_in_transaction, db._conn, fn, restore, db)
    _wrote(db)
    return result


async def run_read(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` on ``db``'s thread in one hop (no transaction of its own: each statement
    reads committed data). ``fn`` must run every query it starts to completion (``fetchall``),
    like ``read_all``, so a cancelled caller never leaves a statement open."""
    run = cast(Callable[..., Awaitable[T]], db._execute)
    return await run(fn, db._conn)


async def _rollback(db: aiosqlite.Connection) -> None:
    """``ROLLBACK`` whatever is open; nothing open (a BEGIN that never ran, a COMMIT that did)
    is fine. Queued behind the statement it undoes, so it runs after it."""
    with contextlib.suppress(sqlite3.Error, ValueError):
        await db.execute("ROLLBACK")


ROWS_PER_INSERT = 64
"""Rows per multi-row ``INSERT`` of ``insert_rows``: 64 rows of up to 15 columns stay under
the 999 bound variables of old SQLite builds, and full chunks reuse one cached statement."""


def insert_rows(
    conn: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    skip_conflicts: bool = False,
) -> list[int | None]:
    """Insert ``rows`` (tuples of ``columns``) into ``table`` (an ``AUTOINCREMENT`` table with
    an ``id`` key) as multi-row ``INSERT ... VALUES (...), (...)`` statements of up to
    ``ROWS_PER_INSERT`` rows, on the database thread inside the caller's write transaction.
    Returns, per row in order, its new id, or None when ``skip_conflicts`` and the row was
    skipped as a duplicate (``ON CONFLICT DO NOTHING``: a unique key of a stored row or of an
    earlier row of ``rows``; a NOT NULL or CHECK violation still raises).

    Why not one ``execute`` per row or ``RETURNING``: each step of a statement lets go of the
    GIL and must win it back from the event loop thread, a wait of up to the switch interval
    under load (``sys.getswitchinterval()``, 5 ms). One step per 64 rows is what keeps an
    admission fast while the loop is busy (issue #16). The ids are known without reading them
    back: under the write lock an ``AUTOINCREMENT`` table gives each new row the next id, so a
    statement that inserted all its n rows gave them ``last - n + 1 .. last``. A statement that
    skipped some reads back the rows it made (every id past the one before it, in id order,
    which is the order of its ``VALUES``) and pairs them with its rows in order; values must
    come back as given (column-typed, no affinity conversion), else ``sqlite3.DatabaseError``
    rather than a guess. Raises ``sqlite3.Error`` as ``execute`` does (``IntegrityError`` for a
    conflict without ``skip_conflicts``)."""
    out: list[int | None] = []
    if not rows:
        return out
    prev = _last_id(conn, table)
    one = "(" + ", ".join("?" * len(columns)) + ")"
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    tail = " ON CONFLICT DO NOTHING" if skip_conflicts else ""
    for chunk, cur in execute_rows(conn, head, one, rows, tail):
        made = cur.rowcount
        last = cur.lastrowid if made > 0 and cur.lastrowid is not None else prev
        if made == len(chunk) and last - made == prev:
            out.extend(range(prev + 1, last + 1))
            prev = last
            continue
        if not skip_conflicts:
            raise sqlite3.DatabaseError(
                f"{table}: {made} of {len(chunk)} rows inserted with ids up to {last} after {prev};"
                " expected consecutive new ids"
            )
        out.extend(_pair_made(conn, table, columns, chunk, prev) if made else [None] * len(chunk))
        prev = _last_id(conn, table)  # a skipped row may have used up an id
    return out


def execute_rows(
    conn: sqlite3.Connection, head: str, one: str, rows: Sequence[Sequence[Any]], tail: str = ""
) -> Iterator[tuple[Sequence[Sequence[Any]], sqlite3.Cursor]]:
    """Run ``head`` + ``one`` once per row, comma-separated, + ``tail`` (a multi-row
    ``INSERT ... VALUES (?, ...), (?, ...)``) for each chunk of up to ``ROWS_PER_INSERT`` of
    ``rows``, in order, as the caller iterates: yields each chunk with its cursor. Raises
    ``sqlite3.Error`` as ``execute`` does."""
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        sql = head + ", ".join([one] * len(chunk)) + tail
        yield chunk, conn.execute(sql, [v for row in chunk for v in row])


def _last_id(conn: sqlite3.Connection, table: str) -> int:
    """The largest id ``table`` ever gave (``sqlite_sequence``; 0 before its first row)."""
    found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return int(found[0]) if found is not None else 0


def _pair_made(
    conn: sqlite3.Connection, table: str, columns: Sequence[str], chunk: Sequence[Sequence[Any]], after: int
) -> list[int | None]:
    """``insert_rows``' answer for a statement that skipped some rows: the rows it made (ids
    past ``after``, in id order = ``VALUES`` order) paired in order with the rows of ``chunk``
    that hold their values; the others None. Of equal rows only the first can have been made
    (the rest conflict with it), and it is the one paired."""
    made = conn.execute(f"SELECT id, {', '.join(columns)} FROM {table} WHERE id > ? ORDER BY id", (after,))
    stored = made.fetchall()
    ids: list[int | None] = []
    at = 0
    for row in chunk:
        if at < len(stored) and tuple(stored[at][1:]) == tuple(row):
            ids.append(int(stored[at][0]))
            at += 1
        else:
            ids.append(None)
    if at != len(stored):
        raise sqlite3.DatabaseError(f"{table}: {len(stored) - at} new row(s) match none of the rows given")
    return ids
