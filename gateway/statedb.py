"""``$HERMES_HOME/state.db``: one SQLite file (WAL), one ``schema_version``, ordered migrations.

Each subsystem owns its tables but adds its migration here, in order, so every database
reaches the same shape. The inbox connection runs ``synchronous=FULL``: an ``inbound_ack``
is only sent after a commit that survives power loss (PROTOCOL.md 5.5).
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from relay.sqlite import migrate, open_db

MIGRATIONS = [
    # 1: inbox
    """
    CREATE TABLE inbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        buffer_id TEXT UNIQUE,
        platform TEXT NOT NULL,
        bot_id TEXT NOT NULL DEFAULT '',
        chat_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        profile TEXT,
        event TEXT NOT NULL,
        received_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        started_at REAL,
        finished_at REAL,
        error TEXT,
        UNIQUE (platform, chat_id, message_id)
    );
    CREATE INDEX inbox_pending ON inbox (status, id);
    """,
]


async def open_state_db(path: Path, *, synchronous: str = "FULL") -> aiosqlite.Connection:
    """Open state.db (creating ``$HERMES_HOME``), migrated to the current schema."""
    db = await open_db(str(path), synchronous=synchronous)
    await migrate(db, MIGRATIONS)
    return db
