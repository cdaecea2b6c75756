"""The hermes-agent gateway HTTP routes (contract 3.3, 6.1, 7.3): ``POST /relay/provision``
(remember an identity and wake URL, durably) and ``POST /relay/policy`` (checked, kept in
memory, not enforced), both authenticated like the WS upgrade.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from common.errors import TokenError
from relay.connector.ingress import IngressError, check_unicode, parse_body
from relay.connector.ingress_routes import read_body

if TYPE_CHECKING:
    from relay.connector.surface import ConnectorSurface

log = logging.getLogger("relay.connector")


class ProvisionRoutes:
    """``/relay/provision`` and ``/relay/policy`` of a ``Connector`` (shapes: ``server`` docs)."""

    def __init__(self, connector: ConnectorSurface) -> None:
        self.c = connector

    async def _gateway_request(self, request: web.Request) -> tuple[str, dict[str, Any]] | web.Response:
        """Authenticate a gateway's HTTP call like its WS upgrade and read its JSON object body:
        ``(gateway id, body)``, or the 401/400/413 response."""
        try:
            gid = self.c.authenticate(request.headers.get("Authorization"))
        except TokenError as exc:
            return web.json_response(
                {"error": f"unauthorized: Authorization: Bearer <relay token> required ({exc.reason})"},
                status=401,
            )
        try:
            raw = await read_body(request, self.c.max_body_bytes)
            body = parse_body(raw)
            if not isinstance(body, dict):
                raise IngressError(400, "body is not a JSON object")
            for key, value in body.items():
                if isinstance(value, str):
                    check_unicode(key, value)
        except IngressError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        return gid, body

    async def handle_provision(self, request: web.Request) -> web.Response:
        """``POST /relay/provision``: register one identity and the wake URL of the
        authenticated gateway (shapes: the ``relay.connector.server`` docstring)."""
        got = await self._gateway_request(request)
        if isinstance(got, web.Response):
            return got
        gid, body = got
        claimed = body.get("gatewayId")
        if claimed is not None and not isinstance(claimed, str):
            return bad("field 'gatewayId' must be a string")
        if not self.c.secrets and claimed and request.headers.get("Authorization") is None:
            gid = claimed  # unauthenticated dev mode: the body names the gateway
        if claimed and claimed != gid:
            return web.json_response(
                {"error": f"field 'gatewayId' {claimed!r} does not match the token's gateway {gid!r}"},
                status=403,
            )
        platform = body.get("platform")
        if not isinstance(platform, str) or not platform.strip():
            return bad("field 'platform' must be a non-empty string")
        bot_id = body.get("botId", "")
        if bot_id is None:
            bot_id = ""
        if not isinstance(bot_id, str):
            return bad("field 'botId' must be a string")
        wake_url = body.get("wakeUrl")
        if wake_url in (None, ""):
            wake_url = None
        elif not isinstance(wake_url, str) or not http_url(wake_url):
            return bad("field 'wakeUrl' must be an http(s) URL with a host")
        route_keys = body.get("routeKeys", [])
        if route_keys is None:
            route_keys = []
        if not isinstance(route_keys, list) or not all(isinstance(k, str) for k in route_keys):
            return bad("field 'routeKeys' must be a list of strings")
        for name in ("gatewayEndpoint", "instanceId"):
            if body.get(name) is not None and not isinstance(body.get(name), str):
                return bad(f"field {name!r} must be a string")
        previous = self.c.routes.get((platform, bot_id))
        if previous is not None and previous != gid:
            log.info(
                "identity %s/%r moves from gateway %s to %s (provision)", platform, bot_id, previous, gid
            )
        try:
            await self.c.store.remember(gid, platform, bot_id, wake_url, self.c.clock.wall())
        except Exception as exc:
            log.error("provision for gateway %s not stored: %s", gid, exc)
            return web.json_response({"error": "connector store unavailable; nothing was stored"}, status=503)
        self.c.routes[(platform, bot_id)] = gid
        if wake_url:
            self.c.wake_urls[gid] = wake_url
        self.c.presence_off.discard(gid)  # a provision re-arms presence
        s = self.c.sessions.get(gid)
        if s is not None:
            self.c.ws.start_presence(s)
        log.info(
            "gateway %s provisioned %s/%r (wake url %s)",
            gid,
            platform,
            bot_id,
            "set" if wake_url else "unchanged",
        )
        out: dict[str, Any] = {
            "gatewayId": gid,
            "tenant": gid,
            "platform": platform,
            "botId": bot_id,
            "routeKeys": route_keys,
            "wakeUrl": self.c.wake_urls.get(gid),
        }
        if isinstance(body.get("instanceId"), str):
            out["instanceId"] = body["instanceId"]
        return web.json_response(out)

    async def handle_policy(self, request: web.Request) -> web.Response:
        """``POST /relay/policy`` (contract 7.3): checked and kept in memory; not enforced (this
        connector has no relevance gate). 200 ``{ok: true, enforced: false}``."""
        got = await self._gateway_request(request)
        if isinstance(got, web.Response):
            return got
        gid, body = got
        platform = body.get("platform")
        if not isinstance(platform, str) or not platform.strip():
            return bad("field 'platform' must be a non-empty string")
        for name in ("requireAddress", "allowOtherBots"):
            if body.get(name) is not None and not isinstance(body.get(name), bool):
                return bad(f"field {name!r} must be a boolean")
        scopes = body.get("freeResponseScopes")
        if scopes is not None and (
            not isinstance(scopes, list) or not all(isinstance(x, str) for x in scopes)
        ):
            return bad("field 'freeResponseScopes' must be a list of strings")
        self.c.policies[(gid, platform)] = dict(body)
        return web.json_response({"ok": True, "enforced": False})


def bad(message: str) -> web.Response:
    """400 ``{error: message}``."""
    return web.json_response({"error": message}, status=400)


def http_url(url: str) -> bool:
    """True for an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
