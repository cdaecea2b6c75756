"""The reference connector's aiohttp app: WS ``/relay``, ``POST /ingress/...``, ``GET /outbox``.

Every inbound is persisted (FULL commit) before it is sent or acknowledged to anyone; one
sender per handshaken socket streams the gateway's unacked entries from the store in order
(replay first, then live), so order is kept when ingress lands mid-replay (PROTOCOL.md 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from relay.clock import Clock, SystemClock
from relay.connector.ingress import IngressError, build_event, check_action
from relay.connector.store import BufferStore
from relay.connector.wake import WakePoker, hold_presence
from relay.errors import FrameTooLarge, ProtocolError, TokenError
from relay.protocol import frames as F
from relay.protocol.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    LogLimiter,
    NdjsonSplitter,
    decode_line,
    encode_frame,
    utf8_len,
)
from relay.protocol.token import bearer_of, mint_token, token_gateway_id, verify_token

log = logging.getLogger("relay.connector")

DEV_GATEWAY_ID = "dev"
REPLAY_PAGE = 2000


@dataclass(eq=False)
class _Session:
    """One gateway socket on the connector."""

    gateway_id: str
    ws: web.WebSocketResponse
    handshaken: bool = False
    flipped: bool = False
    identity: tuple[str, str] = ("relay", "")
    notify: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.handshaken and not self.flipped and not self.ws.closed


class Connector:
    """The reference connector. ``await Connector.create(...)``, then serve ``app``.

    ``secrets`` maps gateway id -> secret; empty means unauthenticated dev mode (every socket
    is gateway ``"dev"``, or the id its token claims). ``clock`` drives pokes and ``wakeAt``.
    """

    def __init__(
        self,
        store: BufferStore,
        *,
        secrets: dict[str, str] | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        clock: Clock | None = None,
        poke_rate_s: float = 10.0,
    ) -> None:
        self.store = store
        self.secrets = dict(secrets or {})
        self.max_frame_bytes = max_frame_bytes
        self.clock: Clock = clock or SystemClock()
        self.poke_rate_s = poke_rate_s
        self.sessions: dict[str, _Session] = {}
        self.routes: dict[tuple[str, str], str] = {}
        self.wake_urls: dict[str, str] = {}
        self.pokers: dict[str, WakePoker] = {}
        self.flipped: dict[str, bool] = {}  # mirrors gateways.flipped in the store
        self._http: aiohttp.ClientSession | None = None
        self._limiter = LogLimiter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.app = web.Application()
        self.app.router.add_get("/relay", self._ws_handler)
        self.app.router.add_post("/ingress/{platform}/{bot_id}", self._ingress_handler)
        self.app.router.add_post("/ingress/{platform}", self._ingress_handler)
        self.app.router.add_get("/outbox", self._outbox_handler)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.on_shutdown.append(self._on_shutdown)

    @classmethod
    async def create(cls, db_path: str, **kwargs: Any) -> Connector:
        """Open the store, restore routes, wake URLs and pending pokes, and return the connector."""
        store = await BufferStore.open(db_path)
        self = cls(store, **kwargs)
        await self._restore()
        return self

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _restore(self) -> None:
        self.routes = await self.store.identities()
        gateways = await self.store.gateways()
        for gid, rec in gateways.items():
            if rec.wake_url:
                self.wake_urls[gid] = rec.wake_url
            self.flipped[gid] = rec.flipped
            if rec.flipped:
                poker = self._poker(gid)
                if rec.wake_at is not None:
                    poker.schedule_wake_at(rec.wake_at)
                if await self.store.unacked_count(gid):
                    poker.request()
        if not self.secrets:
            log.warning("no gateway configured: unauthenticated dev mode (any socket is accepted)")

    async def close(self) -> None:
        """Stop pokes, close sockets and flush the store."""
        for poker in self.pokers.values():
            poker.cancel()
        await self._on_shutdown(self.app)
        for t in list(self._tasks):
            t.cancel()
        if self._http is not None:
            await self._http.close()
        await self.store.close()

    async def _on_shutdown(self, _app: web.Application) -> None:
        """Close every gateway socket with 1001 (the app's shutdown hook, and ``close()``)."""
        for s in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await s.ws.close(code=1001, message=b"connector shutting down")

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- auth and pokes --------------------------------------------------------------------

    def auth_headers(self, gateway_id: str) -> dict[str, str]:
        """The bearer a poke or presence request carries for ``gateway_id`` (none in dev mode)."""
        secret = self.secrets.get(gateway_id)
        if secret is None:
            return {}
        return {"Authorization": f"Bearer {mint_token(gateway_id, secret, self.clock.wall())}"}

    def _poker(self, gateway_id: str) -> WakePoker:
        poker = self.pokers.get(gateway_id)
        if poker is None:
            poker = WakePoker(
                gateway_id,
                http=self.http,
                clock=self.clock,
                wake_url=lambda: self.wake_urls.get(gateway_id),
                auth=lambda: self.auth_headers(gateway_id),
                rate_s=self.poke_rate_s,
            )
            self.pokers[gateway_id] = poker
        return poker

    # --- WebSocket ------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> str:
        token = bearer_of(request.headers.get("Authorization"))
        if not self.secrets:
            return (token_gateway_id(token) if token else None) or DEV_GATEWAY_ID
        if token is None:
            raise TokenError("unauthorized", "no bearer token")
        return verify_token(token, self.secrets, self.clock.wall())

    async def _ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.max_frame_bytes, autoping=True)
        await ws.prepare(request)
        try:
            gateway_id = self._authenticate(request)
        except TokenError as exc:
            log.warning("refused gateway socket: %s", exc)
            await ws.close(code=4401, message=exc.reason.encode())
            return ws
        session = _Session(gateway_id=gateway_id, ws=ws)
        splitter = NdjsonSplitter(self.max_frame_bytes)
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    data = msg.data
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    data = msg.data.decode("utf-8", errors="replace")
                else:
                    break
                try:
                    lines = splitter.feed(data)
                except FrameTooLarge:
                    await ws.close(code=1009, message=b"frame too large")
                    break
                for line in lines:
                    try:
                        frame = decode_line(line)
                    except ProtocolError as exc:
                        if self._limiter.allow(exc.kind, self.clock.monotonic()):
                            log.warning("gateway %s sent a bad frame (%s): %s", gateway_id,
                                        exc.kind, exc)
                        continue
                    await self._on_frame(session, frame)
        finally:
            for t in session.tasks:
                t.cancel()
            if self.sessions.get(gateway_id) is session:
                del self.sessions[gateway_id]
                if session.handshaken and not session.flipped:
                    log.info("gateway %s: socket dropped without a flip; buffering", gateway_id)
        return ws

    async def _on_frame(self, s: _Session, frame: dict[str, Any]) -> None:
        t = frame["type"]
        if t == "hello":
            await self._on_hello(s, frame)
        elif t == "inbound_ack":
            bid = frame.get("bufferId")
            if isinstance(bid, str):
                self.store.ack(s.gateway_id, bid, self.clock.wall())
        elif t == "outbound":
            self._on_outbound(s, frame)
        elif t == "going_idle":
            await self._on_going_idle(s, frame)
        elif t == "interrupt":
            log.info("gateway %s: interrupt for session %r", s.gateway_id, frame.get("session_key"))

    async def _on_hello(self, s: _Session, frame: dict[str, Any]) -> None:
        platform, bot_id = frame.get("platform"), frame.get("botId", "")
        if not isinstance(platform, str) or not isinstance(bot_id, str):
            log.warning("gateway %s: hello without string platform/botId ignored", s.gateway_id)
            return
        wake_url = frame.get("wakeUrl") if isinstance(frame.get("wakeUrl"), str) else None
        gid = s.gateway_id
        previous = self.routes.get((platform, bot_id))
        if previous is not None and previous != gid:
            log.info("identity %s/%r moves from gateway %s to %s", platform, bot_id, previous, gid)
        # Write only what changed: a gateway re-dialling with the same identity costs no fsync.
        if previous != gid or (wake_url and self.wake_urls.get(gid) != wake_url):
            self.routes[(platform, bot_id)] = gid
            if wake_url:
                self.wake_urls[gid] = wake_url
            await self.store.remember(gid, platform, bot_id, wake_url, self.clock.wall())
        await s.ws.send_str(encode_frame(F.descriptor(platform)))
        if not s.handshaken:
            await self._complete_handshake(s, (platform, bot_id))

    async def _complete_handshake(self, s: _Session, identity: tuple[str, str]) -> None:
        gid = s.gateway_id
        s.handshaken, s.identity = True, identity
        old = self.sessions.get(gid)
        self.sessions[gid] = s
        if old is not None and old is not s:
            log.info("gateway %s: newer handshake replaces an older socket (4409)", gid)
            self._spawn(old.ws.close(code=4409, message=b"replaced"))
        self._poker(gid).cancel()
        if self.flipped.get(gid):
            # Not awaited: a stale "flipped" after a crash only costs a harmless extra poke.
            self.flipped[gid] = False
            self.store.clear_flip(gid, self.clock.wall())
        log.info("gateway %s: handshake complete; replaying unacked entries", gid)
        s.tasks.append(self._spawn(self._sender(s)))
        url = self.wake_urls.get(gid)
        if url:
            s.tasks.append(self._spawn(hold_presence(
                gid, url, http=self.http, clock=self.clock, auth=lambda: self.auth_headers(gid))))

    async def _sender(self, s: _Session) -> None:
        """Stream the gateway's unacked entries in seq order: the backlog, then live ones."""
        cursor = 0
        while s.live:
            s.notify.clear()
            rows = await self.store.unacked_after(s.gateway_id, cursor, REPLAY_PAGE)
            if not rows:
                await s.notify.wait()
                continue
            for seq, line in rows:
                if not s.live:
                    return
                await s.ws.send_str(line)
                cursor = seq

    def _on_outbound(self, s: _Session, frame: dict[str, Any]) -> None:
        rid = frame.get("requestId")
        if not isinstance(rid, str):
            log.warning("gateway %s: outbound without a string requestId dropped", s.gateway_id)
            return
        action = frame.get("action")
        error = check_action(action)
        if error is not None:
            self._spawn(self._reply(s, rid, {"success": False, "error": error}))
            return
        assert isinstance(action, dict)
        platform = frame.get("platform") if isinstance(frame.get("platform"), str) else s.identity[0]
        bot_id = frame.get("botId") if isinstance(frame.get("botId"), str) else s.identity[1]
        message_id = action.get("message_id") if action["op"] == "edit" else uuid.uuid4().hex[:16]
        committed = self.store.record_outbound(
            gateway_id=s.gateway_id, platform=platform, bot_id=bot_id, action=action,
            now=self.clock.wall(),
        )
        result: dict[str, Any] = {"success": True}
        if action["op"] != "typing":
            result["message_id"] = str(message_id)
        self._spawn(self._reply(s, rid, result, committed))

    async def _reply(
        self, s: _Session, rid: str, result: dict[str, Any], committed: asyncio.Future[None] | None = None
    ) -> None:
        if committed is not None:
            try:
                await committed
            except Exception as exc:
                result = {"success": False, "error": f"connector store failed: {exc}"}
        if not s.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await s.ws.send_str(encode_frame(F.outbound_result(rid, result)))

    async def _on_going_idle(self, s: _Session, frame: dict[str, Any]) -> None:
        gid = s.gateway_id
        wake_at: float | None = None
        raw = frame.get("wakeAt")
        if raw is not None:
            try:
                wake_at = F.parse_rfc3339(raw)
            except ValueError as exc:
                log.warning("gateway %s: invalid wakeAt ignored: %s", gid, exc)
        s.flipped = True
        s.notify.set()
        for t in s.tasks:
            t.cancel()
        s.tasks.clear()
        self.flipped[gid] = True
        await self.store.set_flip(gid, True, wake_at, self.clock.wall())
        self._poker(gid).schedule_wake_at(wake_at)
        log.info("gateway %s: flipped to buffered-only (wakeAt %s)", gid, raw if wake_at else None)
        await s.ws.send_str(encode_frame(F.going_idle_ack()))

    # --- HTTP ingress and outbox -----------------------------------------------------------

    async def ingest(self, platform: str, bot_id: str, body: Any) -> dict[str, str]:
        """Persist one chat message for whichever gateway fronts ``(platform, bot_id)``.

        Returns ``{delivered: live|buffered, buffer_id}`` after the durable commit. Raises
        ``IngressError`` (400 bad field, 404 unknown identity, 413 too long for one frame)
        before anything is stored.
        """
        event = build_event(platform, body)
        gid = self.routes.get((platform, bot_id))
        if gid is None:
            raise IngressError(404, f"no gateway ever fronted platform {platform!r} bot "
                                    f"{bot_id!r}")
        buffer_id = uuid.uuid4().hex
        line = encode_frame(F.inbound(event, buffer_id))
        if utf8_len(line) > self.max_frame_bytes:
            raise IngressError(413, f"message is {utf8_len(line)} bytes as a frame; the limit "
                                    f"is {self.max_frame_bytes}")
        await self.store.append(
            buffer_id=buffer_id, gateway_id=gid, platform=platform, bot_id=bot_id,
            chat_id=event["source"]["chat_id"], frame=line, now=self.clock.wall(),
        )
        s = self.sessions.get(gid)
        if s is not None and s.live:
            s.notify.set()
            return {"delivered": "live", "buffer_id": buffer_id}
        self._poker(gid).request()
        return {"delivered": "buffered", "buffer_id": buffer_id}

    async def _ingress_handler(self, request: web.Request) -> web.Response:
        platform = request.match_info["platform"]
        bot_id = request.match_info.get("bot_id", "")
        try:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                raise IngressError(400, "body is not a JSON object") from None
            out = await self.ingest(platform, bot_id, body)
        except IngressError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        return web.json_response(out, status=202)

    async def _outbox_handler(self, request: web.Request) -> web.Response:
        chat_id = request.query.get("chat_id")
        rows = await self.store.outbox(chat_id)
        for r in rows:
            r["at"] = F.rfc3339(r["at"])
        return web.json_response(rows)

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "gateways_live": sorted(self.sessions)})
