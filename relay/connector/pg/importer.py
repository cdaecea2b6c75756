"""Move a connector from its SQLite file to PostgreSQL without losing anything it holds.

``import_sqlite(path, store, now)`` copies every table of a SQLite connector database (unacked
and acked buffer entries in their order, gateways with their wake URL and flip state,
identities, idempotency keys, queued and finished platform sends, seen Telegram update ids,
the outbox) into the PostgreSQL store in **one** transaction, then renames the file to
``<path>.imported`` (``.imported.1``, ... when that name is taken: an earlier import's file is
never overwritten). ``hermes-relay serve --db postgresql://... --import-sqlite PATH`` runs it at
start, before the connector serves: the process that wrote the file has stopped by then (a Fly
deploy replaces it), so nothing lands in the file after the copy.

- **Once per content.** ``relay_imports`` keeps a SHA-256 of what was copied: a start killed
  between the commit and the rename finds the same content and only renames. A file that
  changed since (a rollback to SQLite that took more messages) is imported again: a row the
  database has already (same key; outbox rows by time, gateway and action) is kept as the
  database has it.
- **Order.** Buffer entries, outbox rows and platform sends are inserted in their SQLite
  ``seq`` order and get the next PostgreSQL ids in that order. The transaction holds each
  imported gateway's append lock (``pg/writer.py``), so no append of another instance can
  commit a later seq first.
- **Other instances hear of it**: the transaction queues the ``route``, ``flip``, ``buf`` and
  ``queued`` events the tables now imply, as the writer would have.
- The whole file is read into memory and copied in one transaction: fine for what a personal
  connector holds (a week of messages); a file of gigabytes wants a quiet start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from relay.connector.pg.store import OPEN_TIMEOUT_S, PgStore
from relay.connector.pg.writer import event, gateway_lock_key

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
    """The SQLite file cannot be imported (not a connector database, unreadable) or could not
    be renamed after its rows were committed; the message names the file and says which."""


_OUTBOX_SQL = (
    "INSERT INTO outbox (at, gateway_id, platform, bot_id, chat_id, action)"
    " SELECT $1::float8, $2::text, $3::text, $4::text, $5::text, $6::text WHERE NOT EXISTS"
    " (SELECT 1 FROM outbox WHERE at = $1::float8 AND gateway_id = $2::text AND action = $6::text)"
)
"""The outbox has no unique key: a row is new unless one with its time, gateway and action is
there already."""


def read_sqlite(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every ``TABLES`` table of the SQLite connector database at ``path``, in one
    read transaction (a consistent snapshot), ``flipped`` as a bool. Raises ``SqliteImportError``."""
    try:
        con = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
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
    rename it. Returns the rows the database gained per table; ``{}`` when this content was
    imported before (only renamed now); None when there is no file at ``path``. ``now``: Unix
    seconds, kept with the import. Raises ``SqliteImportError`` for an unreadable file (nothing
    committed) or a rename that failed after the commit (the next start renames only), and
    what asyncpg raises for the database (nothing committed, nothing renamed)."""
    snapshot = await asyncio.to_thread(_snapshot, path)
    if snapshot is None:
        return None
    real, data = snapshot
    digest = "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    counts: dict[str, int] = {}
    # A connection of its own, closed at the end: the session lock around the copy and the
    # rename (two starts on one file take turns) ends with it whatever happens, and never stays
    # on a pooled connection (the pool releases them without a reset: ``pg/store.py``).
    con = await asyncpg.connect(store.url, timeout=OPEN_TIMEOUT_S)
    try:
        await con.execute("SELECT pg_advisory_lock($1)", IMPORT_LOCK)
        async with con.transaction():
            done = await con.fetchval("SELECT counts FROM relay_imports WHERE source = $1", digest)
            if done is None:
                counts = await _copy(con, store, data)
                record = json.dumps({"path": real, "rows": counts}, sort_keys=True)
                await con.execute(
                    "INSERT INTO relay_imports (source, imported_at, counts) VALUES ($1, $2, $3)",
                    digest,
                    now,
                    record,
                )
        try:
            renamed = await asyncio.to_thread(_retire, path)
        except (OSError, sqlite3.Error) as exc:
            raise SqliteImportError(
                f"{path}: its rows are in PostgreSQL, but renaming it failed ({exc}); the next"
                " start only renames it"
            ) from None
    finally:
        await con.close()
    if done is not None:
        log.info("%s was imported before (%s); renamed it to %s", path, done, renamed)
        return {}
    log.info(
        "imported %s into PostgreSQL: %s; renamed it to %s",
        path,
        ", ".join(f"{n} {table}" for table, n in counts.items()),
        renamed,
    )
    return counts


async def _copy(con: Any, store: PgStore, data: dict[str, list[tuple[Any, ...]]]) -> dict[str, int]:
    """Insert ``data`` inside the caller's transaction, under the append lock of every gateway
    it holds entries for, and queue the events its rows imply; the rows gained per table."""
    gateways = sorted({row[1] for row in data["buffer"]} | {row[0] for row in data["gateways"]})
    for key in sorted(gateway_lock_key(g) for g in gateways):
        await con.execute("SELECT pg_advisory_xact_lock($1)", key)
    counts: dict[str, int] = {}
    for table, columns, _ in TABLES:
        before = int(await con.fetchval(f"SELECT count(*) FROM {table}"))
        marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT DO NOTHING"
        if data[table]:
            await con.executemany(_OUTBOX_SQL if table == "outbox" else sql, data[table])
        counts[table] = int(await con.fetchval(f"SELECT count(*) FROM {table}")) - before
    events = [event("route", g=g, p=p, b=b, w=None) for p, b, g, _ in data["identities"]]
    events += [event("route", g=g, w=url) for g, url, _, _, _ in data["gateways"] if url]
    events += [event("flip", g=g) for g, _, flipped, _, _ in data["gateways"] if flipped]
    events += [event("buf", g=g) for g in sorted({row[1] for row in data["buffer"] if row[7] is None})]
    events += [
        event("queued", b=b) for b in sorted({row[3] for row in data["platform_sends"] if row[10] is None})
    ]
    for payload in events:
        await con.execute("SELECT pg_notify($1, $2)", store.channel, payload)
    return counts


def _snapshot(path: str) -> tuple[str, dict[str, list[tuple[Any, ...]]]] | None:
    """(the file's real path, its rows) or None when there is no file at ``path``."""
    if not os.path.exists(path):
        return None
    return os.path.realpath(path), read_sqlite(path)


def _retire(path: str) -> str:
    """Fold the file's WAL into it and rename it (and any leftover ``-wal``/``-shm``) to a free
    ``<path>.imported[.N]``, so the next start imports nothing; returns the new name (the old
    one when the file is gone already: another start renamed it)."""
    if not os.path.exists(path):
        return path
    with contextlib.closing(sqlite3.connect(Path(path).resolve().as_uri() + "?mode=rw", uri=True)) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    target = f"{path}.imported"
    n = 0
    while os.path.exists(target):
        n += 1
        target = f"{path}.imported.{n}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, target + suffix)
    return target
