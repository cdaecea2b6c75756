"""The PostgreSQL form of the connector store's group-commit writer, and its event payloads.

Every queued write lands in one transaction per group (``GroupWriter``), on a pooled
connection, at the server's default READ COMMITTED isolation: each statement is a single-row
insert or update keyed by its primary key, so no statement depends on a read another
transaction could invalidate. The one ordering rule PostgreSQL does not give for free is the
buffer's: an identity ``seq`` is taken at insert time, not at commit, so two transactions could
commit seq 11 before seq 10 and a sender whose cursor passed 11 would skip 10. A group that
appends to a gateway's buffer therefore takes that gateway's transaction-scoped advisory lock
before it draws a seq, so per gateway, seq order is commit order. Locks are always taken in
ascending key order (all of them first in a mixed group, row by row in a group of plain appends,
whose rows are sorted by key), so two groups never wait on each other in a cycle.

Round trips: a group of plain appends, or of one statement that needs no lock or event (a run of
acks), is one ``executemany`` (statements between two Syncs are one transaction); any other
group is ``BEGIN``, the locks, its statements, its events, ``COMMIT``. Over a network each round
trip is a wait, and on one machine a write to the server.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import asyncpg

from relay.connector.store_api import StoreIntegrityError
from relay.connector.store_writer import GroupWriter, Job, Statement

ACK_SQL = "UPDATE buffer SET acked_at = $1 WHERE buffer_id = $2 AND gateway_id = $3 AND acked_at IS NULL"
"""The buffer ack: ``(now, buffer_id, gateway_id)``."""
APPEND_SQL = (
    "INSERT INTO buffer (buffer_id, gateway_id, platform, bot_id, chat_id, frame, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
"""Append one entry: ``(buffer_id, gateway_id, platform, bot_id, chat_id, frame, now)``."""
APPEND_UPDATE_SQL = (
    "WITH seen AS (INSERT INTO telegram_updates (bot_id, update_id, created_at)"
    " VALUES ($8::text, $9::bigint, $7::float8) ON CONFLICT DO NOTHING RETURNING 1)"
    " INSERT INTO buffer (buffer_id, gateway_id, platform, bot_id, chat_id, frame, created_at)"
    " SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::float8"
    " WHERE EXISTS (SELECT 1 FROM seen)"
)
"""Append a Telegram update's entry only if its ``(bot, update_id)`` is new, in one statement:
a repeat delivered to another instance at the same moment waits for the first and stores
nothing (SPEC 8.3: stored once). Params: ``APPEND_SQL``'s, then ``(bot_id, update_id)``."""
NOTIFY_SQL = "SELECT pg_notify($1, $2)"
"""Queue one event ``(channel, payload json)``; PostgreSQL delivers it when the group commits."""
LOCKED_APPEND_SQL = (
    "WITH turn AS MATERIALIZED (SELECT pg_advisory_xact_lock($8::bigint), pg_notify($9::text, $10::text))"
    " INSERT INTO buffer (buffer_id, gateway_id, platform, bot_id, chat_id, frame, created_at)"
    " SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::float8 FROM turn"
)
"""``APPEND_SQL`` that first takes its gateway's append lock and queues its ``buf`` event, for a
group of appends sent as one ``executemany`` (one round trip: the statements between two Syncs
are one transaction). The materialized CTE is read before the row is inserted, so the lock is
held before the identity ``seq`` is drawn; a lock taken again in the same transaction stacks,
and identical events of one transaction reach listeners once. Params: ``APPEND_SQL``'s, then
``(lock key, channel, event)``."""

_SERIAL = (APPEND_SQL, APPEND_UPDATE_SQL)


def gateway_lock_key(gateway_id: str) -> int:
    """The signed 64-bit advisory lock key of one gateway's buffer appends."""
    digest = hashlib.blake2b(gateway_id.encode("utf-8", "surrogateescape"), digest_size=8, person=b"relaybuf")
    return int.from_bytes(digest.digest(), "big", signed=True)


def event(kind: str, **fields: Any) -> str:
    """An event payload: ``{"k": kind, ...fields}`` as compact JSON (PostgreSQL caps payloads at
    8000 bytes; every event carries ids only, the rows stay in the tables)."""
    return json.dumps({"k": kind, **fields}, separators=(",", ":"))


class PgWriter(GroupWriter):
    """Group commit on an ``asyncpg`` pool; ``channel`` is where this store's events go and
    ``instance`` (random hex, one per open store) names this process in them.

    A group that breaks a unique constraint raises ``StoreIntegrityError`` (each of its jobs is
    then retried alone, so only the bad one fails); other server errors raise as ``asyncpg``
    errors, connection loss as ``OSError`` / ``asyncpg.InterfaceError``.
    """

    ack_sql = ACK_SQL
    placeholder = "$1"
    ack_lane = True

    def __init__(self, pool: asyncpg.Pool, channel: str) -> None:
        self._pool = pool
        self.channel = channel
        self.instance = uuid.uuid4().hex[:12]
        super().__init__()

    @property
    def pool(self) -> asyncpg.Pool:
        """The store's asyncpg pool (``relay/connector/pg/importer.py`` copies through it)."""
        return self._pool

    def _notify(self, kind: str, **fields: Any) -> Statement:
        return (NOTIFY_SQL, (self.channel, event(kind, **fields)))

    async def _close_connections(self) -> None:
        await self._pool.close()

    async def _commit(self, jobs: list[Job]) -> None:
        # Events go last, each payload once: PostgreSQL delivers them at commit whatever their
        # place, and this way consecutive appends stay one ``executemany`` (no round trip each).
        ops: list[Statement] = []
        events: dict[Any, None] = {}
        for statements, _ in jobs:
            for st in statements:
                if st[0] is NOTIFY_SQL:
                    events[st[1]] = None
                elif st[0]:
                    ops.append(st)
        appends = self._appends_only(ops, events)
        ops += [(NOTIFY_SQL, params) for params in events]
        if not ops:
            return
        keys = sorted({gateway_lock_key(params[1]) for sql, params in ops if sql in _SERIAL})
        try:
            if appends is not None or (len({sql for sql, _ in ops}) == 1 and not keys):
                # One statement, many rows: one executemany, one round trip, atomic on its own
                # (instead of BEGIN, lock, statements, events, COMMIT: five).
                async with self._pool.acquire() as con:
                    if appends is not None:
                        await con.executemany(LOCKED_APPEND_SQL, appends)
                    else:
                        await con.executemany(ops[0][0], [params for _, params in ops])
                return
            async with self._pool.acquire() as con, con.transaction():
                if keys:
                    await con.execute("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k", keys)
                i = 0
                while i < len(ops):
                    j = i
                    while j < len(ops) and ops[j][0] == ops[i][0]:
                        j += 1
                    if j - i == 1:
                        await con.execute(ops[i][0], *ops[i][1])
                    else:
                        await con.executemany(ops[i][0], [op[1] for op in ops[i:j]])
                    i = j
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise StoreIntegrityError(f"duplicate key: {exc}") from None

    def _appends_only(self, ops: list[Statement], events: dict[Any, None]) -> list[tuple[Any, ...]] | None:
        """The ``LOCKED_APPEND_SQL`` rows of a group that only appends plain entries and
        announces them (its events are exactly the ``buf`` events of its gateways), ordered by
        lock key (stable: each gateway's entries keep their order, and two instances take
        their locks in one order, so they never deadlock); None for any other group."""
        if not ops or any(sql is not APPEND_SQL for sql, _ in ops):
            return None
        gateways = {params[1] for _, params in ops}
        announced = {gid: (self.channel, event("buf", g=gid)) for gid in gateways}
        if set(events) != set(announced.values()):
            return None
        rows = [(*params, gateway_lock_key(params[1]), *announced[params[1]]) for _, params in ops]
        rows.sort(key=lambda row: row[7])
        return rows
