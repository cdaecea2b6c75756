"""The Telegram webhook (SPEC 8.3): ``POST /telegram/{gateway_id}`` checks the secret
header and stores each message update once per ``(bot, update_id)`` through ``ingest``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from relay.connector import telegram as tg
from relay.connector.ingress import IngressError, parse_body
from relay.connector.ingress_routes import read_body, same

if TYPE_CHECKING:
    from relay.connector.surface import ConnectorSurface

log = logging.getLogger("relay.connector")


class TelegramWebhook:
    """Webhook updates for a ``Connector``'s configured bots (``telegram_bots``)."""

    def __init__(self, connector: ConnectorSurface) -> None:
        self.c = connector
        self._updates_inflight: dict[tuple[str, int], asyncio.Future[bool]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /telegram/{gateway_id}``: a Bot API webhook Update (SPEC 8.3). 401 without the
        secret header, 404 for a gateway with no bot, 400 for a bad body (nothing stored); a
        non-message update or a repeated ``update_id`` -> 200 and nothing (more) stored."""
        gid = request.match_info["gateway_id"]
        given = request.headers.get(tg.SECRET_HEADER)
        secret = self.c.telegram_webhook_secret
        if secret is None or given is None or not same(given, secret):
            return web.json_response({"error": f"missing or wrong {tg.SECRET_HEADER} header"}, status=401)
        bot = self.c.telegram_bots.get(gid)
        if bot is None:
            return web.json_response(
                {"error": f"no telegram bot is configured for gateway {gid!r}"}, status=404
            )
        try:
            raw = await read_body(request, self.c.max_body_bytes)
            update_id, body = tg.ingress_body(parse_body(raw))
            if body is None:
                return web.json_response({"ok": True, "ignored": "not a message update"})
            out = await self._ingest_update(gid, bot[0], update_id, body)
        except IngressError as exc:
            log.debug("telegram webhook for %s refused (%d): %s", gid, exc.status, exc)
            return web.json_response({"error": str(exc)}, status=exc.status)
        return web.json_response({"ok": True, **out})

    async def _ingest_update(
        self, gid: str, bot_id: str, update_id: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Store one webhook message once per ``(bot, update_id)``: a repeat that arrives while
        the first is being stored waits for it (and is stored itself if the first failed)."""
        slot = (bot_id, update_id)
        while (pending := self._updates_inflight.get(slot)) is not None:
            if await asyncio.shield(pending):
                return {"duplicate": True}
        mine: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._updates_inflight[slot] = mine
        stored = False
        try:
            try:
                seen = await self.c.store.update_seen(bot_id, update_id)
            except Exception as exc:
                log.error("telegram update %s not checked: %s", update_id, exc)
                raise IngressError(503, "connector store unavailable; nothing was stored") from None
            if seen:
                stored = True
                return {"duplicate": True}
            out = await self.c.ingest(
                tg.PLATFORM, bot_id, body, gateway_id=gid, telegram_update=(bot_id, update_id)
            )
            stored = True
            return dict(out)
        finally:
            del self._updates_inflight[slot]
            mine.set_result(stored)
