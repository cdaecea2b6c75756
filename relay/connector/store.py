"""The connector's durable state (aiosqlite, WAL): buffer, identities, gateways, outbox and
idempotency keys.

One writer task does every write, grouping whatever is queued into one transaction
(group commit) on a ``synchronous=FULL`` connection, so an ingress reply or ack never
precedes a durable commit, and a burst costs one fsync. A queued job may hold several
statements; they always land in the same transaction (an outbox row and its idempotency key).
Reads use a second connection and only ever see committed rows (WAL).
This module owns the schema, the buffer, gateways/identities and the outbox; the writer, the
platform send queue and the idempotency keys live in ``store_writer``, ``store_platform`` and
``store_idempotency``, which ``BufferStore`` combines over the one writer.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

from common.sqlite import migrate, open_db, read_all, read_one
from relay.connector.store_idempotency import IDEMPOTENCY_KEEP_S, KEY_SQL, IdempotencyStore
from relay.connector.store_platform import PLATFORM_SEND_SQL, PlatformSend, PlatformSendStore
from relay.connector.store_writer import Statement, StoreWriter

__all__ = [
    "IDEMPOTENCY_KEEP_S",
    "MIGRATIONS",
    "BufferStore",
    "GatewayRecord",
    "PlatformSend",
    "Statement",
    "StoreWriter",
]

MIGRATIONS = [
    """
    CREATE TABLE gateways (
        gateway_id TEXT PRIMARY KEY,
        wake_url TEXT,
        flipped INTEGER NOT NULL DEFAULT 0,
        wake_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE identities (
        platform TEXT NOT NULL,
        bot_id TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (platform, bot_id)
    );
    CREATE TABLE buffer (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        buffer_id TEXT NOT NULL UNIQUE,
        gateway_id TEXT NOT NULL,
        platform TEXT NOT NULL,
        bot_id TEXT NOT NULL,
        chat_id TEXT NOT NULL,
        frame TEXT NOT NULL,
        created_at REAL NOT NULL,
        acked_at REAL
    );
    CREATE INDEX buffer_unacked ON buffer (gateway_id, seq) WHERE acked_at IS NULL;
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        gateway_id TEXT NOT NULL,
        platform TEXT NOT NULL,
        bot_id TEXT NOT NULL,
        chat_id TEXT,
        action TEXT NOT NULL
    );
    CREATE INDEX outbox_chat ON outbox (chat_id, seq);
    """,
    # 2: PROTOCOL.md 7.1, the stored result of every outbound that carried an idempotencyKey.
    """
    CREATE TABLE idempotency (
        gateway_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        result TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (gateway_id, idempotency_key)
    );
    CREATE INDEX idempotency_age ON idempotency (created_at);
    """,
    # 3: SPEC 8.3, durable platform sends (Telegram Bot API calls) and seen webhook update ids.
    """
    CREATE TABLE platform_sends (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        send_id TEXT NOT NULL UNIQUE,
        gateway_id TEXT NOT NULL,
        platform TEXT NOT NULL,
        bot_id TEXT NOT NULL,
        request_id TEXT,
        idempotency_key TEXT,
        action TEXT NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        done_at REAL,
        result TEXT
    );
    CREATE INDEX platform_sends_pending ON platform_sends (platform, bot_id, seq) WHERE done_at IS NULL;
    CREATE INDEX platform_sends_key ON platform_sends (gateway_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE telegram_updates (
        bot_id TEXT NOT NULL,
        update_id INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (bot_id, update_id)
    );
    """,
]

_APPEND = (
    "INSERT INTO buffer (buffer_id, gateway_id, platform, bot_id, chat_id, frame, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_OUTBOX = "INSERT INTO outbox (at, gateway_id, platform, bot_id, chat_id, action) VALUES (?, ?, ?, ?, ?, ?)"

_SEEN_UPDATE = "INSERT OR IGNORE INTO telegram_updates (bot_id, update_id, created_at) VALUES (?, ?, ?)"


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_header(path: str) -> None:
    """Raise ``sqlite3.DatabaseError`` when ``path`` is an existing, non-empty file that is not
    a SQLite database. Checked before ``open_db``, whose connection would stay open (and keep
    the process from exiting) if a pragma failed on such a file."""
    if path == ":memory:" or path.startswith("file:") or not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise sqlite3.DatabaseError("file is not a database")


@dataclass(frozen=True)
class GatewayRecord:
    """What the connector remembers of one gateway id across restarts."""

    gateway_id: str
    wake_url: str | None
    flipped: bool
    wake_at: float | None  # Unix seconds of a pending wakeAt poke


class BufferStore(PlatformSendStore, IdempotencyStore):
    """Durable connector state. Open with ``await BufferStore.open(path)``; ``close()`` flushes.

    Writes (``append``, ``ack``, ``record_outbound``, ``set_flip``, ``remember``,
    ``prune``) go through the group-commit writer; the awaitable ones return after
    their transaction committed, and a failed transaction raises its ``sqlite3.Error`` there.
    """

    @classmethod
    async def open(cls, path: str) -> BufferStore:
        """Open (creating, 0600) and migrate the database at ``path``.

        Raises ``OSError`` or ``sqlite3.Error`` when it cannot be opened; no connection is left
        open then (an open aiosqlite thread would keep the process from exiting).
        """
        _check_header(path)
        wdb = await open_db(path, synchronous="FULL")
        try:
            await migrate(wdb, MIGRATIONS)
            rdb = await open_db(path, synchronous="FULL")
        except BaseException:
            await wdb.close()
            raise
        return cls(wdb, rdb)

    # --- buffer ----------------------------------------------------------------------------

    async def append(
        self,
        *,
        buffer_id: str,
        gateway_id: str,
        platform: str,
        bot_id: str,
        chat_id: str,
        frame: str,
        now: float,
        telegram_update: tuple[str, int] | None = None,
    ) -> None:
        """Persist one encoded ``inbound`` line; returns after a durable (FULL) commit.

        ``telegram_update`` (bot id, update id) is marked seen in the same transaction."""
        statements: tuple[Statement, ...] = (
            (_APPEND, (buffer_id, gateway_id, platform, bot_id, chat_id, frame, now)),
        )
        if telegram_update is not None:
            statements += ((_SEEN_UPDATE, (*telegram_update, now)),)
        fut = self._enqueue_job(statements, wait=True)
        assert fut is not None
        await fut

    async def update_seen(self, bot_id: str, update_id: int) -> bool:
        """Whether a webhook ``update_id`` of a Telegram bot was stored already (committed)."""
        row = await read_one(
            self._r, "SELECT 1 FROM telegram_updates WHERE bot_id = ? AND update_id = ?", (bot_id, update_id)
        )
        return row is not None

    async def unacked_after(self, gateway_id: str, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` unacked ``(seq, frame line)`` of a gateway with seq > ``after_seq``.

        Entries whose ack is received but not yet committed count as acked: the set is copied
        before the read, so an ack that commits while the read runs is still filtered out.
        """
        acking_before = set(self._acking)
        rows = await read_all(
            self._r,
            "SELECT seq, frame, buffer_id FROM buffer WHERE gateway_id = ? AND acked_at IS NULL"
            " AND seq > ? ORDER BY seq LIMIT ?",
            (gateway_id, after_seq, limit),
        )
        acking = acking_before | self._acking
        return [(int(r[0]), str(r[1])) for r in rows if r[2] not in acking]

    async def unacked_count(self, gateway_id: str) -> int:
        """How many entries of a gateway are unacked; a received, uncommitted ack counts as done
        (so the count is what ``unacked_after`` would return right now)."""
        acking = sorted(self._acking)
        sql = "SELECT COUNT(*) FROM buffer WHERE gateway_id = ? AND acked_at IS NULL"
        params: tuple[Any, ...] = (gateway_id,)
        if acking:
            sql += " AND buffer_id NOT IN (SELECT value FROM json_each(?))"
            params = (gateway_id, json.dumps(acking))
        row = await read_one(self._r, sql, params)
        return int(row[0]) if row else 0

    async def buffer_rows(self) -> list[dict[str, Any]]:
        """Every buffer row (for tests and inspection), in seq order."""
        rows = await read_all(
            self._r, "SELECT seq, buffer_id, gateway_id, chat_id, acked_at FROM buffer ORDER BY seq"
        )
        return [
            {
                "seq": r[0],
                "buffer_id": r[1],
                "gateway_id": r[2],
                "chat_id": r[3],
                "acked": r[4] is not None,
            }
            for r in rows
        ]

    # --- gateways and identities -----------------------------------------------------------

    async def remember(
        self, gateway_id: str, platform: str, bot_id: str, wake_url: str | None, now: float
    ) -> None:
        """Record that ``gateway_id`` fronts ``(platform, bot_id)`` and its latest wake URL."""
        self._enqueue(
            "INSERT INTO identities (platform, bot_id, gateway_id, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (platform, bot_id) DO UPDATE SET gateway_id = excluded.gateway_id,"
            " updated_at = excluded.updated_at",
            (platform, bot_id, gateway_id, now),
            wait=False,
        )
        fut = self._enqueue(
            "INSERT INTO gateways (gateway_id, wake_url, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (gateway_id) DO UPDATE SET"
            " wake_url = COALESCE(excluded.wake_url, gateways.wake_url),"
            " updated_at = excluded.updated_at",
            (gateway_id, wake_url, now),
            wait=True,
        )
        assert fut is not None
        await fut

    async def set_flip(self, gateway_id: str, flipped: bool, wake_at: float | None, now: float) -> None:
        """Persist the flip state and pending ``wakeAt`` (Unix seconds) of a gateway."""
        fut = self._enqueue(
            "INSERT INTO gateways (gateway_id, flipped, wake_at, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (gateway_id) DO UPDATE SET flipped = excluded.flipped,"
            " wake_at = excluded.wake_at, updated_at = excluded.updated_at",
            (gateway_id, int(flipped), wake_at, now),
            wait=True,
        )
        assert fut is not None
        await fut

    def clear_flip(self, gateway_id: str, now: float) -> None:
        """Queue clearing the flip and ``wakeAt`` of a gateway (committed with the next group)."""
        self._enqueue(
            "UPDATE gateways SET flipped = 0, wake_at = NULL, updated_at = ? WHERE gateway_id = ?",
            (now, gateway_id),
            wait=False,
        )

    async def identities(self) -> dict[tuple[str, str], str]:
        rows = await read_all(self._r, "SELECT platform, bot_id, gateway_id FROM identities")
        return {(r[0], r[1]): r[2] for r in rows}

    async def gateways(self) -> dict[str, GatewayRecord]:
        rows = await read_all(self._r, "SELECT gateway_id, wake_url, flipped, wake_at FROM gateways")
        return {r[0]: GatewayRecord(r[0], r[1], bool(r[2]), r[3]) for r in rows}

    # --- outbox ----------------------------------------------------------------------------

    def record_outbound(
        self,
        *,
        gateway_id: str,
        platform: str,
        bot_id: str,
        action: dict[str, Any],
        now: float,
        idempotency_key: str | None = None,
        result: dict[str, Any] | None = None,
        platform_send: tuple[str, str | None] | None = None,
    ) -> asyncio.Future[None]:
        """Queue an outbox row (send order = call order); the future resolves on commit.

        With ``idempotency_key``, ``result`` (the ``outbound_result`` answer) is stored under
        ``(gateway_id, idempotency_key)`` in the **same** transaction as the outbox row: both
        commit or neither does (a key already stored fails the whole job with an
        ``IntegrityError``). The caller makes sure one key is recorded once.
        """
        chat_id = action.get("chat_id")
        statements: tuple[Statement, ...] = (
            (
                _OUTBOX,
                (
                    now,
                    gateway_id,
                    platform,
                    bot_id,
                    None if chat_id is None else str(chat_id),
                    json.dumps(action, ensure_ascii=False),
                ),
            ),
        )
        if platform_send is not None:
            # Queued for the platform worker: (send_id, request_id); the key waits with the send
            # and moves to ``idempotency`` with its final result (``finish_platform_send``).
            send_id, request_id = platform_send
            statements += (
                (
                    PLATFORM_SEND_SQL,
                    (
                        send_id,
                        gateway_id,
                        platform,
                        bot_id,
                        request_id,
                        idempotency_key,
                        json.dumps(action, ensure_ascii=False),
                        now,
                    ),
                ),
            )
        elif idempotency_key is not None:
            if result is None:
                raise ValueError("record_outbound with an idempotency_key needs its result")
            statements += (
                (KEY_SQL, (gateway_id, idempotency_key, json.dumps(result, ensure_ascii=False), now)),
            )
        fut = self._enqueue_job(statements, wait=True)
        assert fut is not None
        return fut

    async def outbox(self, chat_id: str | None = None) -> list[dict[str, Any]]:
        """Outbox rows in send order, optionally for one chat."""
        sql = "SELECT at, gateway_id, platform, bot_id, action FROM outbox"
        params: tuple[Any, ...] = ()
        if chat_id is not None:
            sql += " WHERE chat_id = ?"
            params = (chat_id,)
        rows = await read_all(self._r, sql + " ORDER BY seq", params)
        return [
            {"at": r[0], "gateway_id": r[1], "platform": r[2], "bot_id": r[3], "action": json.loads(r[4])}
            for r in rows
        ]
