"""The reference connector's aiohttp app: WS ``/relay``, ``POST /ingress/...``, ``GET /outbox``.

``Connector`` owns the shared state (routes, wake URLs, sessions, pokers, the store) and
composes the route modules: ``session`` (WS), ``outbound``/``egress``, ``ingress_routes``,
``webhook`` (Telegram), ``provision`` (``/relay/provision``, ``/relay/policy``), ``damping``.

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
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from common.clock import Clock, SystemClock
from common.errors import TokenError
from common.tasks import TaskSet
from relay.connector import telegram as tg
from relay.connector.cluster import Coordinator, Poker, coordinator_for
from relay.connector.damping import FIGHT_LOG_EVERY_S, REPLACE_HOLD_S, Damper
from relay.connector.egress import CHATS_KEPT
from relay.connector.ingress_routes import IngressRoutes
from relay.connector.metrics import ConnectorMetrics
from relay.connector.outbound import OutboundHandler
from relay.connector.platform_outbox import PlatformOutbox
from relay.connector.provision import ProvisionRoutes
from relay.connector.session import HEARTBEAT_S, REPLAY_PAGE, SessionHandler
from relay.connector.store import IDEMPOTENCY_KEEP_S
from relay.connector.store_api import ConnectorStore, import_into, is_pg_url, open_store
from relay.connector.surface import Chats, Session
from relay.connector.wake import WakePoker
from relay.connector.webhook import TelegramWebhook
from relay.protocol.framing import DEFAULT_MAX_FRAME_BYTES
from relay.protocol.token import bearer_of, mint_token, token_gateway_id, verify_token

__all__ = [
    "CHATS_KEPT",
    "DEV_GATEWAY_ID",
    "FIGHT_LOG_EVERY_S",
    "HEARTBEAT_S",
    "REPLACE_HOLD_S",
    "REPLAY_PAGE",
    "Connector",
    "Session",
]

log = logging.getLogger("relay.connector")

RETENTION_S = 7 * 86400.0
"""Default for how long the connector keeps what it no longer needs (``Connector.prune``):
seven days, ``hermes-relay serve --retention-days`` / ``RELAY_RETENTION_DAYS``."""
PRUNE_EVERY_S = 86400.0
"""Seconds between two prunes (the first runs at start)."""

T = TypeVar("T")

DEV_GATEWAY_ID = "dev"
"""The gateway id of an unauthenticated socket in dev mode (no ``secrets``)."""


class Connector:
    """The reference connector. ``await Connector.create(...)``, then serve ``app``.

    ``secrets`` maps gateway id -> secret; empty means unauthenticated dev mode (every socket
    is gateway ``"dev"``, or the id its token claims). ``clock`` drives pokes and ``wakeAt``.
    ``max_body_bytes`` caps an ingress body (default: 4 x ``max_frame_bytes``, at least 1 MiB;
    larger -> 413 with a JSON error).

    ``telegram`` maps gateway id -> Bot API token (that bot's chats go to that gateway; the
    webhook needs ``telegram_webhook_secret``; calls go to ``telegram_api_base``).
    ``ingress_token``: ``/ingress/*`` and ``/outbox`` need ``Authorization: Bearer <token>``.
    ``retention_s``: what the connector no longer needs is deleted after this many seconds
    (``prune``, at start and daily).
    """

    def __init__(
        self,
        store: ConnectorStore,
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
        retention_s: float = RETENTION_S,
    ) -> None:
        self.store = store
        self.retention_s = retention_s
        self.secrets = dict(secrets or {})
        self.max_frame_bytes = max_frame_bytes
        self.max_body_bytes = max_body_bytes or max(DEFAULT_MAX_FRAME_BYTES, 4 * max_frame_bytes)
        self.clock: Clock = clock or SystemClock()
        self.poke_rate_s = poke_rate_s
        self.sessions: dict[str, Session] = {}
        self.routes: dict[tuple[str, str], str] = {}
        self.wake_urls: dict[str, str] = {}
        self.pokers: dict[str, WakePoker] = {}
        self.flipped: dict[str, bool] = {}  # mirrors gateways.flipped in the store
        # gateways whose wake host answered 404 on /presence (until a provision or wakeUrl hello)
        self.presence_off: set[str] = set()
        self.damper = Damper(self.clock)  # 4409 damping
        self.replacements_total = self.damper.totals  # hermes_relay_replacements_total{gateway}
        self.metrics = ConnectorMetrics(self)  # served by relay.connector.metrics.metrics_app
        # (gateway id, platform, chat_id) -> what the last inbound said of the chat
        self.chats: Chats = OrderedDict()
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}  # (gid, platform) -> policy
        self._http: aiohttp.ClientSession | None = None
        self._tasks = TaskSet(log)
        self.ingress_token = ingress_token or None
        self.telegram_webhook_secret = telegram_webhook_secret or None
        # gateway id -> (bot id, token)
        self.telegram_bots = {gid: (tg.bot_id_of(tok), tok) for gid, tok in (telegram or {}).items()}
        self.ws = SessionHandler(self)
        self.outbound = OutboundHandler(self)
        self.ingress = IngressRoutes(self)
        self.webhook = TelegramWebhook(self)
        self.provision = ProvisionRoutes(self)
        self.platform_outbox = PlatformOutbox(
            store,
            http=lambda: self.http,
            clock=self.clock,
            api_base=telegram_api_base,
            tokens={bot: tok for bot, tok in self.telegram_bots.values()},
            on_done=self.outbound.platform_done,
        )
        self.app = web.Application(client_max_size=self.max_body_bytes)
        self.app.router.add_get("/relay", self.ws.handle)
        self.app.router.add_post("/ingress/{platform}/{bot_id}", self.ingress.handle_ingress)
        self.app.router.add_post("/ingress/{platform}", self.ingress.handle_ingress)
        self.app.router.add_get("/outbox", self.ingress.handle_outbox)
        self.app.router.add_post("/telegram/{gateway_id}", self.webhook.handle)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_post("/relay/provision", self.provision.handle_provision)
        self.app.router.add_post("/relay/policy", self.provision.handle_policy)
        self.app.on_shutdown.append(self._on_shutdown)
        # SQLite: this process is the only one; PostgreSQL: several share the store (pg/cluster).
        self.cluster: Coordinator = coordinator_for(self)

    @classmethod
    async def create(cls, db_path: str, *, import_sqlite: str | None = None, **kwargs: Any) -> Connector:
        """Open the store (a SQLite path or a ``postgresql://`` URL, ``open_store``), import the
        SQLite connector database at ``import_sqlite`` into it first when there is one (a
        PostgreSQL store only; the CLI refuses the flag with another SQLite file:
        ``relay/connector/pg/importer.py``), restore routes, wake URLs and pending pokes, and
        return the connector.

        Raises ``OSError``, ``sqlite3.Error`` or ``StoreOpenError`` when the database cannot be
        opened or the import fails (the store is closed again: nothing is left running).
        """
        store = await open_store(db_path)
        try:
            if import_sqlite is not None and is_pg_url(db_path):
                clock: Clock = kwargs.get("clock") or SystemClock()
                await import_into(store, import_sqlite, clock.wall())
            self = cls(store, **kwargs)
            await self._restore()
        except BaseException:
            await store.close()
            raise
        return self

    @property
    def http(self) -> aiohttp.ClientSession:
        """The shared outgoing HTTP session (pokes, presence, Bot API), made on first use."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def prune(self) -> None:
        """Forget what is older than ``retention_s``: acked buffer entries (message text),
        outbox rows (reply text), seen Telegram update ids; idempotency keys and finished
        platform sends after at least ``IDEMPOTENCY_KEEP_S`` (PROTOCOL.md 7.1). Unacked entries
        and unfinished sends stay, whatever their age."""
        now = self.clock.wall()
        await self.store.prune(now - self.retention_s, now - max(self.retention_s, IDEMPOTENCY_KEEP_S))

    async def _prune_daily(self) -> None:
        while True:
            await self.clock.sleep(PRUNE_EVERY_S)
            try:
                await self.prune()
            except Exception as exc:  # the next day tries again; nothing is lost by waiting
                log.warning("connector retention prune failed: %s", exc)

    async def _restore(self) -> None:
        await self.prune()
        self.routes = await self.store.identities()
        gateways = await self.store.gateways()
        for gid, rec in gateways.items():
            if rec.wake_url:
                self.wake_urls[gid] = rec.wake_url
            self.flipped[gid] = rec.flipped
            if rec.flipped:
                poker = self.poker(gid)
                if rec.wake_at is not None:
                    poker.schedule_wake_at(rec.wake_at)
                if await self.store.unacked_count(gid):
                    poker.request()
        for gid, (bot_id, _token) in self.telegram_bots.items():
            # SPEC 8.3: a configured bot is routed at start, without waiting for a hello.
            if self.routes.get((tg.PLATFORM, bot_id)) != gid:
                self.routes[(tg.PLATFORM, bot_id)] = gid
                await self.store.remember(gid, tg.PLATFORM, bot_id, None, self.clock.wall())
        self.cluster.start()
        self.spawn(self._prune_daily())  # last: nothing left to fail in create()
        if not self.secrets:
            log.warning("no gateway configured: unauthenticated dev mode (any socket is accepted)")

    async def close(self) -> None:
        """Stop pokes, close sockets and flush the store."""
        for poker in self.pokers.values():
            poker.cancel()
        await self.platform_outbox.close()
        await self._on_shutdown(self.app)
        await self._tasks.aclose()
        if self._http is not None:
            await self._http.close()
        await self.store.close()

    async def _on_shutdown(self, _app: web.Application) -> None:
        """Close every gateway socket with 1001 (the app's shutdown hook, and ``close()``)."""
        for s in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await s.ws.close(code=1001, message=b"connector shutting down")

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task the connector keeps (and cancels and awaits on ``close()``)."""
        return self._tasks.spawn(coro)

    # --- auth and pokes --------------------------------------------------------------------

    def auth_headers(self, gateway_id: str) -> dict[str, str]:
        """The bearer a poke or presence request carries for ``gateway_id`` (none in dev mode)."""
        secret = self.secrets.get(gateway_id)
        if secret is None:
            return {}
        return {"Authorization": f"Bearer {mint_token(gateway_id, secret, self.clock.wall())}"}

    def poker(self, gateway_id: str) -> Poker:
        """The pokes of ``gateway_id`` as this instance may ask for them (``cluster.poker``)."""
        return self.cluster.poker(gateway_id)

    def local_poker(self, gateway_id: str) -> WakePoker:
        """The (one, lazily made) ``WakePoker`` of ``gateway_id`` in this process."""
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

    def authenticate(self, authorization: str | None) -> str:
        """The gateway id of an upgrade's ``Authorization`` header. Raises ``TokenError`` only,
        whatever the header holds (aiohttp decodes header bytes with surrogateescape: non-ASCII
        and lone surrogates)."""
        try:
            token = bearer_of(authorization)
            if not self.secrets:
                return (token_gateway_id(token) if token else None) or DEV_GATEWAY_ID
            if token is None:
                raise TokenError("unauthorized", "no bearer token")
            return verify_token(token, self.secrets, self.clock.wall())
        except TokenError:
            raise
        except Exception as exc:  # defence in depth: a bad header is a 4401, never a 1006
            raise TokenError("unauthorized", f"unreadable token ({type(exc).__name__})") from None

    async def ingest(
        self,
        platform: str,
        bot_id: str,
        body: Any,
        *,
        gateway_id: str | None = None,
        telegram_update: tuple[str, int] | None = None,
    ) -> dict[str, str]:
        """``IngressRoutes.ingest`` (``relay/connector/ingress_routes.py`` has its answers and
        errors): the way the Telegram poller and webhook hand a message in."""
        return await self.ingress.ingest(
            platform, bot_id, body, gateway_id=gateway_id, telegram_update=telegram_update
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "gateways_live": sorted(self.sessions)})
