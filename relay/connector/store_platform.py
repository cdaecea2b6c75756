"""Durable platform sends (SPEC 8.3): the ``platform_sends`` queue the Telegram worker drains,
each send's attempts and final result (its idempotency key moves to ``idempotency`` with it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.sqlite import read_all, read_one
from relay.connector.store_writer import Statement, StoreWriter

PLATFORM_SEND_SQL = (
    "INSERT INTO platform_sends (send_id, gateway_id, platform, bot_id, request_id, idempotency_key,"
    " action, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
"""Queue one send: ``(send_id, gateway_id, platform, bot_id, request_id, key, action json, now)``."""


@dataclass(frozen=True)
class PlatformSend:
    """One queued platform call (a Telegram ``sendMessage``/``sendChatAction``/``editMessageText``)."""

    seq: int
    send_id: str
    gateway_id: str
    platform: str
    bot_id: str
    request_id: str | None
    idempotency_key: str | None
    action: dict[str, Any]
    created_at: float
    attempts: int
    done: bool
    result: dict[str, Any] | None


SEND_COLS = (
    "seq, send_id, gateway_id, platform, bot_id, request_id, idempotency_key, action, created_at,"
    " attempts, done_at, result"
)


def send_of_row(r: Any) -> PlatformSend:
    """A ``PlatformSend`` from a row of ``SEND_COLS`` (SQLite tuple or PostgreSQL record)."""
    return PlatformSend(
        seq=int(r[0]),
        send_id=str(r[1]),
        gateway_id=str(r[2]),
        platform=str(r[3]),
        bot_id=str(r[4]),
        request_id=r[5],
        idempotency_key=r[6],
        action=json.loads(r[7]),
        created_at=float(r[8]),
        attempts=int(r[9]),
        done=r[10] is not None,
        result=None if r[11] is None else json.loads(r[11]),
    )


class PlatformSendStore(StoreWriter):
    """The ``platform_sends`` table (writes go through the shared writer)."""

    async def pending_platform_sends(
        self, platform: str, bot_id: str, limit: int = 100
    ) -> list[PlatformSend]:
        """The oldest unfinished platform sends of one bot, in queue order."""
        rows = await read_all(
            self._r,
            f"SELECT {SEND_COLS} FROM platform_sends WHERE platform = ? AND bot_id = ? AND done_at IS NULL"
            " ORDER BY seq LIMIT ?",
            (platform, bot_id, limit),
        )
        return [send_of_row(r) for r in rows]

    async def platform_send_by_key(self, gateway_id: str, key: str) -> PlatformSend | None:
        """The platform send queued with ``idempotency_key`` ``key`` by ``gateway_id`` (if any)."""
        row = await read_one(
            self._r,
            f"SELECT {SEND_COLS} FROM platform_sends WHERE gateway_id = ? AND idempotency_key = ?"
            " ORDER BY seq DESC LIMIT 1",
            (gateway_id, key),
        )
        return None if row is None else send_of_row(row)

    async def platform_send(self, send_id: str) -> PlatformSend | None:
        """The platform send ``send_id`` (queued or done), or None when there is none."""
        row = await read_one(self._r, f"SELECT {SEND_COLS} FROM platform_sends WHERE send_id = ?", (send_id,))
        return None if row is None else send_of_row(row)

    async def platform_sends(self) -> list[PlatformSend]:
        """Every platform send (for tests and inspection), in queue order."""
        rows = await read_all(self._r, f"SELECT {SEND_COLS} FROM platform_sends ORDER BY seq")
        return [send_of_row(r) for r in rows]

    def note_platform_attempt(self, send_id: str, error: str) -> None:
        """Count a failed attempt of a platform send (queued; committed with the next group)."""
        self._enqueue(
            "UPDATE platform_sends SET attempts = attempts + 1, last_error = ? WHERE send_id = ?",
            (error, send_id),
            wait=False,
        )

    async def finish_platform_send(self, send: PlatformSend, result: dict[str, Any], now: float) -> None:
        """Mark a platform send done with its final ``result``; its idempotency key (if any) is
        stored with that result in the same transaction. Awaits the commit."""
        text = json.dumps(result, ensure_ascii=False)
        statements: tuple[Statement, ...] = (
            (
                "UPDATE platform_sends SET done_at = ?, result = ? WHERE send_id = ?",
                (now, text, send.send_id),
            ),
        )
        if send.idempotency_key is not None:
            statements += (
                (
                    "INSERT OR REPLACE INTO idempotency (gateway_id, idempotency_key, result, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (send.gateway_id, send.idempotency_key, text, now),
                ),
            )
        fut = self._enqueue_job(statements, wait=True)
        assert fut is not None
        await fut
