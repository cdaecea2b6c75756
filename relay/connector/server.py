"""The reference connector's aiohttp app: WS ``/relay``, ``POST /ingress/...``, ``GET /outbox``.

Every inbound is persisted (FULL commit) before it is sent or acknowledged to anyone; one
sender per handshaken socket streams the gateway's unacked entries from the store in order
(replay first, then live), so order is kept when ingress lands mid-replay (PROTOCOL.md 5).
Second-release extensions (PROTOCOL.md 7): idempotent sends (a known ``idempotencyKey`` gets its
stored result with ``duplicate: true``), ``buffered`` on a handshake's first descriptor, an
immediate poke when a gateway flips with unacked entries, and batched ``inbound_ack``.
SPEC 8.3: Telegram bots (webhook ``POST /telegram/{gateway_id}``, durable Bot API sends through
``PlatformOutbox``) and the ingress bearer token.

Stock hermes-agent gateways (PROTOCOL.md 7.5; hermes-agent ``relay-connector-contract.md``):

- ``POST /relay/provision`` (contract 3.3, 6.1; body as the gateway's ``_post_provision``
  sends it: ``{gatewayId?, platform, botId?, gatewayEndpoint?, routeKeys?, instanceId?,
  wakeUrl?}``) is authenticated like the WS upgrade (``Authorization: Bearer <relay token>``;
  bad or missing -> 401 JSON), remembers the identity and wake URL in the store (they survive a
  restart) and answers ``200 {gatewayId, tenant, platform, botId, routeKeys, wakeUrl,
  instanceId}``. It never returns ``secret`` / ``deliveryKey``: the caller already holds its
  secret (it signed the bearer with it) and this connector mints none.
- ``POST /relay/policy`` (contract 7.3) is accepted (same auth, body checked, 200) and kept in
  memory only: this connector has no relevance gate, so the policy is not enforced.
- ``/relay/media`` (contract 4, ``send_media`` re-hosts) is not served (404): ``send_media``
  takes a public http(s) ``source_url`` only.
- ``outbound`` for an identity the gateway never announced (hello, provision, or a Telegram
  bot configured for it) -> ``{success: false, code: "egress_declined"}``; nothing recorded.
- Ops ``follow_up``, ``send_media``, ``get_chat_info`` (contract 4).
- 4409 damping: a re-dial within ``REPLACE_HOLD_S`` of a replacement, while the newer socket is
  healthy, is refused with 4409 (each refusal restarts the hold) instead of taking over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from common.clock import Clock, SystemClock
from common.errors import FrameTooLarge, ProtocolError, TokenError
from relay.connector import telegram as tg
from relay.connector.ingress import (
    IngressError,
    build_event,
    check_action,
    check_idempotency_key,
    check_unicode,
    parse_body,
)
from relay.connector.platform_outbox import PlatformOutbox
from relay.connector.store import IDEMPOTENCY_KEEP_S, BufferStore, PlatformSend
from relay.connector.wake import WakePoker, hold_presence
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
REPLACE_HOLD_S = 10.0
"""A re-dial this soon after a replacement (or a refusal) of the same gateway id, while the
newer socket is healthy, is refused with 4409 (PROTOCOL.md 7.5)."""
FIGHT_LOG_EVERY_S = 60.0
HEARTBEAT_S = 30.0
"""WS ping interval on gateway sockets: a half-open socket is closed within 1.5 x this, so the
4409 hold-down never protects a dead socket for long."""
CHATS_KEPT = 10_000


@dataclass(eq=False)
class _Session:
    """One gateway socket on the connector."""

    gateway_id: str
    ws: web.WebSocketResponse
    handshaken: bool = False
    flipped: bool = False
    identity: tuple[str, str] = ("relay", "")
    identities: list[tuple[str, str]] = field(default_factory=list)
    notify: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    presence: asyncio.Task[Any] | None = None

    @property
    def live(self) -> bool:
        return self.handshaken and not self.flipped and not self.ws.closed


class Connector:
    """The reference connector. ``await Connector.create(...)``, then serve ``app``.

    ``secrets`` maps gateway id -> secret; empty means unauthenticated dev mode (every socket
    is gateway ``"dev"``, or the id its token claims). ``clock`` drives pokes and ``wakeAt``.
    ``max_body_bytes`` caps an ingress body (default: 4 x ``max_frame_bytes``, at least 1 MiB;
    larger -> 413 with a JSON error).

    ``telegram`` maps gateway id -> Bot API token (that bot's chats go to that gateway; the
    webhook needs ``telegram_webhook_secret``; calls go to ``telegram_api_base``).
    ``ingress_token``: ``/ingress/*`` and ``/outbox`` need ``Authorization: Bearer <token>``.
    """

    def __init__(
        self,
        store: BufferStore,
        *,
        secrets: dict[str, str] | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        clock: Clock | None = None,
        poke_rate_s: float = 10.0,
        max_body_bytes: int | None = None,
        telegram: dict[str, str] | None = None,
        telegram_webhook_secret: str | None = None,
        telegram_api_base: str = "https://api.telegram.org",
        ingress_token: str | None = None,
    ) -> None:
        self.store = store
        self.secrets = dict(secrets or {})
        self.max_frame_bytes = max_frame_bytes
        self.max_body_bytes = max_body_bytes or max(DEFAULT_MAX_FRAME_BYTES, 4 * max_frame_bytes)
        self.clock: Clock = clock or SystemClock()
        self.poke_rate_s = poke_rate_s
        self.sessions: dict[str, _Session] = {}
        self.routes: dict[tuple[str, str], str] = {}
        self.wake_urls: dict[str, str] = {}
        self.pokers: dict[str, WakePoker] = {}
        self.flipped: dict[str, bool] = {}  # mirrors gateways.flipped in the store
        # gateways whose wake host answered 404 on /presence (until a provision or wakeUrl hello)
        self.presence_off: set[str] = set()
        # 4409 damping: gateway id -> monotonic time of the last replacement or refusal
        self._replaced_at: dict[str, float] = {}
        self.replacements_total: dict[str, int] = {}  # hermes_relay_replacements_total{gateway}
        self._fight_logged: dict[str, tuple[float, int]] = {}  # gid -> (logged at, count then)
        # (gateway id, platform, chat_id) -> what the last inbound said of the chat
        self.chats: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}  # (gid, platform) -> policy
        self._http: aiohttp.ClientSession | None = None
        self._limiter = LogLimiter()
        self._tasks: set[asyncio.Task[Any]] = set()
        # (gateway id, idempotencyKey) -> the stored result once committed (None: not recorded).
        self._inflight: dict[tuple[str, str], asyncio.Future[dict[str, Any] | None]] = {}
        self.ingress_token = ingress_token or None
        self.telegram_webhook_secret = telegram_webhook_secret or None
        # gateway id -> (bot id, token)
        self.telegram_bots = {gid: (tg.bot_id_of(tok), tok) for gid, tok in (telegram or {}).items()}
        self._updates_inflight: dict[tuple[str, int], asyncio.Future[bool]] = {}
        self.platform_outbox = PlatformOutbox(
            store,
            http=lambda: self.http,
            clock=self.clock,
            api_base=telegram_api_base,
            tokens={bot: tok for bot, tok in self.telegram_bots.values()},
            on_done=self._platform_done,
        )
        self.app = web.Application(client_max_size=self.max_body_bytes)
        self.app.router.add_get("/relay", self._ws_handler)
        self.app.router.add_post("/ingress/{platform}/{bot_id}", self._ingress_handler)
        self.app.router.add_post("/ingress/{platform}", self._ingress_handler)
        self.app.router.add_get("/outbox", self._outbox_handler)
        self.app.router.add_post("/telegram/{gateway_id}", self._telegram_handler)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_post("/relay/provision", self._provision_handler)
        self.app.router.add_post("/relay/policy", self._policy_handler)
        self.app.on_shutdown.append(self._on_shutdown)

    @classmethod
    async def create(cls, db_path: str, **kwargs: Any) -> Connector:
        """Open the store, restore routes, wake URLs and pending pokes, and return the connector.

        Raises ``OSError`` or ``sqlite3.Error`` when the database cannot be opened (the store is
        closed again: nothing is left running).
        """
        store = await BufferStore.open(db_path)
        try:
            self = cls(store, **kwargs)
            await self._restore()
        except BaseException:
            await store.close()
            raise
        return self

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _restore(self) -> None:
        await self.store.prune_idempotency(self.clock.wall() - IDEMPOTENCY_KEEP_S)
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
        for gid, (bot_id, _token) in self.telegram_bots.items():
            # SPEC 8.3: a configured bot is routed at start, without waiting for a hello.
            if self.routes.get((tg.PLATFORM, bot_id)) != gid:
                self.routes[(tg.PLATFORM, bot_id)] = gid
                await self.store.remember(gid, tg.PLATFORM, bot_id, None, self.clock.wall())
        self.platform_outbox.start()
        if not self.secrets:
            log.warning("no gateway configured: unauthenticated dev mode (any socket is accepted)")

    async def close(self) -> None:
        """Stop pokes, close sockets and flush the store."""
        for poker in self.pokers.values():
            poker.cancel()
        await self.platform_outbox.close()
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
        """The gateway id of an upgrade. Raises ``TokenError`` only, whatever the header holds
        (aiohttp decodes header bytes with surrogateescape: non-ASCII and lone surrogates)."""
        try:
            token = bearer_of(request.headers.get("Authorization"))
            if not self.secrets:
                return (token_gateway_id(token) if token else None) or DEV_GATEWAY_ID
            if token is None:
                raise TokenError("unauthorized", "no bearer token")
            return verify_token(token, self.secrets, self.clock.wall())
        except TokenError:
            raise
        except Exception as exc:  # defence in depth: a bad header is a 4401, never a 1006
            raise TokenError("unauthorized", f"unreadable token ({type(exc).__name__})") from None

    async def _ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.max_frame_bytes, autoping=True, heartbeat=HEARTBEAT_S)
        await ws.prepare(request)
        try:
            gateway_id = self._authenticate(request)
        except TokenError as exc:
            log.warning("refused gateway socket: %s", exc)
            await ws.close(code=4401, message=exc.reason.encode())
            return ws
        if self._damped(gateway_id):
            await ws.close(code=4409, message=b"replaced")
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
                            log.warning("gateway %s sent a bad frame (%s): %s", gateway_id, exc.kind, exc)
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
            self._on_ack(s, frame)
        elif t == "outbound":
            await self._on_outbound(s, frame)
        elif t == "going_idle":
            await self._on_going_idle(s, frame)
        elif t == "interrupt":
            log.info("gateway %s: interrupt for session %r", s.gateway_id, frame.get("session_key"))

    def _on_ack(self, s: _Session, frame: dict[str, Any]) -> None:
        """``bufferId`` (one) and/or ``bufferIds`` (PROTOCOL.md 7.3; non-strings ignored)."""
        now = self.clock.wall()
        bid = frame.get("bufferId")
        if isinstance(bid, str):
            self.store.ack(s.gateway_id, bid, now)
        many = frame.get("bufferIds")
        if isinstance(many, list):
            for bid in many:
                if isinstance(bid, str):
                    self.store.ack(s.gateway_id, bid, now)

    async def _on_hello(self, s: _Session, frame: dict[str, Any]) -> None:
        platform, bot_id = frame.get("platform"), frame.get("botId", "")
        if not isinstance(platform, str) or not isinstance(bot_id, str):
            log.warning("gateway %s: hello without string platform/botId ignored", s.gateway_id)
            return
        wake_url = frame.get("wakeUrl") if isinstance(frame.get("wakeUrl"), str) else None
        gid = s.gateway_id
        if wake_url:
            self.presence_off.discard(gid)  # a hello with wakeUrl re-arms presence
        if (platform, bot_id) not in s.identities:
            s.identities.append((platform, bot_id))
        previous = self.routes.get((platform, bot_id))
        if previous is not None and previous != gid:
            log.info("identity %s/%r moves from gateway %s to %s", platform, bot_id, previous, gid)
        # Write only what changed: a gateway re-dialling with the same identity costs no fsync.
        if previous != gid or (wake_url and self.wake_urls.get(gid) != wake_url):
            self.routes[(platform, bot_id)] = gid
            if wake_url:
                self.wake_urls[gid] = wake_url
            await self.store.remember(gid, platform, bot_id, wake_url, self.clock.wall())
        # PROTOCOL.md 7.2: the first descriptor says how many entries the replay will carry.
        buffered = None if s.handshaken else await self.store.unacked_count(gid)
        await s.ws.send_str(encode_frame(F.descriptor(platform, buffered=buffered)))
        if not s.handshaken:
            await self._complete_handshake(s, (platform, bot_id))

    async def _complete_handshake(self, s: _Session, identity: tuple[str, str]) -> None:
        gid = s.gateway_id
        s.handshaken, s.identity = True, identity
        old = self.sessions.get(gid)
        self.sessions[gid] = s
        if old is not None and old is not s:
            log.info("gateway %s: newer handshake replaces an older socket (4409)", gid)
            self._note_fight(gid, refused=False)
            self._spawn(old.ws.close(code=4409, message=b"replaced"))
        self._poker(gid).cancel()
        if self.flipped.get(gid):
            # Not awaited: a stale "flipped" after a crash only costs a harmless extra poke.
            self.flipped[gid] = False
            self.store.clear_flip(gid, self.clock.wall())
        log.info("gateway %s: handshake complete; replaying unacked entries", gid)
        s.tasks.append(self._spawn(self._sender(s)))
        self._start_presence(s)

    def _start_presence(self, s: _Session) -> None:
        """Hold ``/presence`` for a live session with a wake URL, unless its host lacks one."""
        gid = s.gateway_id
        url = self.wake_urls.get(gid)
        if not url or gid in self.presence_off or not s.live:
            return
        if s.presence is not None and not s.presence.done():
            return
        s.presence = self._spawn(self._presence(gid, url))
        s.tasks.append(s.presence)

    async def _presence(self, gid: str, url: str) -> None:
        status = await hold_presence(
            gid, url, http=self.http, clock=self.clock, auth=lambda: self.auth_headers(gid)
        )
        if status == 404 and gid not in self.presence_off:
            self.presence_off.add(gid)
            log.warning(
                "gateway %s: %s has no /presence (404); presence stops until its next provision"
                " or hello with wakeUrl",
                gid,
                url,
            )

    # --- 4409 damping ------------------------------------------------------------------------

    def _damped(self, gid: str) -> bool:
        """True (and counted) when a new socket for ``gid`` must be refused with 4409: the id
        was replaced or refused less than ``REPLACE_HOLD_S`` ago and its socket is healthy."""
        cur = self.sessions.get(gid)
        last = self._replaced_at.get(gid)
        now = self.clock.monotonic()
        if cur is None or not cur.live or last is None or now - last >= REPLACE_HOLD_S:
            return False
        self._note_fight(gid, refused=True)
        return True

    def _note_fight(self, gid: str, *, refused: bool) -> None:
        """Count a replacement or refusal; one WARNING per minute per gateway while it lasts."""
        now = self.clock.monotonic()
        previous = self._replaced_at.get(gid)
        self._replaced_at[gid] = now
        total = self.replacements_total[gid] = self.replacements_total.get(gid, 0) + 1
        if not refused and (previous is None or now - previous >= FIGHT_LOG_EVERY_S):
            return  # one replacement (a re-dial over a half-open socket) is not a fight
        logged_at, count_then = self._fight_logged.get(gid, (float("-inf"), 0))
        if now - logged_at < FIGHT_LOG_EVERY_S:
            return
        self._fight_logged[gid] = (now, total)
        log.warning(
            "gateway %s: %d socket replacements/refusals (4409) since the last warning"
            " (hermes_relay_replacements_total{gateway=%r} %d): two processes share this"
            " gateway id? re-dials within %.0f s of a replacement are refused",
            gid,
            total - count_then,
            gid,
            total,
            REPLACE_HOLD_S,
        )

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

    async def _on_outbound(self, s: _Session, frame: dict[str, Any]) -> None:
        """Record an outbound in the outbox and answer it once committed.

        Without a key the outbox row is queued before this returns (send order = frame order);
        with an ``idempotencyKey`` the key is looked up first (one read), see ``_outbound_keyed``.
        """
        rid = frame.get("requestId")
        if not isinstance(rid, str):
            log.warning("gateway %s: outbound without a string requestId dropped", s.gateway_id)
            return
        key, error = check_idempotency_key(frame)
        action = frame.get("action")
        error = error or check_action(action)
        if error is not None:
            self._spawn(self._reply(s, rid, {"success": False, "error": error}))
            return
        assert isinstance(action, dict)
        fp, fb = frame.get("platform"), frame.get("botId")
        identity = self._egress_identity(
            s, fp if isinstance(fp, str) else None, fb if isinstance(fb, str) else None
        )
        if isinstance(identity, str):
            log.warning("gateway %s: %s", s.gateway_id, identity)
            self._spawn(self._reply(s, rid, {"success": False, "code": "egress_declined", "error": identity}))
            return
        platform, bot_id = identity
        op = action["op"]
        if op == "get_chat_info":
            self._spawn(self._chat_info(s, rid, platform, bot_id, str(action["chat_id"])))
            return
        if op == "follow_up" and action.get("chat_id") in (None, ""):
            chat = self._follow_up_chat(s.gateway_id, platform, action.get("session_key"))
            if chat is None:
                error = f"follow_up: no chat known for session_key {action.get('session_key')!r}"
                self._spawn(self._reply(s, rid, {"success": False, "error": error}))
                return
            action = {**action, "chat_id": chat}
        if key is not None:
            await self._outbound_keyed(s, rid, key, platform, bot_id, action)
            return
        if self.platform_outbox.handles(platform, bot_id):
            # Listed in the outbox and queued for the platform in one transaction (send order =
            # frame order); the worker answers the gateway when the platform confirms.
            committed = self.store.record_outbound(
                gateway_id=s.gateway_id,
                platform=platform,
                bot_id=bot_id,
                action=action,
                now=self.clock.wall(),
                platform_send=(uuid.uuid4().hex, rid),
            )
            self._spawn(self._platform_queued(s, rid, bot_id, committed))
            return
        result = _result_for(action)
        committed = self.store.record_outbound(
            gateway_id=s.gateway_id,
            platform=platform,
            bot_id=bot_id,
            action=action,
            now=self.clock.wall(),
        )
        self._spawn(self._reply(s, rid, result, committed))

    def _egress_identity(
        self, s: _Session, platform: str | None, bot_id: str | None
    ) -> tuple[str, str] | str:
        """The ``(platform, botId)`` an outbound goes out under, or the ``egress declined: ...``
        error when the gateway never announced it (hello, provision or a configured Telegram bot:
        anything routed to it). No platform -> the socket's default identity; a platform
        without ``botId`` -> the gateway's announced identity on that platform."""
        gid = s.gateway_id
        if platform is None:
            return s.identity
        mine = [i for i in s.identities if self.routes.get(i) == gid]
        mine += [i for i, g in self.routes.items() if g == gid and i not in mine]
        if bot_id is None:
            found = next((i for i in mine if i[0] == platform), None)
            if found is not None:
                return found
            return f"egress declined: gateway {gid!r} never announced platform {platform!r}"
        if (platform, bot_id) in mine:
            return platform, bot_id
        return f"egress declined: gateway {gid!r} never announced identity {platform}/{bot_id!r}"

    def _follow_up_chat(self, gid: str, platform: str, session_key: Any) -> str | None:
        """The chat a ``follow_up`` without ``chat_id`` goes to: the most recent chat of this
        gateway and platform whose id is one ``:``-separated part of ``session_key``."""
        if not isinstance(session_key, str):
            return None
        parts = set(session_key.split(":"))
        for g, p, chat_id in reversed(self.chats):
            if g == gid and p == platform and chat_id in parts:
                return chat_id
        return None

    def _note_chat(self, gid: str, platform: str, source: dict[str, Any]) -> None:
        slot = (gid, platform, str(source["chat_id"]))
        self.chats.pop(slot, None)
        self.chats[slot] = {"name": source.get("chat_name"), "type": source.get("chat_type")}
        while len(self.chats) > CHATS_KEPT:
            self.chats.popitem(last=False)

    async def _chat_info(self, s: _Session, rid: str, platform: str, bot_id: str, chat_id: str) -> None:
        """``get_chat_info`` (contract 4): Telegram's ``getChat`` for a configured bot, else what
        the last inbound of that chat said (``chat_name``/``chat_type``); unknown -> failure."""
        info: dict[str, Any] | None = None
        if self.platform_outbox.handles(platform, bot_id):
            token = self.platform_outbox.tokens[bot_id]
            out = await tg.call(
                self.http,
                self.platform_outbox.api_base,
                token,
                "getChat",
                {"chat_id": tg._maybe_int(chat_id)},
            )
            if out.kind == "ok":
                info = tg.chat_info_of(out.result)
            else:
                log.info(
                    "gateway %s: getChat %s failed (%s); using the last inbound",
                    s.gateway_id,
                    chat_id,
                    out.error,
                )
        if info is None:
            known = self.chats.get((s.gateway_id, platform, chat_id))
            if known is not None:
                info = {"name": known["name"] or chat_id, "type": known["type"] or "dm"}
        if info is None:
            await self._reply(s, rid, {"success": False, "error": f"no chat info known for chat {chat_id!r}"})
            return
        await self._reply(s, rid, {"success": True, "chat_info": info, **info})

    async def _outbound_keyed(
        self, s: _Session, rid: str, key: str, platform: str, bot_id: str, action: dict[str, Any]
    ) -> None:
        """PROTOCOL.md 7.1: a key known for this gateway is answered with its stored result and
        ``duplicate: true`` and never recorded again; a new key is recorded with its outbox row
        in one transaction. A second outbound with the same key that arrives before the first
        commits waits for it (``_inflight``), so one key makes exactly one outbox row."""
        slot = (s.gateway_id, key)
        pending = self._inflight.get(slot)
        if pending is not None:
            self._spawn(self._answer_when_settled(s, rid, key, platform, bot_id, action, pending))
            return
        settled: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._inflight[slot] = settled
        try:
            stored = await self.store.idempotent_result(s.gateway_id, key)
        except Exception as exc:
            self._settle(slot, settled, None)
            log.error("gateway %s: idempotency lookup failed: %s", s.gateway_id, exc)
            self._spawn(self._reply(s, rid, {"success": False, "error": f"connector store failed: {exc}"}))
            return
        if stored is not None:
            self._settle(slot, settled, stored)
            log.info("gateway %s: duplicate outbound (idempotencyKey %r) not sent again", s.gateway_id, key)
            self._spawn(self._reply(s, rid, {**stored, "duplicate": True}))
            return
        if self.platform_outbox.handles(platform, bot_id):
            await self._platform_keyed(s, rid, key, slot, settled, platform, bot_id, action)
            return
        result = _result_for(action)
        committed = self.store.record_outbound(
            gateway_id=s.gateway_id,
            platform=platform,
            bot_id=bot_id,
            action=action,
            now=self.clock.wall(),
            idempotency_key=key,
            result=result,
        )
        self._spawn(self._commit_keyed(s, rid, slot, settled, result, committed))

    async def _platform_queued(
        self, s: _Session, rid: str, bot_id: str, committed: asyncio.Future[None]
    ) -> bool:
        """Wake the bot's worker once a platform send is committed; answer a store failure."""
        try:
            await committed
        except Exception as exc:
            await self._reply(s, rid, {"success": False, "error": f"connector store failed: {exc}"})
            return False
        self.platform_outbox.poke(bot_id)
        return True

    async def _platform_keyed(
        self,
        s: _Session,
        rid: str,
        key: str,
        slot: tuple[str, str],
        settled: asyncio.Future[dict[str, Any] | None],
        platform: str,
        bot_id: str,
        action: dict[str, Any],
    ) -> None:
        """A keyed platform send: the key is stored with the queued send; a resend of a key whose
        send is still queued (also across a restart) waits for that send's result."""
        try:
            queued = await self.store.platform_send_by_key(s.gateway_id, key)
        except Exception as exc:
            self._settle(slot, settled, None)
            self._spawn(self._reply(s, rid, {"success": False, "error": f"connector store failed: {exc}"}))
            return
        if queued is not None:
            log.info("gateway %s: idempotencyKey %r is already queued; not sent again", s.gateway_id, key)
            self._spawn(self._platform_duplicate(s, rid, slot, settled, queued))
            return
        send_id = uuid.uuid4().hex
        committed = self.store.record_outbound(
            gateway_id=s.gateway_id,
            platform=platform,
            bot_id=bot_id,
            action=action,
            now=self.clock.wall(),
            idempotency_key=key,
            platform_send=(send_id, rid),
        )
        self._spawn(self._platform_keyed_settle(s, rid, bot_id, slot, settled, send_id, committed))

    async def _platform_keyed_settle(
        self,
        s: _Session,
        rid: str,
        bot_id: str,
        slot: tuple[str, str],
        settled: asyncio.Future[dict[str, Any] | None],
        send_id: str,
        committed: asyncio.Future[None],
    ) -> None:
        result: dict[str, Any] | None = None
        try:
            if await self._platform_queued(s, rid, bot_id, committed):
                result = await self.platform_outbox.wait_for(send_id)
        finally:
            self._settle(slot, settled, result)

    async def _platform_duplicate(
        self,
        s: _Session,
        rid: str,
        slot: tuple[str, str],
        settled: asyncio.Future[dict[str, Any] | None],
        queued: PlatformSend,
    ) -> None:
        result: dict[str, Any] | None = queued.result
        try:
            if result is None:
                result = await self.platform_outbox.wait_for(queued.send_id)
        finally:
            self._settle(slot, settled, result)
        await self._reply(s, rid, {**result, "duplicate": True})

    async def _platform_done(self, send: PlatformSend, result: dict[str, Any]) -> None:
        """A platform send has its final result (committed): answer its ``requestId`` on the
        gateway's current socket, if it has one (a keyed resend gets it later otherwise)."""
        s = self.sessions.get(send.gateway_id)
        if send.request_id and s is not None:
            await self._reply(s, send.request_id, result)

    def _settle(
        self,
        slot: tuple[str, str],
        settled: asyncio.Future[dict[str, Any] | None],
        stored: dict[str, Any] | None,
    ) -> None:
        if self._inflight.get(slot) is settled:
            del self._inflight[slot]
        if not settled.done():
            settled.set_result(stored)

    async def _commit_keyed(
        self,
        s: _Session,
        rid: str,
        slot: tuple[str, str],
        settled: asyncio.Future[dict[str, Any] | None],
        result: dict[str, Any],
        committed: asyncio.Future[None],
    ) -> None:
        stored: dict[str, Any] | None = None
        try:
            await committed
            stored = result
        except Exception as exc:
            result = {"success": False, "error": f"connector store failed: {exc}"}
        finally:
            self._settle(slot, settled, stored)  # also when cancelled: waiters never hang
        await self._reply(s, rid, result)

    async def _answer_when_settled(
        self,
        s: _Session,
        rid: str,
        key: str,
        platform: str,
        bot_id: str,
        action: dict[str, Any],
        pending: asyncio.Future[dict[str, Any] | None],
    ) -> None:
        stored = await asyncio.shield(pending)
        if stored is None:  # the first one was never recorded: this one is a fresh attempt
            await self._outbound_keyed(s, rid, key, platform, bot_id, action)
            return
        await self._reply(s, rid, {**stored, "duplicate": True})

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
        with contextlib.suppress(ConnectionError, RuntimeError):
            await s.ws.send_str(encode_frame(F.going_idle_ack()))
        # PROTOCOL.md 7.2: entries it has not acked must not wait for the next event: poke now.
        unacked = await self.store.unacked_count(gid)
        if unacked:
            log.info("gateway %s: flipped with %d unacked entries; poking at once", gid, unacked)
            self._poker(gid).request(immediate=True)

    # --- HTTP ingress and outbox -----------------------------------------------------------

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
        gid = gateway_id or self.routes.get((platform, bot_id))
        if gid is None:
            raise IngressError(404, f"no gateway ever fronted platform {platform!r} bot {bot_id!r}")
        buffer_id = uuid.uuid4().hex
        line = encode_frame(F.inbound(event, buffer_id))
        if utf8_len(line) > self.max_frame_bytes:
            raise IngressError(
                413, f"message is {utf8_len(line)} bytes as a frame; the limit is {self.max_frame_bytes}"
            )
        try:
            await self.store.append(
                buffer_id=buffer_id,
                gateway_id=gid,
                platform=platform,
                bot_id=bot_id,
                chat_id=event["source"]["chat_id"],
                frame=line,
                now=self.clock.wall(),
                telegram_update=telegram_update,
            )
        except Exception as exc:
            log.error("ingress for gateway %s not stored: %s", gid, exc)
            raise IngressError(503, "connector store unavailable; nothing was stored") from None
        self._note_chat(gid, platform, event["source"])
        s = self.sessions.get(gid)
        if s is not None and s.live:
            s.notify.set()
            return {"delivered": "live", "buffer_id": buffer_id}
        self._poker(gid).request()
        return {"delivered": "buffered", "buffer_id": buffer_id}

    async def _ingress_handler(self, request: web.Request) -> web.Response:
        """``POST /ingress/{platform}[/{bot_id}]``: 202, or a 4xx with ``{"error": ...}`` for any
        bad input (never a 5xx, never a traceback in the log)."""
        platform = request.match_info["platform"]
        bot_id = request.match_info.get("bot_id", "")
        if not self._ingress_authorized(request):
            return _unauthorized()
        try:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise IngressError(
                    413, f"body is larger than the limit of {self.max_body_bytes} bytes"
                ) from None
            out = await self.ingest(platform, bot_id, parse_body(raw))
        except IngressError as exc:
            log.debug("ingress %s/%r refused (%d): %s", platform, bot_id, exc.status, exc)
            return web.json_response({"error": str(exc)}, status=exc.status)
        return web.json_response(out, status=202)

    def _ingress_authorized(self, request: web.Request) -> bool:
        """``Authorization: Bearer <ingress token>`` (constant-time); always true without one."""
        if self.ingress_token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and _same(given.strip(), self.ingress_token)

    async def _telegram_handler(self, request: web.Request) -> web.Response:
        """``POST /telegram/{gateway_id}``: a Bot API webhook Update (SPEC 8.3). 401 without the
        secret header, 404 for a gateway with no bot, 400 for a bad body (nothing stored); a
        non-message update or a repeated ``update_id`` -> 200 and nothing (more) stored."""
        gid = request.match_info["gateway_id"]
        given = request.headers.get(tg.SECRET_HEADER)
        secret = self.telegram_webhook_secret
        if secret is None or given is None or not _same(given, secret):
            return web.json_response({"error": f"missing or wrong {tg.SECRET_HEADER} header"}, status=401)
        bot = self.telegram_bots.get(gid)
        if bot is None:
            return web.json_response(
                {"error": f"no telegram bot is configured for gateway {gid!r}"}, status=404
            )
        try:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise IngressError(
                    413, f"body is larger than the limit of {self.max_body_bytes} bytes"
                ) from None
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
                seen = await self.store.update_seen(bot_id, update_id)
            except Exception as exc:
                log.error("telegram update %s not checked: %s", update_id, exc)
                raise IngressError(503, "connector store unavailable; nothing was stored") from None
            if seen:
                stored = True
                return {"duplicate": True}
            out = await self.ingest(
                tg.PLATFORM, bot_id, body, gateway_id=gid, telegram_update=(bot_id, update_id)
            )
            stored = True
            return dict(out)
        finally:
            del self._updates_inflight[slot]
            mine.set_result(stored)

    async def _outbox_handler(self, request: web.Request) -> web.Response:
        if not self._ingress_authorized(request):
            return _unauthorized()
        chat_id = request.query.get("chat_id")
        rows = await self.store.outbox(chat_id)
        for r in rows:
            r["at"] = F.rfc3339(r["at"])
        return web.json_response(rows)

    # --- hermes-agent HTTP routes (contract 3.3, 6.1, 7.3) ------------------------------------

    async def _gateway_request(self, request: web.Request) -> tuple[str, dict[str, Any]] | web.Response:
        """Authenticate a gateway's HTTP call like its WS upgrade and read its JSON object body:
        ``(gateway id, body)``, or the 401/400/413 response."""
        try:
            gid = self._authenticate(request)
        except TokenError as exc:
            return web.json_response(
                {"error": f"unauthorized: Authorization: Bearer <relay token> required ({exc.reason})"},
                status=401,
            )
        try:
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise IngressError(
                    413, f"body is larger than the limit of {self.max_body_bytes} bytes"
                ) from None
            body = parse_body(raw)
            if not isinstance(body, dict):
                raise IngressError(400, "body is not a JSON object")
            for key, value in body.items():
                if isinstance(value, str):
                    check_unicode(key, value)
        except IngressError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        return gid, body

    async def _provision_handler(self, request: web.Request) -> web.Response:
        """``POST /relay/provision``: register one identity and the wake URL of the
        authenticated gateway (see the module docstring for the shapes)."""
        got = await self._gateway_request(request)
        if isinstance(got, web.Response):
            return got
        gid, body = got
        claimed = body.get("gatewayId")
        if claimed is not None and not isinstance(claimed, str):
            return _bad("field 'gatewayId' must be a string")
        if not self.secrets and claimed and request.headers.get("Authorization") is None:
            gid = claimed  # unauthenticated dev mode: the body names the gateway
        if claimed and claimed != gid:
            return web.json_response(
                {"error": f"field 'gatewayId' {claimed!r} does not match the token's gateway {gid!r}"},
                status=403,
            )
        platform = body.get("platform")
        if not isinstance(platform, str) or not platform.strip():
            return _bad("field 'platform' must be a non-empty string")
        bot_id = body.get("botId", "")
        if bot_id is None:
            bot_id = ""
        if not isinstance(bot_id, str):
            return _bad("field 'botId' must be a string")
        wake_url = body.get("wakeUrl")
        if wake_url in (None, ""):
            wake_url = None
        elif not isinstance(wake_url, str) or not _http_url(wake_url):
            return _bad("field 'wakeUrl' must be an http(s) URL with a host")
        route_keys = body.get("routeKeys", [])
        if route_keys is None:
            route_keys = []
        if not isinstance(route_keys, list) or not all(isinstance(k, str) for k in route_keys):
            return _bad("field 'routeKeys' must be a list of strings")
        for name in ("gatewayEndpoint", "instanceId"):
            if body.get(name) is not None and not isinstance(body.get(name), str):
                return _bad(f"field {name!r} must be a string")
        previous = self.routes.get((platform, bot_id))
        if previous is not None and previous != gid:
            log.info(
                "identity %s/%r moves from gateway %s to %s (provision)", platform, bot_id, previous, gid
            )
        try:
            await self.store.remember(gid, platform, bot_id, wake_url, self.clock.wall())
        except Exception as exc:
            log.error("provision for gateway %s not stored: %s", gid, exc)
            return web.json_response({"error": "connector store unavailable; nothing was stored"}, status=503)
        self.routes[(platform, bot_id)] = gid
        if wake_url:
            self.wake_urls[gid] = wake_url
        self.presence_off.discard(gid)  # a provision re-arms presence
        s = self.sessions.get(gid)
        if s is not None:
            self._start_presence(s)
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
            "wakeUrl": self.wake_urls.get(gid),
        }
        if isinstance(body.get("instanceId"), str):
            out["instanceId"] = body["instanceId"]
        return web.json_response(out)

    async def _policy_handler(self, request: web.Request) -> web.Response:
        """``POST /relay/policy`` (contract 7.3): checked and kept in memory; not enforced (this
        connector has no relevance gate). 200 ``{ok: true, enforced: false}``."""
        got = await self._gateway_request(request)
        if isinstance(got, web.Response):
            return got
        gid, body = got
        platform = body.get("platform")
        if not isinstance(platform, str) or not platform.strip():
            return _bad("field 'platform' must be a non-empty string")
        for name in ("requireAddress", "allowOtherBots"):
            if body.get(name) is not None and not isinstance(body.get(name), bool):
                return _bad(f"field {name!r} must be a boolean")
        scopes = body.get("freeResponseScopes")
        if scopes is not None and (
            not isinstance(scopes, list) or not all(isinstance(x, str) for x in scopes)
        ):
            return _bad("field 'freeResponseScopes' must be a list of strings")
        self.policies[(gid, platform)] = dict(body)
        return web.json_response({"ok": True, "enforced": False})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "gateways_live": sorted(self.sessions)})


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of header text (aiohttp keeps undecodable bytes as surrogates)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def _http_url(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": "unauthorized: Authorization: Bearer <ingress token> required"}, status=401
    )


def _result_for(action: dict[str, Any]) -> dict[str, Any]:
    """The ``outbound_result`` of a recorded action: an edit keeps its ``message_id``, a send
    gets a fresh one (16 hex chars), typing gets none."""
    result: dict[str, Any] = {"success": True}
    if action["op"] == "edit":
        result["message_id"] = str(action.get("message_id"))
    elif action["op"] != "typing":
        result["message_id"] = uuid.uuid4().hex[:16]
    return result
