"""What the route modules see of a running connector: ``ConnectorSurface``, a ``Protocol`` of the
members ``session``, ``outbound``, ``egress``, ``ingress_routes``, ``webhook`` and ``provision``
read or call, so they depend on this list and not on the composition root
(``relay/connector/server.py``, which builds them with itself). It also holds the two shapes
that list names and those modules share: the ``Session`` record and the ``Chats`` book."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp

from common.clock import Clock
from relay.connector.cluster import Coordinator, Poker
from relay.connector.damping import Damper
from relay.connector.metrics import ConnectorMetrics
from relay.connector.platform_outbox import PlatformOutbox
from relay.connector.store_api import ConnectorStore
from relay.connector.store_platform import PlatformSend
from relay.protocol.sockets import ServerSocket

T = TypeVar("T")

Chats = OrderedDict[tuple[str, str, str], dict[str, Any]]
"""(gateway id, platform, chat_id) -> ``{name, type}`` as the last inbound of the chat said."""


@dataclass(eq=False)
class Session:
    """One gateway socket on the connector."""

    gateway_id: str
    ws: ServerSocket
    handshaken: bool = False
    flipped: bool = False
    identity: tuple[str, str] = ("relay", "")
    identities: list[tuple[str, str]] = field(default_factory=list)
    notify: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    presence: asyncio.Task[Any] | None = None

    @property
    def live(self) -> bool:
        """Handshaken, not flipped and the socket still open: inbound goes out on it now."""
        return self.handshaken and not self.flipped and not self.ws.closed


class SocketsView(Protocol):
    """The WS handler (``SessionHandler``) as ``provision`` uses it."""

    def start_presence(self, s: Session) -> None: ...


class OutboundView(Protocol):
    """The outbound handler (``OutboundHandler``) as ``session`` uses it."""

    async def on_outbound(self, s: Session, frame: dict[str, Any]) -> None: ...

    async def platform_done(self, send: PlatformSend, result: dict[str, Any]) -> None: ...


class ConnectorSurface(Protocol):
    """The connector members the route modules use. None is rebound through the surface (the
    containers are mutated in place), so every member is read-only here."""

    @property
    def store(self) -> ConnectorStore: ...

    @property
    def cluster(self) -> Coordinator: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def http(self) -> aiohttp.ClientSession: ...

    @property
    def secrets(self) -> dict[str, str]: ...

    @property
    def max_frame_bytes(self) -> int: ...

    @property
    def max_body_bytes(self) -> int: ...

    @property
    def ingress_token(self) -> str | None: ...

    @property
    def telegram_webhook_secret(self) -> str | None: ...

    @property
    def telegram_bots(self) -> dict[str, tuple[str, str]]: ...

    @property
    def sessions(self) -> dict[str, Session]: ...

    @property
    def routes(self) -> dict[tuple[str, str], str]: ...

    @property
    def wake_urls(self) -> dict[str, str]: ...

    @property
    def flipped(self) -> dict[str, bool]: ...

    @property
    def presence_off(self) -> set[str]: ...

    @property
    def policies(self) -> dict[tuple[str, str], dict[str, Any]]: ...

    @property
    def chats(self) -> Chats: ...

    @property
    def metrics(self) -> ConnectorMetrics: ...

    @property
    def damper(self) -> Damper: ...

    @property
    def platform_outbox(self) -> PlatformOutbox: ...

    @property
    def ws(self) -> SocketsView: ...

    @property
    def outbound(self) -> OutboundView: ...

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]: ...

    def auth_headers(self, gateway_id: str) -> dict[str, str]: ...

    def poker(self, gateway_id: str) -> Poker: ...

    def authenticate(self, authorization: str | None) -> str: ...

    async def ingest(
        self,
        platform: str,
        bot_id: str,
        body: Any,
        *,
        gateway_id: str | None = None,
        telegram_update: tuple[str, int] | None = None,
    ) -> dict[str, str]: ...
