"""``PgStore``: the connector store on PostgreSQL (``--db postgresql://...``), the same contract
as the SQLite ``BufferStore`` (``relay/connector/store_api.py``), for any number of connector
processes on one database.

Beyond that contract it keeps what instances share (``claim_socket``, ``release_socket``,
``gateway_live``, ``generations``) and queues an event (``NOTIFY`` on ``channel``, delivered at
commit) with every write another instance must react to: ``buf`` (an append: wake the sender
holding the gateway's socket, or poke), ``route`` (an identity or wake URL), ``flip``, ``sock``
(a handshake's new generation), ``queued``/``sent`` (platform sends). ``relay.connector.pg.cluster``
listens. Events carry ids only; a listener that reconnects re-reads the tables (catch-up).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import asyncpg

from relay.connector.pg.schema import migrate
from relay.connector.pg.store_sends import KEY_SQL, PLATFORM_SEND_SQL, PgSendStore
from relay.connector.pg.writer import APPEND_SQL, APPEND_UPDATE_SQL
from relay.connector.store import GatewayRecord
from relay.connector.store_writer import Statement

OPEN_TIMEOUT_S = 10.0
"""How long (seconds) opening the pool may take before start-up fails."""
POOL_MAX = 10
"""Connections in one instance's pool (the writer takes one per group, reads the rest)."""


async def _keep_session(con: asyncpg.Connection) -> None:
    """The pool's ``reset``: nothing. asyncpg's default sends ``SELECT pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL`` at every release, a round trip and four statements per
    group commit. Nothing of this store leaves session state on a pooled connection: listeners
    and the leader's lock hold connections of their own (``pg/events.py``), so does the
    importer's session lock (``pg/importer.py``), no ``SET`` or cursor is used; asyncpg still
    rolls back a transaction left open and drops listeners before calling this."""


class PgStore(PgSendStore):
    """Durable connector state in PostgreSQL. Open with ``await PgStore.open(url)``;
    ``close()`` flushes. ``multi_instance`` tells the connector to coordinate with others."""

    multi_instance = True

    def __init__(self, pool: asyncpg.Pool, channel: str, url: str) -> None:
        super().__init__(pool, channel)
        self.url = url

    @classmethod
    async def open(cls, url: str) -> PgStore:
        """Connect a pool to ``url`` and migrate the schema (in its ``search_path``).

        Raises ``OSError`` (cannot connect), ``asyncpg.PostgresError`` (refused: password,
        missing database), ``ValueError`` (a URL asyncpg cannot parse) or ``TimeoutError``;
        nothing is left open then.
        """
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=POOL_MAX, timeout=OPEN_TIMEOUT_S, reset=_keep_session
        )
        try:
            async with pool.acquire() as con:
                await migrate(con)
                schema = str(await con.fetchval("SELECT current_schema()"))
        except BaseException:
            await pool.close()
            raise
        # One channel per schema: stores in other schemas of the database never hear these.
        channel = "hermes_relay_" + re.sub(r"[^a-z0-9_]", "_", schema.lower())[:40]
        return cls(pool, channel, url)

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
        """Persist one encoded ``inbound`` line; returns after a durable commit. With
        ``telegram_update`` (bot id, update id) the entry is stored only if that update is new
        (marked seen in the same statement)."""
        params: tuple[Any, ...] = (buffer_id, gateway_id, platform, bot_id, chat_id, frame, now)
        if telegram_update is None:
            append: Statement = (APPEND_SQL, params)
        else:
            append = (APPEND_UPDATE_SQL, (*params, *telegram_update))
        fut = self._enqueue_job((append, self._notify("buf", g=gateway_id)), wait=True)
        assert fut is not None
        await fut

    async def update_seen(self, bot_id: str, update_id: int) -> bool:
        """Whether a webhook ``update_id`` of a Telegram bot was stored already (committed)."""
        row = await self._pool.fetchval(
            "SELECT 1 FROM telegram_updates WHERE bot_id = $1 AND update_id = $2", bot_id, update_id
        )
        return row is not None

    async def unacked_after(self, gateway_id: str, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` unacked ``(seq, frame line)`` of a gateway with seq > ``after_seq``;
        a received, uncommitted ack counts as done (as on SQLite)."""
        acking_before = set(self._acking)
        rows = await self._pool.fetch(
            "SELECT seq, frame, buffer_id FROM buffer WHERE gateway_id = $1 AND acked_at IS NULL"
            " AND seq > $2 ORDER BY seq LIMIT $3",
            gateway_id,
            after_seq,
            limit,
        )
        acking = acking_before | self._acking
        return [(int(r[0]), str(r[1])) for r in rows if r[2] not in acking]

    async def unacked_count(self, gateway_id: str) -> int:
        """How many entries of a gateway are unacked (a received ack counts as done)."""
        n = await self._pool.fetchval(
            "SELECT COUNT(*) FROM buffer WHERE gateway_id = $1 AND acked_at IS NULL"
            " AND NOT (buffer_id = ANY($2::text[]))",
            gateway_id,
            sorted(self._acking),
        )
        return int(n or 0)

    async def buffer_rows(self) -> list[dict[str, Any]]:
        """Every buffer row (for tests and inspection), in seq order."""
        rows = await self._pool.fetch(
            "SELECT seq, buffer_id, gateway_id, chat_id, acked_at FROM buffer ORDER BY seq"
        )
        return [
            {"seq": r[0], "buffer_id": r[1], "gateway_id": r[2], "chat_id": r[3], "acked": r[4] is not None}
            for r in rows
        ]

    # --- gateways and identities -----------------------------------------------------------

    async def remember(
        self, gateway_id: str, platform: str, bot_id: str, wake_url: str | None, now: float
    ) -> None:
        """Record that ``gateway_id`` fronts ``(platform, bot_id)`` and its latest wake URL."""
        fut = self._enqueue_job(
            (
                (
                    "INSERT INTO identities (platform, bot_id, gateway_id, updated_at)"
                    " VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (platform, bot_id) DO UPDATE SET gateway_id = excluded.gateway_id,"
                    " updated_at = excluded.updated_at",
                    (platform, bot_id, gateway_id, now),
                ),
                (
                    "INSERT INTO gateways (gateway_id, wake_url, updated_at) VALUES ($1, $2, $3)"
                    " ON CONFLICT (gateway_id) DO UPDATE SET"
                    " wake_url = COALESCE(excluded.wake_url, gateways.wake_url),"
                    " updated_at = excluded.updated_at",
                    (gateway_id, wake_url, now),
                ),
                self._notify("route", g=gateway_id, p=platform, b=bot_id, w=wake_url),
            ),
            wait=True,
        )
        assert fut is not None
        await fut

    async def set_flip(self, gateway_id: str, flipped: bool, wake_at: float | None, now: float) -> None:
        """Persist the flip state and pending ``wakeAt`` (Unix seconds) of a gateway, after
        every ack queued before it committed (the ack lane: a restart or another instance must
        never read a flip whose acks are missing, and poke and replay for nothing)."""
        await self.acks_committed()
        fut = self._enqueue_job(
            (
                (
                    "INSERT INTO gateways (gateway_id, flipped, wake_at, updated_at) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (gateway_id) DO UPDATE SET flipped = excluded.flipped,"
                    " wake_at = excluded.wake_at, updated_at = excluded.updated_at",
                    (gateway_id, flipped, wake_at, now),
                ),
                self._notify("flip", g=gateway_id),
            ),
            wait=True,
        )
        assert fut is not None
        await fut

    def clear_flip(self, gateway_id: str, now: float) -> None:
        """Queue clearing the flip and ``wakeAt`` of a gateway (committed with the next group)."""
        self._enqueue(
            "UPDATE gateways SET flipped = false, wake_at = NULL, updated_at = $1 WHERE gateway_id = $2",
            (now, gateway_id),
            wait=False,
        )

    async def identities(self) -> dict[tuple[str, str], str]:
        """``(platform, bot_id) -> gateway_id`` of every identity ever announced."""
        rows = await self._pool.fetch("SELECT platform, bot_id, gateway_id FROM identities")
        return {(r[0], r[1]): r[2] for r in rows}

    async def gateways(self) -> dict[str, GatewayRecord]:
        """Every known gateway's wake URL, flip state and pending ``wakeAt``."""
        rows = await self._pool.fetch("SELECT gateway_id, wake_url, flipped, wake_at FROM gateways")
        return {r[0]: GatewayRecord(r[0], r[1], bool(r[2]), r[3]) for r in rows}

    # --- what instances share --------------------------------------------------------------

    def publish(self, kind: str, **fields: Any) -> None:
        """Queue an event for every instance (sent when its group commits)."""
        self._enqueue_job((self._notify(kind, **fields),), wait=False)

    async def claim_socket(self, gateway_id: str, now: float) -> int:
        """A handshake on this instance: bump the gateway's generation, mark it live here and
        clear its flip and ``wakeAt`` (PROTOCOL.md 5.4); every instance hears ``sock`` with the
        new generation (an older socket anywhere is closed 4409). Returns the generation."""
        async with self._pool.acquire() as con, con.transaction():
            gen = await con.fetchval(
                "INSERT INTO gateways (gateway_id, updated_at, generation, live_instance)"
                " VALUES ($1, $2, 1, $3) ON CONFLICT (gateway_id) DO UPDATE SET"
                " generation = gateways.generation + 1, live_instance = excluded.live_instance,"
                " flipped = false, wake_at = NULL, updated_at = excluded.updated_at"
                " RETURNING generation",
                gateway_id,
                now,
                self.instance,
            )
            await con.execute(
                "SELECT pg_notify($1, $2)",
                self.channel,
                json.dumps({"k": "sock", "g": gateway_id, "n": int(gen), "i": self.instance}),
            )
        return int(gen)

    def release_socket(self, gateway_id: str, generation: int, now: float) -> None:
        """The socket of ``generation`` closed: the gateway is no longer live anywhere, unless a
        newer handshake took over meanwhile (queued; committed with the next group)."""
        self._enqueue(
            "UPDATE gateways SET live_instance = NULL, updated_at = $1"
            " WHERE gateway_id = $2 AND generation = $3",
            (now, gateway_id, generation),
            wait=False,
        )

    async def gateway_live(self, gateway_id: str) -> bool:
        """True when some instance holds a handshaken, unflipped socket of the gateway (as far
        as the table knows: an instance killed with its socket open leaves it true until the
        gateway's next handshake, which that gateway is already re-dialling for)."""
        live = await self._pool.fetchval(
            "SELECT live_instance IS NOT NULL AND NOT flipped FROM gateways WHERE gateway_id = $1", gateway_id
        )
        return bool(live)

    async def generations(self, gateway_ids: list[str]) -> dict[str, int]:
        """The current generation of each of ``gateway_ids`` that has a row."""
        rows = await self._pool.fetch(
            "SELECT gateway_id, generation FROM gateways WHERE gateway_id = ANY($1::text[])", gateway_ids
        )
        return {r[0]: int(r[1]) for r in rows}

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
        """Queue an outbox row (send order = call order); the future resolves on commit. Same
        contract as ``BufferStore.record_outbound`` (a queued platform send also wakes the
        instance that sends for that bot)."""
        chat_id = action.get("chat_id")
        text = json.dumps(action, ensure_ascii=False)
        statements: tuple[Statement, ...] = (
            (
                "INSERT INTO outbox (at, gateway_id, platform, bot_id, chat_id, action)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                (now, gateway_id, platform, bot_id, None if chat_id is None else str(chat_id), text),
            ),
        )
        if platform_send is not None:
            send_id, request_id = platform_send
            statements += (
                (
                    PLATFORM_SEND_SQL,
                    (send_id, gateway_id, platform, bot_id, request_id, idempotency_key, text, now),
                ),
                self._notify("queued", b=bot_id),
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
        args: tuple[Any, ...] = ()
        if chat_id is not None:
            sql += " WHERE chat_id = $1"
            args = (chat_id,)
        rows = await self._pool.fetch(sql + " ORDER BY seq", *args)
        return [
            {"at": r[0], "gateway_id": r[1], "platform": r[2], "bot_id": r[3], "action": json.loads(r[4])}
            for r in rows
        ]
