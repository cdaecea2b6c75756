"""Idempotency keys (PROTOCOL.md 7.1): the stored ``outbound_result`` of every outbound that
carried an ``idempotencyKey``, per gateway, kept at least ``IDEMPOTENCY_KEEP_S``.
"""

from __future__ import annotations

import json
from typing import Any

from common.sqlite import read_one
from relay.connector.store_writer import StoreWriter

IDEMPOTENCY_KEEP_S = 7 * 86400.0
"""How long (seconds) an idempotency key and its result are kept at least (PROTOCOL.md 7.1)."""

KEY_SQL = "INSERT INTO idempotency (gateway_id, idempotency_key, result, created_at) VALUES (?, ?, ?, ?)"
"""Store one key: ``(gateway_id, key, result json, now)``."""


class IdempotencyStore(StoreWriter):
    """The ``idempotency`` table (writes go through the shared writer)."""

    async def idempotent_result(self, gateway_id: str, key: str) -> dict[str, Any] | None:
        """The committed result stored for ``(gateway_id, key)``, or None for an unknown key."""
        row = await read_one(
            self._r,
            "SELECT result FROM idempotency WHERE gateway_id = ? AND idempotency_key = ?",
            (gateway_id, key),
        )
        if row is None:
            return None
        stored = json.loads(row[0])
        return stored if isinstance(stored, dict) else None
