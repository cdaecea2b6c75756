"""The ``deliveries`` table of state.db (migration 2): chat messages waiting for the relay.

Cron results and alerts, and kanban replies sent while no sidecar runs, are queued here and
sent, in order of id, once the relay is connected (``gateway/runtime/deliveries.py``). It lives
beside the cron store, the lowest layer that writes to it, so the runtime and the management
commands import it downward. Times are Unix seconds; every write is one ``write_one``.
"""

from __future__ import annotations

from typing import NamedTuple

import aiosqlite

from common.sqlite import read_all, write_one


class Delivery(NamedTuple):
    """One queued, unsent delivery."""

    id: int
    platform: str
    chat_id: str
    content: str


class DeliveryStore:
    """Queued deliveries on one state.db connection (shared with the rest of the sidecar)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def queue(self, platform: str, chat_id: str, content: str, now: float) -> None:
        """Keep a message for ``platform:chat_id`` until it is sent."""
        await write_one(
            self.db,
            "INSERT INTO deliveries (platform, chat_id, content, created_at) VALUES (?, ?, ?, ?)",
            (platform, chat_id, content, now),
        )

    async def pending(self) -> list[Delivery]:
        """Unsent deliveries, oldest (lowest id) first."""
        rows = await read_all(
            self.db,
            "SELECT id, platform, chat_id, content FROM deliveries WHERE sent_at IS NULL ORDER BY id",
        )
        return [Delivery(r[0], r[1], r[2], r[3]) for r in rows]

    async def mark_delivered(self, delivery_id: int, now: float) -> None:
        """Record a delivery as sent at ``now`` (an unknown id changes nothing)."""
        await write_one(self.db, "UPDATE deliveries SET sent_at = ? WHERE id = ?", (now, delivery_id))
