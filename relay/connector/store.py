"""The connector's durable state (aiosqlite, WAL): buffer, identities, gateways, outbox.

One writer task does every write, grouping whatever is queued into one transaction
(group commit) on a ``synchronous=FULL`` connection, so an ingress reply or ack never
precedes a durable commit, and a burst costs one fsync. Reads use a second connection and
only ever see committed rows (WAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiosqlite

from relay.sqlite import migrate, open_db

log = logging.getLogger("relay.store")

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
]

_APPEND = (
    "INSERT INTO buffer (buffer_id, gateway_id, platform, bot_id, chat_id, frame, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_ACK = "UPDATE buffer SET acked_at = ? WHERE buffer_id = ? AND gateway_id = ? AND acked_at IS NULL"
_OUTBOX = (
    "INSERT INTO outbox (at, gateway_id, platform, bot_id, chat_id, action)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class GatewayRecord:
    """What the connector remembers of one gateway id across restarts."""

    gateway_id: str
    wake_url: str | None
    flipped: bool
    wake_at: float | None  # Unix seconds of a pending wakeAt poke


class BufferStore:
    """Durable connector state. Open with ``await BufferStore.open(path)``; ``close()`` flushes.

    Writes (``append``, ``ack``, ``record_outbound``, ``set_flip``, ``remember``) go through the
    group-commit writer; the awaitable ones return after their transaction committed.
    """

    def __init__(self, wdb: aiosqlite.Connection, rdb: aiosqlite.Connection) -> None:
        self._w = wdb
        self._r = rdb
        self._queue: asyncio.Queue[tuple[str, tuple[Any, ...], asyncio.Future[None] | None]] = (
            asyncio.Queue()
        )
        self._writer = asyncio.create_task(self._write_loop(), name="relay-store-writer")
        # Acks received but not yet committed: reads treat them as acked already, so a replay
        # never resends an acked entry and needs no flush (and no fsync) first.
        self._acking: set[str] = set()

    @classmethod
    async def open(cls, path: str) -> BufferStore:
        wdb = await open_db(path, synchronous="FULL")
        await migrate(wdb, MIGRATIONS)
        rdb = await open_db(path, synchronous="FULL")
        return cls(wdb, rdb)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        await self._w.close()
        await self._r.close()

    # --- writer ----------------------------------------------------------------------------

    def _enqueue(self, sql: str, params: tuple[Any, ...], wait: bool) -> asyncio.Future[None] | None:
        fut = asyncio.get_running_loop().create_future() if wait else None
        self._queue.put_nowait((sql, params, fut))
        return fut

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 5000:
                batch.append(self._queue.get_nowait())
            try:
                await self._w.execute("BEGIN")
                # Consecutive ops with the same SQL become one executemany (order is kept).
                i = 0
                while i < len(batch):
                    j = i
                    while j < len(batch) and batch[j][0] == batch[i][0]:
                        j += 1
                    if batch[i][0]:
                        await self._w.executemany(batch[i][0], [b[1] for b in batch[i:j]])
                    i = j
                await self._w.execute("COMMIT")
            except Exception as exc:
                log.error("connector store write failed: %s", exc)
                with contextlib.suppress(Exception):
                    await self._w.execute("ROLLBACK")
                for _, _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_exception(exc)
                continue
            for sql, params, fut in batch:
                if sql is _ACK:
                    self._acking.discard(params[1])
                if fut is not None and not fut.done():
                    fut.set_result(None)

    async def flush(self) -> None:
        """Return once everything queued before this call has committed."""
        fut = self._enqueue("", (), wait=True)
        assert fut is not None
        await fut

    # --- buffer ----------------------------------------------------------------------------

    async def append(
        self, *, buffer_id: str, gateway_id: str, platform: str, bot_id: str, chat_id: str,
        frame: str, now: float,
    ) -> None:
        """Persist one encoded ``inbound`` line; returns after a durable (FULL) commit."""
        fut = self._enqueue(_APPEND, (buffer_id, gateway_id, platform, bot_id, chat_id, frame, now),
                            wait=True)
        assert fut is not None
        await fut

    def ack(self, gateway_id: str, buffer_id: str, now: float) -> None:
        """Mark an entry acked (queued; committed with the next group, seen by reads at once)."""
        self._acking.add(buffer_id)
        self._enqueue(_ACK, (now, buffer_id, gateway_id), wait=False)

    async def unacked_after(self, gateway_id: str, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` unacked ``(seq, frame line)`` of a gateway with seq > ``after_seq``.

        Entries whose ack is received but not yet committed count as acked: the set is copied
        before the read, so an ack that commits while the read runs is still filtered out.
        """
        acking_before = set(self._acking)
        async with self._r.execute(
            "SELECT seq, frame, buffer_id FROM buffer WHERE gateway_id = ? AND acked_at IS NULL"
            " AND seq > ? ORDER BY seq LIMIT ?",
            (gateway_id, after_seq, limit),
        ) as cur:
            rows = await cur.fetchall()
        acking = acking_before | self._acking
        return [(int(r[0]), str(r[1])) for r in rows if r[2] not in acking]

    async def unacked_count(self, gateway_id: str) -> int:
        async with self._r.execute(
            "SELECT COUNT(*) FROM buffer WHERE gateway_id = ? AND acked_at IS NULL", (gateway_id,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def buffer_rows(self) -> list[dict[str, Any]]:
        """Every buffer row (for tests and inspection), in seq order."""
        async with self._r.execute(
            "SELECT seq, buffer_id, gateway_id, chat_id, acked_at FROM buffer ORDER BY seq"
        ) as cur:
            return [
                {"seq": r[0], "buffer_id": r[1], "gateway_id": r[2], "chat_id": r[3],
                 "acked": r[4] is not None}
                for r in await cur.fetchall()
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
            (platform, bot_id, gateway_id, now), wait=False,
        )
        fut = self._enqueue(
            "INSERT INTO gateways (gateway_id, wake_url, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (gateway_id) DO UPDATE SET"
            " wake_url = COALESCE(excluded.wake_url, gateways.wake_url),"
            " updated_at = excluded.updated_at",
            (gateway_id, wake_url, now), wait=True,
        )
        assert fut is not None
        await fut

    async def set_flip(self, gateway_id: str, flipped: bool, wake_at: float | None, now: float) -> None:
        """Persist the flip state and pending ``wakeAt`` (Unix seconds) of a gateway."""
        fut = self._enqueue(
            "INSERT INTO gateways (gateway_id, flipped, wake_at, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (gateway_id) DO UPDATE SET flipped = excluded.flipped,"
            " wake_at = excluded.wake_at, updated_at = excluded.updated_at",
            (gateway_id, int(flipped), wake_at, now), wait=True,
        )
        assert fut is not None
        await fut

    def clear_flip(self, gateway_id: str, now: float) -> None:
        """Queue clearing the flip and ``wakeAt`` of a gateway (committed with the next group)."""
        self._enqueue(
            "UPDATE gateways SET flipped = 0, wake_at = NULL, updated_at = ? WHERE gateway_id = ?",
            (now, gateway_id), wait=False,
        )

    async def identities(self) -> dict[tuple[str, str], str]:
        async with self._r.execute("SELECT platform, bot_id, gateway_id FROM identities") as cur:
            return {(r[0], r[1]): r[2] for r in await cur.fetchall()}

    async def gateways(self) -> dict[str, GatewayRecord]:
        async with self._r.execute(
            "SELECT gateway_id, wake_url, flipped, wake_at FROM gateways"
        ) as cur:
            return {
                r[0]: GatewayRecord(r[0], r[1], bool(r[2]), r[3]) for r in await cur.fetchall()
            }

    # --- outbox ----------------------------------------------------------------------------

    def record_outbound(
        self, *, gateway_id: str, platform: str, bot_id: str, action: dict[str, Any], now: float
    ) -> asyncio.Future[None]:
        """Queue an outbox row (send order = call order); the future resolves on commit."""
        chat_id = action.get("chat_id")
        fut = self._enqueue(
            _OUTBOX,
            (now, gateway_id, platform, bot_id, None if chat_id is None else str(chat_id),
             json.dumps(action, ensure_ascii=False)),
            wait=True,
        )
        assert fut is not None
        return fut

    async def outbox(self, chat_id: str | None = None) -> list[dict[str, Any]]:
        """Outbox rows in send order, optionally for one chat."""
        sql = "SELECT at, gateway_id, platform, bot_id, action FROM outbox"
        params: tuple[Any, ...] = ()
        if chat_id is not None:
            sql += " WHERE chat_id = ?"
            params = (chat_id,)
        async with self._r.execute(sql + " ORDER BY seq", params) as cur:
            rows = await cur.fetchall()
        return [
            {"at": r[0], "gateway_id": r[1], "platform": r[2], "bot_id": r[3],
             "action": json.loads(r[4])}
            for r in rows
        ]
