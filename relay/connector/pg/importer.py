"""Move a connector from its SQLite file to PostgreSQL without losing anything it holds.

``import_sqlite(path, store, now)`` copies every table of a SQLite connector database (unacked
and acked buffer entries in their order, gateways with their wake URL and flip state,
identities, idempotency keys, queued and finished platform sends, seen Telegram update ids,
the outbox) into the PostgreSQL store in **one** transaction, then renames the file to
``<path>.imported``. ``hermes-relay serve --db postgresql://... --import-sqlite PATH`` runs it at
start, before the connector serves: the process that wrote the file has stopped by then (a Fly
deploy replaces it), so nothing lands in the file after the copy.

Safe to repeat: a row the database has already (same key) is kept as the database has it
(``ON CONFLICT DO NOTHING``), and ``relay_imports`` remembers each imported file, so a restart
between the commit and the rename only renames. Rows keep their order: buffer entries, outbox
rows and platform sends are inserted in their SQLite ``seq`` order and get the next PostgreSQL
ids in that order (after any entry the database held already).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from typing import Any

from relay.connector.pg.store import PgStore

log = logging.getLogger("relay.import")

IMPORT_LOCK = 0x6865726D_00000002
"""Advisory lock key held while importing (instances starting together take turns)."""

TABLES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("gateways", ("gateway_id", "wake_url", "flipped", "wake_at", "updated_at"), "gateway_id"),
    ("identities", ("platform", "bot_id", "gateway_id", "updated_at"), "platform, bot_id"),
    (
        "buffer",
        ("buffer_id", "gateway_id", "platform", "bot_id", "chat_id", "frame", "created_at", "acked_at"),
        "seq",
    ),
    ("outbox", ("at", "gateway_id", "platform", "bot_id", "chat_id", "action"), "seq"),
    ("idempotency", ("gateway_id", "idempotency_key", "result", "created_at"), "created_at"),
    (
        "platform_sends",
        (
            "send_id",
            "gateway_id",
            "platform",
            "bot_id",
            "request_id",
            "idempotency_key",
            "action",
            "created_at",
            "attempts",
            "last_error",
            "done_at",
            "result",
        ),
        "seq",
    ),
    ("telegram_updates", ("bot_id", "update_id", "created_at"), "bot_id, update_id"),
)
"""(table, the columns copied, the SQLite order they are read in). Every table of the SQLite
store; PostgreSQL fills its own ids and the columns only it has (``generation``,
``live_instance``) with their defaults."""


class SqliteImportError(Exception):
    """The SQLite file cannot be imported (not a connector database, unreadable); the message
    names the file and why."""


def read_sqlite(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every ``TABLES`` table of the SQLite connector database at ``path``, in one
    read transaction (a consistent snapshot), ``flipped`` as a bool. Raises ``SqliteImportError``."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SqliteImportError(f"{path}: cannot open: {exc}") from None
    try:
        con.execute("BEGIN")
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table, columns, order in TABLES:
            rows = con.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}").fetchall()
            if table == "gateways":
                rows = [(g, url, bool(flipped), wake_at, at) for g, url, flipped, wake_at, at in rows]
            out[table] = rows
        con.execute("COMMIT")
        return out
    except sqlite3.Error as exc:
        raise SqliteImportError(f"{path}: not a connector database this version can read: {exc}") from None
    finally:
        con.close()


async def import_sqlite(path: str, store: PgStore, now: float) -> dict[str, int] | None:
    """Import the SQLite connector database at ``path`` into ``store`` (see the module doc) and
    rename it to ``<path>.imported``. Returns the rows inserted per table; ``{}`` when this file
    was imported before (only renamed now); None when there is no file at ``path``. ``now``:
    Unix seconds, kept with the import. Raises ``SqliteImportError`` for an unreadable file and what
    asyncpg raises for the database (nothing is then committed or renamed)."""
    snapshot = await asyncio.to_thread(_snapshot, path)
    if snapshot is None:
        return None
    source, data = snapshot
    counts: dict[str, int] = {}
    async with store.pool.acquire() as con, con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", IMPORT_LOCK)
        done = await con.fetchval("SELECT counts FROM relay_imports WHERE source = $1", source)
        if done is None:
            for table, columns, _ in TABLES:
                before = int(await con.fetchval(f"SELECT count(*) FROM {table}"))
                marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
                sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT DO NOTHING"
                if data[table]:
                    await con.executemany(sql, data[table])
                counts[table] = int(await con.fetchval(f"SELECT count(*) FROM {table}")) - before
            await con.execute(
                "INSERT INTO relay_imports (source, imported_at, counts) VALUES ($1, $2, $3)",
                source,
                now,
                json.dumps(counts, sort_keys=True),
            )
    await asyncio.to_thread(_retire, path)
    if done is not None:
        log.info("%s was imported before (%s); renamed it to %s.imported", path, done, path)
        return {}
    log.info(
        "imported %s into PostgreSQL: %s; renamed it to %s.imported",
        path,
        ", ".join(f"{n} {table}" for table, n in counts.items()),
        path,
    )
    return counts


def _snapshot(path: str) -> tuple[str, dict[str, list[tuple[Any, ...]]]] | None:
    """(the file's real path, its rows) or None when there is no file at ``path``."""
    if not os.path.exists(path):
        return None
    return os.path.realpath(path), read_sqlite(path)


def _retire(path: str) -> None:
    """Fold the file's WAL into it and rename it (and any leftover ``-wal``/``-shm``) to
    ``<path>.imported``, so the next start imports nothing."""
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, f"{path}.imported{suffix}")
