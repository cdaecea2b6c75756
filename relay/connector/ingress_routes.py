"""HTTP ingress: ``POST /ingress/{platform}[/{bot_id}]`` and ``GET /outbox`` behind the
ingress bearer token, and ``ingest`` (persist one chat message, then deliver it live or poke).
Also the request helpers the other HTTP routes share (body size cap, constant-time compare).
"""

from __future__ import annotations

import hmac
import logging
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from relay.connector.egress import note_chat
from relay.connector.ingress import IngressError, build_event, check_unicode, parse_body
from relay.protocol import frames as F
from relay.protocol.framing import encode_frame, utf8_len

if TYPE_CHECKING:
    from relay.connector.surface import ConnectorSurface

log = logging.getLogger("relay.connector")


class IngressRoutes:
    """The ingress routes of a ``Connector`` (``ingress_token``: bearer required when set)."""

    def __init__(self, connector: ConnectorSurface) -> None:
        self.c = connector

    async def ingest(
        self,
        platform: str,
        bot_id: str,
        body: Any,
        *,
        gateway_id: str | None = None,
        telegram_update: tuple[str, int] | None = None,
    ) -> dict[str, str]:
        """Persist one chat message for whichever gateway fronts ``(platform, bot_id)``.

        Returns ``{delivered: live|buffered, buffer_id}`` after the durable commit. Raises
        ``IngressError`` (400 bad field, 404 unknown identity, 413 too long for one frame)
        before anything is stored, or 503 when the store fails (nothing stored).
        """
        event = build_event(platform, body)
        check_unicode("bot_id (URL path)", bot_id)
        gid = gateway_id or self.c.routes.get((platform, bot_id))
        if gid is None:
            raise IngressError(404, f"no gateway ever fronted platform {platform!r} bot {bot_id!r}")
        buffer_id = uuid.uuid4().hex
        line = encode_frame(F.inbound(event, buffer_id))
        if utf8_len(line) > self.c.max_frame_bytes:
            raise IngressError(
                413, f"message is {utf8_len(line)} bytes as a frame; the limit is {self.c.max_frame_bytes}"
            )
        try:
            await self.c.store.append(
                buffer_id=buffer_id,
                gateway_id=gid,
                platform=platform,
                bot_id=bot_id,
                chat_id=event["source"]["chat_id"],
                frame=line,
                now=self.c.clock.wall(),
                telegram_update=telegram_update,
            )
        except Exception as exc:
            log.error("ingress for gateway %s not stored: %s", gid, exc)
            raise IngressError(503, "connector store unavailable; nothing was stored") from None
        note_chat(self.c.chats, gid, platform, event["source"])
        s = self.c.sessions.get(gid)
        delivered = "live" if s is not None and s.live else "buffered"
        self.c.metrics.ingress.labels(platform=platform, delivered=delivered).inc()
        if s is not None and s.live:
            s.notify.set()
        else:
            self.c.poker(gid).request()
        return {"delivered": delivered, "buffer_id": buffer_id}

    async def handle_ingress(self, request: web.Request) -> web.Response:
        """``POST /ingress/{platform}[/{bot_id}]``: 202, or a 4xx with ``{"error": ...}`` for any
        bad input (never a 5xx, never a traceback in the log)."""
        platform = request.match_info["platform"]
        bot_id = request.match_info.get("bot_id", "")
        if not self.authorized(request):
            return unauthorized()
        try:
            raw = await read_body(request, self.c.max_body_bytes)
            out = await self.ingest(platform, bot_id, parse_body(raw))
        except IngressError as exc:
            log.debug("ingress %s/%r refused (%d): %s", platform, bot_id, exc.status, exc)
            return web.json_response({"error": str(exc)}, status=exc.status)
        return web.json_response(out, status=202)

    def authorized(self, request: web.Request) -> bool:
        """``Authorization: Bearer <ingress token>`` (constant-time); always true without one."""
        if self.c.ingress_token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and same(given.strip(), self.c.ingress_token)

    async def handle_outbox(self, request: web.Request) -> web.Response:
        """``GET /outbox[?chat_id=]``: the recorded outbound actions as JSON rows (``at`` in
        RFC 3339); 401 without the ingress token."""
        if not self.authorized(request):
            return unauthorized()
        chat_id = request.query.get("chat_id")
        rows = await self.c.store.outbox(chat_id)
        for r in rows:
            r["at"] = F.rfc3339(r["at"])
        return web.json_response(rows)


async def read_body(request: web.Request, max_body_bytes: int) -> bytes:
    """The raw request body. Raises ``IngressError`` 413 when it is larger than
    ``max_body_bytes`` (the app's ``client_max_size``)."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise IngressError(413, f"body is larger than the limit of {max_body_bytes} bytes") from None


def same(given: str, expected: str) -> bool:
    """Constant-time comparison of header text (aiohttp keeps undecodable bytes as surrogates)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def unauthorized() -> web.Response:
    """401 ``{error}`` for a missing or wrong ingress bearer token."""
    return web.json_response(
        {"error": "unauthorized: Authorization: Bearer <ingress token> required"}, status=401
    )
