"""Inbox persistence: admit a batch of inbound frames durably, then hand out pending work.

``admit(frames)`` commits every new event in one transaction (synchronous=FULL) and returns
the new rows; a frame whose ``bufferId`` or ``(platform, chat_id, message_id)`` is already
stored is a duplicate: it is acked again by the transport but never handled twice.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiosqlite

from relay.sqlite import write_one, write_tx


@dataclass(frozen=True)
class InboxItem:
    """One admitted user message."""

    id: int
    buffer_id: str | None
    platform: str
    chat_id: str
    message_id: str
    profile: str | None
    event: dict[str, Any]


def _key(frame: dict[str, Any]) -> tuple[str | None, str, str, str, str | None, dict[str, Any]]:
    ev = frame["event"]
    src = ev.get("source") if isinstance(ev.get("source"), dict) else {}
    bid = frame.get("bufferId")
    profile = src.get("profile") if isinstance(src.get("profile"), str) else None
    return (
        None if bid is None else str(bid),
        str(src.get("platform", "")),
        str(src.get("chat_id", "")),
        str(ev.get("message_id", "")),
        profile,
        ev,
    )


class InboxStore:
    """The ``inbox`` table of state.db. Statuses: pending -> running -> done | failed."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def admit(
        self, frames: list[dict[str, Any]], now: float,
        in_tx: Callable[[list[InboxItem]], Awaitable[None]] | None = None,
    ) -> list[InboxItem]:
        """Persist new inbound events in one durable transaction; return only the new ones.

        A frame without a usable ``message_id`` is still stored (keyed by its bufferId).
        ``in_tx(new)`` runs inside the same transaction (the sidecar creates the board tasks
        there: one commit, and never an inbox row without its task).
        """
        new: list[InboxItem] = []
        async with write_tx(self.db):
            for frame in frames:
                bid, platform, chat_id, message_id, profile, ev = _key(frame)
                if not message_id:
                    message_id = f"buffer:{bid}"
                cur = await self.db.execute(
                    "INSERT OR IGNORE INTO inbox (buffer_id, platform, chat_id, message_id, profile,"
                    " event, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (bid, platform, chat_id, message_id, profile, json.dumps(ev), now),
                )
                if cur.rowcount == 1 and cur.lastrowid is not None:
                    new.append(InboxItem(cur.lastrowid, bid, platform, chat_id, message_id,
                                         profile, ev))
            if new and in_tx is not None:
                await in_tx(new)
        return new

    async def unfinished(self) -> list[InboxItem]:
        """Pending and interrupted (running) items, oldest first: the work left by a restart."""
        async with self.db.execute(
            "SELECT id, buffer_id, platform, chat_id, message_id, profile, event FROM inbox"
            " WHERE status IN ('pending', 'running') ORDER BY id"
        ) as cur:
            rows = await cur.fetchall()
        return [InboxItem(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    async def get(self, item_id: int) -> InboxItem | None:
        """One item by id (None when there is none)."""
        async with self.db.execute(
            "SELECT id, buffer_id, platform, chat_id, message_id, profile, event FROM inbox"
            " WHERE id = ?", (item_id,)
        ) as cur:
            r = await cur.fetchone()
        return None if r is None else InboxItem(r[0], r[1], r[2], r[3], r[4], r[5],
                                                json.loads(r[6]))

    async def mark(self, item_id: int, status: str, now: float, error: str | None = None) -> None:
        """Move an item to ``running``, ``done`` or ``failed`` (committed at once)."""
        col = "started_at" if status == "running" else "finished_at"
        await write_one(
            self.db, f"UPDATE inbox SET status = ?, {col} = ?, error = ? WHERE id = ?",
            (status, now, error, item_id),
        )
