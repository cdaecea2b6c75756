"""PostgreSQL tables of outbound state: idempotency keys (PROTOCOL.md 7.1, kept at least
``IDEMPOTENCY_KEEP_S``) and the durable platform send queue (SPEC 8.3). Same contract as the
SQLite ``store_idempotency`` / ``store_platform`` mix-ins.
"""

from __future__ import annotations

import json
from typing import Any

from relay.connector.pg.writer import PgWriter
from relay.connector.store_platform import SEND_COLS, PlatformSend, send_of_row
from relay.connector.store_writer import Statement

KEY_SQL = "INSERT INTO idempotency (gateway_id, idempotency_key, result, created_at) VALUES ($1, $2, $3, $4)"
"""Store one key: ``(gateway_id, key, result json, now)``; a known key fails (unique)."""
PLATFORM_SEND_SQL = (
    "INSERT INTO platform_sends (send_id, gateway_id, platform, bot_id, request_id, idempotency_key,"
    " action, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)
"""Queue one send: ``(send_id, gateway_id, platform, bot_id, request_id, key, action json, now)``."""


class PgSendStore(PgWriter):
    """The ``idempotency`` and ``platform_sends`` tables (writes go through the shared writer)."""

    async def idempotent_result(self, gateway_id: str, key: str) -> dict[str, Any] | None:
        """The committed result stored for ``(gateway_id, key)``, or None for an unknown key."""
        text = await self._pool.fetchval(
            "SELECT result FROM idempotency WHERE gateway_id = $1 AND idempotency_key = $2", gateway_id, key
        )
        if text is None:
            return None
        stored = json.loads(text)
        return stored if isinstance(stored, dict) else None

    async def pending_platform_sends(
        self, platform: str, bot_id: str, limit: int = 100
    ) -> list[PlatformSend]:
        """The oldest unfinished platform sends of one bot, in queue order."""
        rows = await self._pool.fetch(
            f"SELECT {SEND_COLS} FROM platform_sends WHERE platform = $1 AND bot_id = $2 AND done_at IS NULL"
            " ORDER BY seq LIMIT $3",
            platform,
            bot_id,
            limit,
        )
        return [send_of_row(r) for r in rows]

    async def platform_send_by_key(self, gateway_id: str, key: str) -> PlatformSend | None:
        """The platform send queued with idempotency key ``key`` by ``gateway_id`` (if any)."""
        row = await self._pool.fetchrow(
            f"SELECT {SEND_COLS} FROM platform_sends WHERE gateway_id = $1 AND idempotency_key = $2"
            " ORDER BY seq DESC LIMIT 1",
            gateway_id,
            key,
        )
        return None if row is None else send_of_row(row)

    async def platform_send(self, send_id: str) -> PlatformSend | None:
        """The platform send ``send_id`` (queued or done), or None when there is none."""
        row = await self._pool.fetchrow(f"SELECT {SEND_COLS} FROM platform_sends WHERE send_id = $1", send_id)
        return None if row is None else send_of_row(row)

    async def platform_sends(self) -> list[PlatformSend]:
        """Every platform send (for tests and inspection), in queue order."""
        rows = await self._pool.fetch(f"SELECT {SEND_COLS} FROM platform_sends ORDER BY seq")
        return [send_of_row(r) for r in rows]

    def note_platform_attempt(self, send_id: str, error: str) -> None:
        """Count a failed attempt of a platform send (queued; committed with the next group)."""
        self._enqueue(
            "UPDATE platform_sends SET attempts = attempts + 1, last_error = $1 WHERE send_id = $2",
            (error, send_id),
            wait=False,
        )

    async def finish_platform_send(self, send: PlatformSend, result: dict[str, Any], now: float) -> None:
        """Mark a platform send done with its final ``result``; its idempotency key (if any) is
        stored with that result in the same transaction, and every instance hears ``sent``.
        Awaits the commit."""
        text = json.dumps(result, ensure_ascii=False)
        statements: tuple[Statement, ...] = (
            (
                "UPDATE platform_sends SET done_at = $1, result = $2 WHERE send_id = $3",
                (now, text, send.send_id),
            ),
        )
        if send.idempotency_key is not None:
            statements += (
                (
                    "INSERT INTO idempotency (gateway_id, idempotency_key, result, created_at)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (gateway_id, idempotency_key)"
                    " DO UPDATE SET result = excluded.result, created_at = excluded.created_at",
                    (send.gateway_id, send.idempotency_key, text, now),
                ),
            )
        statements += (self._notify("sent", s=send.send_id, g=send.gateway_id, i=self.instance),)
        fut = self._enqueue_job(statements, wait=True)
        assert fut is not None
        await fut
