"""Sessions and their messages in state.db (tables ``sessions``, ``session_messages``, migration 7).

A session belongs to one chat key ``(platform, bot_id, chat_id, thread_id)``; the key's open
session is its row with ``ended_at`` NULL (at most one: rotating ends the old one and opens the
new one in one transaction). Times are Unix seconds. Writes go through ``write_one`` /
``write_tx`` (BEGIN IMMEDIATE), reads through ``read_all`` / ``read_one`` (cancellation-safe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiosqlite

from common.sqlite import read_all, read_one, write_one, write_tx
from gateway.conversation.history import ROLES, Message, estimate_tokens
from gateway.core.session_reset import ResetPolicy, needs_reset

__all__ = ["DEFAULT_POLICY", "ResetPolicy", "Session", "SessionKey", "SessionStore"]

DEFAULT_POLICY = ResetPolicy()
"""``agent.session_reset`` defaults: mode both, 1440 idle minutes, 04:00 UTC."""

_KEY_WHERE = "platform = ? AND bot_id = ? AND chat_id = ? AND thread_id = ?"
_ROW_COLS = (
    "s.id, s.platform, s.bot_id, s.chat_id, s.thread_id, s.hermes_session_id, s.created_at,"
    " s.last_at, s.ended_at,"
    " (SELECT COUNT(*) FROM session_messages m WHERE m.session_id = s.id)"
)
_ROW_KEYS = (
    "id",
    "platform",
    "bot_id",
    "chat_id",
    "thread_id",
    "hermes_session_id",
    "created_at",
    "last_at",
    "ended_at",
    "message_count",
)


@dataclass(frozen=True)
class SessionKey:
    """Which conversation a message belongs to; ``thread_id`` is ``""`` when the chat has none
    (so is ``bot_id`` for a connector identity without one)."""

    platform: str
    bot_id: str
    chat_id: str
    thread_id: str = ""

    def params(self) -> tuple[str, str, str, str]:
        return (self.platform, self.bot_id, self.chat_id, self.thread_id)


@dataclass(frozen=True)
class Session:
    """An open session: ``hermes_session_id`` is the id a ``kind: hermes`` provider knows it
    by (None until the first such turn); ``created_at`` / ``last_at`` in Unix seconds
    (``last_at``: its newest stored message, or its creation)."""

    id: int
    key: SessionKey
    hermes_session_id: str | None
    created_at: float
    last_at: float


def _expired(session: Session, now: float, policy: ResetPolicy) -> bool:
    return needs_reset(
        session.last_at,
        now,
        mode=policy.mode,
        idle_minutes=policy.idle_minutes,
        at_hour=policy.at_hour,
        tz=policy.tz,
    )


class SessionStore:
    """Sessions and messages on one state.db connection (``gateway.statedb.open_state_db``)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    # --- reads -----------------------------------------------------------------------------

    async def _open(self, key: SessionKey) -> Session | None:
        row = await read_one(
            self.db,
            "SELECT id, hermes_session_id, created_at, last_at FROM sessions"
            f" WHERE {_KEY_WHERE} AND ended_at IS NULL ORDER BY id DESC LIMIT 1",
            key.params(),
        )
        return None if row is None else Session(row[0], key, row[1], row[2], row[3])

    async def messages(self, session_id: int, newest: int | None = None) -> list[Message]:
        """The session's messages in conversation order: by inbox row (arrival), a row's user
        message before its answer; only the ``newest`` ones when given (read through the
        ``(session_id, inbox_id)`` index, so a long session costs no more than a short one).
        [] for an unknown id."""
        order = "inbox_id DESC, CASE role WHEN 'user' THEN 1 ELSE 0 END, id DESC"
        sql = f"SELECT role, content, at FROM session_messages WHERE session_id = ? ORDER BY {order}"
        params: tuple[int, ...] = (session_id,)
        if newest is not None:
            sql += " LIMIT ?"
            params = (session_id, max(0, newest))
        rows = await read_all(self.db, sql, params)
        return [Message(role, content, at) for role, content, at in reversed(rows)]

    async def session_of(self, inbox_id: int) -> int | None:
        """The session holding an inbox row's user message (None when it has none): where a
        resumed turn's answer goes."""
        row = await read_one(
            self.db,
            "SELECT session_id FROM session_messages WHERE inbox_id = ? AND role = 'user'",
            (inbox_id,),
        )
        return None if row is None else int(row[0])

    async def get(self, session_id: int) -> dict[str, Any] | None:
        """One session as ``list_sessions`` shows it, or None when there is no such id."""
        rows = await self._rows("WHERE s.id = ?", (session_id,))
        return rows[0] if rows else None

    async def list_sessions(
        self, platform: str | None = None, chat_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Sessions newest first, optionally of one ``platform`` and/or ``chat_id`` (any
        bot_id and thread). Each: ``id``, ``platform``, ``bot_id``, ``chat_id``,
        ``thread_id``, ``hermes_session_id``, ``created_at``, ``last_at``, ``ended_at`` (None
        while open) and ``message_count``."""
        clauses: list[str] = []
        params: list[str] = []
        if platform is not None:
            clauses.append("s.platform = ?")
            params.append(platform)
        if chat_id is not None:
            clauses.append("s.chat_id = ?")
            params.append(chat_id)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return await self._rows(where, tuple(params))

    async def _rows(self, where: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        rows = await read_all(
            self.db, f"SELECT {_ROW_COLS} FROM sessions s {where} ORDER BY s.id DESC", params
        )
        return [dict(zip(_ROW_KEYS, row, strict=True)) for row in rows]

    # --- writes ----------------------------------------------------------------------------

    async def current(self, key: SessionKey, now: float, policy: ResetPolicy = DEFAULT_POLICY) -> Session:
        """The open session of ``key`` for a message at ``now``.

        A new one is opened (``created_at`` = ``last_at`` = ``now``) when the key has none, or
        when ``needs_reset(open.last_at, now, ...)`` says the open one is over under ``policy``;
        that one then gets ``ended_at`` = ``now`` in the same transaction. Concurrent callers
        (tasks or processes) for one key get the same session: the check is repeated under the
        write lock. Writes nothing when the open session goes on.
        """
        found = await self._open(key)
        if found is not None and not _expired(found, now, policy):
            return found
        async with write_tx(self.db):
            found = await self._open(key)  # another writer may have rotated it meanwhile
            if found is not None and not _expired(found, now, policy):
                return found
            await self._end(key, now)
            return await self._insert(key, now)

    async def reset(self, key: SessionKey, now: float) -> Session:
        """End ``key``'s open session (if any, ``ended_at`` = ``now``) and open a new one
        (``/new``, ``/reset``)."""
        async with write_tx(self.db):
            await self._end(key, now)
            return await self._insert(key, now)

    async def end_chat(self, platform: str, chat_id: str, now: float) -> list[int]:
        """End every open session of one chat, whatever its bot_id and thread (``sessions reset
        PLATFORM:CHAT_ID``); the next message there opens a new one. Returns the ended ids."""
        async with write_tx(self.db):
            rows = await read_all(
                self.db,
                "SELECT id FROM sessions WHERE platform = ? AND chat_id = ? AND ended_at IS NULL ORDER BY id",
                (platform, chat_id),
            )
            ids = [int(r[0]) for r in rows]
            if ids:
                await self.db.execute(
                    "UPDATE sessions SET ended_at = ?"
                    " WHERE platform = ? AND chat_id = ? AND ended_at IS NULL",
                    (now, platform, chat_id),
                )
        return ids

    async def _end(self, key: SessionKey, now: float) -> None:
        """Inside a ``write_tx``: close the key's open session(s)."""
        await self.db.execute(
            f"UPDATE sessions SET ended_at = ? WHERE {_KEY_WHERE} AND ended_at IS NULL", (now, *key.params())
        )

    async def _insert(self, key: SessionKey, now: float) -> Session:
        """Inside a ``write_tx``: a new open session for ``key``."""
        cur = await self.db.execute(
            "INSERT INTO sessions (platform, bot_id, chat_id, thread_id, created_at, last_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (*key.params(), now, now),
        )
        assert cur.lastrowid is not None  # a plain INSERT into a rowid table always has one
        return Session(cur.lastrowid, key, None, now, now)

    async def add_message(self, session_id: int, inbox_id: int, role: str, content: str, now: float) -> None:
        """Store one message (``role`` ``user`` or ``assistant``, ``content`` verbatim, at
        ``now``, with its ``estimate_tokens``) of inbox row ``inbox_id``, and move the session's
        ``last_at`` up to ``now``.

        Idempotent per ``(inbox_id, role)``: a second call for the same pair changes nothing
        (not even ``last_at``), so a replayed turn never doubles its question or answer.
        Raises ``ValueError`` for another role and ``sqlite3.IntegrityError`` for an unknown
        ``session_id``.
        """
        if role not in ROLES:
            raise ValueError(f"message role {role!r} must be one of {', '.join(ROLES)}")
        async with write_tx(self.db):
            cur = await self.db.execute(
                "INSERT OR IGNORE INTO session_messages (session_id, inbox_id, role, content, at, tokens)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, inbox_id, role, content, now, estimate_tokens(content)),
            )
            if cur.rowcount == 1:
                await self.db.execute(
                    "UPDATE sessions SET last_at = MAX(last_at, ?) WHERE id = ?", (now, session_id)
                )

    async def set_hermes_id(self, session_id: int, hermes_id: str) -> None:
        """Remember the id a ``kind: hermes`` provider knows the session by (SPEC 8.2)."""
        await write_one(
            self.db, "UPDATE sessions SET hermes_session_id = ? WHERE id = ?", (hermes_id, session_id)
        )

    async def prune(self, before: float) -> int:
        """Delete every message stored before ``before`` (``agent.history_retention_days``);
        returns how many. Sessions stay (their ``message_count`` drops); an answer whose
        question was pruned is a stray assistant message, which history leaves out."""
        cur = await write_one(self.db, "DELETE FROM session_messages WHERE at < ?", (before,))
        return max(cur.rowcount, 0)
