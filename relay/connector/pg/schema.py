"""The PostgreSQL schema of the connector store and its keyed migrations.

Same tables as the SQLite store (``relay/connector/store.py``) plus what several instances
share: ``gateways.generation`` (bumped by every handshake: the newest one wins everywhere) and
``gateways.live_instance`` (the instance holding the gateway's live socket, if any).
Migration ``i`` (1-based) runs once, in a transaction holding an advisory lock, so instances
starting together never migrate twice.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

MIGRATIONS = [
    """
    CREATE TABLE gateways (
        gateway_id TEXT PRIMARY KEY,
        wake_url TEXT,
        flipped BOOLEAN NOT NULL DEFAULT false,
        wake_at DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL,
        generation BIGINT NOT NULL DEFAULT 0,
        live_instance TEXT
    );
    CREATE TABLE identities (
        platform TEXT NOT NULL,
        bot_id TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (platform, bot_id)
    );
    CREATE TABLE buffer (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        buffer_id TEXT NOT NULL UNIQUE,
        gateway_id TEXT NOT NULL,
        platform TEXT NOT NULL,
        bot_id TEXT NOT NULL,
        chat_id TEXT NOT NULL,
        frame TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        acked_at DOUBLE PRECISION
    );
    CREATE INDEX buffer_unacked ON buffer (gateway_id, seq) WHERE acked_at IS NULL;
    CREATE TABLE outbox (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        gateway_id TEXT NOT NULL,
        platform TEXT NOT NULL,
        bot_id TEXT NOT NULL,
        chat_id TEXT,
        action TEXT NOT NULL
    );
    CREATE INDEX outbox_chat ON outbox (chat_id, seq);
    CREATE TABLE idempotency (
        gateway_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        result TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (gateway_id, idempotency_key)
    );
    CREATE INDEX idempotency_age ON idempotency (created_at);
    CREATE TABLE platform_sends (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        send_id TEXT NOT NULL UNIQUE,
        gateway_id TEXT NOT NULL,
        platform TEXT NOT NULL,
        bot_id TEXT NOT NULL,
        request_id TEXT,
        idempotency_key TEXT,
        action TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        done_at DOUBLE PRECISION,
        result TEXT
    );
    CREATE INDEX platform_sends_pending ON platform_sends (platform, bot_id, seq) WHERE done_at IS NULL;
    CREATE INDEX platform_sends_key ON platform_sends (gateway_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE telegram_updates (
        bot_id TEXT NOT NULL,
        update_id BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (bot_id, update_id)
    );
    """,
    # 2: SQLite files imported into this database (``relay/connector/pg/importer.py``): one row
    # per source, so a restart after an import that was not yet renamed never copies it twice.
    """
    CREATE TABLE relay_imports (
        source TEXT PRIMARY KEY,
        imported_at DOUBLE PRECISION NOT NULL,
        counts TEXT NOT NULL
    );
    """,
]

MIGRATE_LOCK = 0x6865726D_00000001
"""Advisory lock key held while migrating (instances starting at once take turns)."""


async def migrate(
    con: asyncpg.Connection[Any] | PoolConnectionProxy[Any], migrations: list[str] = MIGRATIONS
) -> int:
    """Bring the schema (in the connection's ``search_path``) up to ``len(migrations)``; return
    the version in force. Each script commits together with its version bump."""
    version = 0
    for index, script in enumerate(migrations, start=1):
        async with con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            await con.execute("CREATE TABLE IF NOT EXISTS relay_schema_version (version INTEGER NOT NULL)")
            current = await con.fetchval("SELECT version FROM relay_schema_version")
            if current is not None and current >= index:
                version = int(current)
                continue
            await con.execute(script)
            if current is None:
                await con.execute("INSERT INTO relay_schema_version (version) VALUES ($1)", index)
            else:
                await con.execute("UPDATE relay_schema_version SET version = $1", index)
            version = index
    return version
