"""One gateway WebSocket on the connector: its frame loop (the ``Session`` record is in ``surface``).

Owns the upgrade (auth, 4409 refusal), hello/descriptor and the handshake, the replay/live
sender, ``inbound_ack``, ``going_idle`` (the flip) and the ``/presence`` hold of a live session.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from common.errors import FrameTooLarge, ProtocolError, TokenError
from relay.connector.surface import Session
from relay.connector.wake import hold_presence
from relay.protocol import frames as F
from relay.protocol.framing import CLOSE_FRAME_TOO_LARGE, FrameReader, LogLimiter, encode_frame, pack_lines
from relay.protocol.sockets import ServerSocket

if TYPE_CHECKING:
    from relay.connector.surface import ConnectorSurface

log = logging.getLogger("relay.connector")

REPLAY_PAGE = 2000
"""Unacked entries read from the store per sender round trip."""
PACK_BYTES = 64 * 1024
"""Most bytes of NDJSON lines the sender packs into one WS message (one line alone may be
larger, up to the frame limit)."""
HEARTBEAT_S = 30.0
"""WS ping interval on gateway sockets: a half-open socket is closed within 1.5 x this, so the
4409 hold-down never protects a dead socket for long."""


class SessionHandler:
    """``GET /relay`` for a ``Connector``: reads frames from each socket and keeps the
    connector's ``sessions``, ``routes``, ``wake_urls`` and flip state in step with them."""

    def __init__(self, connector: ConnectorSurface) -> None:
        self.c = connector
        self._limiter = LogLimiter()
        # Gateways whose stored flip is cleared with their first ack (one commit with it,
        # so the replay's first page never waits on a second fsync of ours: issue #16).
        self._clear_with_ack: set[str] = set()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """``GET /relay``: upgrade, then ``serve`` the socket."""
        ws = web.WebSocketResponse(max_msg_size=self.c.max_frame_bytes, autoping=True, heartbeat=HEARTBEAT_S)
        await ws.prepare(request)
        await self.serve(ws, request.headers.get("Authorization"))
        return ws

    async def serve(self, ws: ServerSocket, authorization: str | None) -> None:
        """Authenticate an upgraded socket by its ``Authorization`` header (bad token -> close
        4401; a damped re-dial -> 4409), then read NDJSON frames until it closes (oversized
        frame -> 1009). The simulator calls this with its in-memory socket."""
        try:
            gateway_id = self.c.authenticate(authorization)
        except TokenError as exc:
            log.warning("refused gateway socket: %s", exc)
            await ws.close(code=4401, message=exc.reason.encode())
            return
        current = self.c.sessions.get(gateway_id)
        if self.c.damper.damped(gateway_id, live=current is not None and current.live):
            await ws.close(code=4409, message=b"replaced")
            return
        session = Session(gateway_id=gateway_id, ws=ws)
        reader = FrameReader(lambda exc: self._drop(gateway_id, exc), self.c.max_frame_bytes)
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT and msg.type is not aiohttp.WSMsgType.BINARY:
                    break
                try:
                    frames = reader.feed(msg.data)
                except FrameTooLarge:
                    await ws.close(code=CLOSE_FRAME_TOO_LARGE, message=b"frame too large")
                    break
                for frame in frames:
                    await self._on_frame(session, frame)
        finally:
            for t in session.tasks:
                t.cancel()
            self.c.cluster.socket_down(session)
            if self.c.sessions.get(gateway_id) is session:
                del self.c.sessions[gateway_id]
                if session.handshaken and not session.flipped:
                    log.info("gateway %s: socket dropped without a flip; buffering", gateway_id)

    def _drop(self, gateway_id: str, exc: ProtocolError) -> None:
        if self._limiter.allow(exc.kind, self.c.clock.monotonic()):
            log.warning("gateway %s sent a bad frame (%s): %s", gateway_id, exc.kind, exc)

    async def _on_frame(self, s: Session, frame: dict[str, Any]) -> None:
        t = frame["type"]
        if t == "hello":
            await self._on_hello(s, frame)
        elif t == "inbound_ack":
            self._on_ack(s, frame)
        elif t == "outbound":
            await self.c.outbound.on_outbound(s, frame)
        elif t == "going_idle":
            await self._on_going_idle(s, frame)
        elif t == "interrupt":
            log.info("gateway %s: interrupt for session %r", s.gateway_id, frame.get("session_key"))

    def _on_ack(self, s: Session, frame: dict[str, Any]) -> None:
        """``bufferId`` (one) and/or ``bufferIds`` (PROTOCOL.md 7.3; non-strings ignored)."""
        now = self.c.clock.wall()
        if s.gateway_id in self._clear_with_ack:
            self._clear_with_ack.discard(s.gateway_id)
            self.c.store.clear_flip(s.gateway_id, now)
        bid = frame.get("bufferId")
        if isinstance(bid, str):
            self.c.store.ack(s.gateway_id, bid, now)
            self.c.metrics.acked.inc()
        many = frame.get("bufferIds")
        if isinstance(many, list):
            ids = [b for b in many if isinstance(b, str)]
            self.c.store.ack_many(s.gateway_id, ids, now)
            self.c.metrics.acked.inc(len(ids))

    async def _on_hello(self, s: Session, frame: dict[str, Any]) -> None:
        platform, bot_id = frame.get("platform"), frame.get("botId", "")
        if not isinstance(platform, str) or not isinstance(bot_id, str):
            log.warning("gateway %s: hello without string platform/botId ignored", s.gateway_id)
            return
        wake_url = frame.get("wakeUrl") if isinstance(frame.get("wakeUrl"), str) else None
        gid = s.gateway_id
        if wake_url:
            self.c.presence_off.discard(gid)  # a hello with wakeUrl re-arms presence
        if (platform, bot_id) not in s.identities:
            s.identities.append((platform, bot_id))
        previous = self.c.routes.get((platform, bot_id))
        if previous is not None and previous != gid:
            log.info("identity %s/%r moves from gateway %s to %s", platform, bot_id, previous, gid)
        # Write only what changed: a gateway re-dialling with the same identity costs no fsync.
        if previous != gid or (wake_url and self.c.wake_urls.get(gid) != wake_url):
            self.c.routes[(platform, bot_id)] = gid
            if wake_url:
                self.c.wake_urls[gid] = wake_url
            await self.c.store.remember(gid, platform, bot_id, wake_url, self.c.clock.wall())
        # PROTOCOL.md 7.2: the first descriptor says how many entries the replay will carry.
        # Its first page is read here, before the descriptor goes out, so the replay's read
        # never contends with the gateway persisting (and a short backlog needs no COUNT).
        first: list[tuple[int, str]] = []
        buffered = None
        if not s.handshaken:
            first = await self.c.store.unacked_after(gid, 0, REPLAY_PAGE)
            buffered = len(first) if len(first) < REPLAY_PAGE else await self.c.store.unacked_count(gid)
        await s.ws.send_str(encode_frame(F.descriptor(platform, buffered=buffered)))
        if not s.handshaken:
            await self._complete_handshake(s, (platform, bot_id), first)

    async def _complete_handshake(
        self, s: Session, identity: tuple[str, str], first: list[tuple[int, str]]
    ) -> None:
        gid = s.gateway_id
        s.handshaken, s.identity = True, identity
        old = self.c.sessions.get(gid)
        self.c.sessions[gid] = s
        if old is not None and old is not s:
            log.info("gateway %s: newer handshake replaces an older socket (4409)", gid)
            self.c.damper.note_fight(gid, refused=False)
            self.c.spawn(old.ws.close(code=4409, message=b"replaced"))
        self.c.poker(gid).cancel()
        if self.c.flipped.get(gid):
            # Not awaited: a stale "flipped" after a crash only costs a harmless extra poke.
            # With a replay to send, it is queued when the first ack arrives instead of beside
            # the gateway's first commit (the wake path).
            self.c.flipped[gid] = False
            if first:
                self._clear_with_ack.add(gid)
            else:
                self.c.store.clear_flip(gid, self.c.clock.wall())
        await self.c.cluster.socket_up(s)  # PostgreSQL: the newest generation, on any instance
        log.info("gateway %s: handshake complete; replaying unacked entries", gid)
        s.tasks.append(self.c.spawn(self._sender(s, first)))
        self.start_presence(s)

    def start_presence(self, s: Session) -> None:
        """Hold ``/presence`` for a live session with a wake URL, unless its host lacks one."""
        gid = s.gateway_id
        url = self.c.wake_urls.get(gid)
        if not url or gid in self.c.presence_off or not s.live:
            return
        if s.presence is not None and not s.presence.done():
            return
        s.presence = self.c.spawn(self._presence(gid, url))
        s.tasks.append(s.presence)

    async def _presence(self, gid: str, url: str) -> None:
        status = await hold_presence(
            gid, url, http=self.c.http, clock=self.c.clock, auth=lambda: self.c.auth_headers(gid)
        )
        if status == 404 and gid not in self.c.presence_off:
            self.c.presence_off.add(gid)
            log.warning(
                "gateway %s: %s has no /presence (404); presence stops until its next provision"
                " or hello with wakeUrl",
                gid,
                url,
            )

    async def _sender(self, s: Session, first: list[tuple[int, str]] | None = None) -> None:
        """Stream the gateway's unacked entries in seq order: the backlog, then live ones.

        ``first``: the first page, read by the handshake before the descriptor went out (so
        the replay starts without another read; empty: read now, after the session is
        registered, so an entry appended meanwhile is not missed). Each page goes out packed
        several NDJSON lines to a WS message (``pack_lines``, at most ``PACK_BYTES`` each;
        PROTOCOL.md section 2 has every receiver take several frames per message): one send
        per message instead of one per entry."""
        cursor = 0
        pending = first or None
        while s.live:
            if pending is not None:
                rows, pending = pending, None
            else:
                s.notify.clear()
                rows = await self.c.store.unacked_after(s.gateway_id, cursor, REPLAY_PAGE)
            if not rows:
                await s.notify.wait()
                continue
            for message, last_seq in pack_lines(rows, min(PACK_BYTES, self.c.max_frame_bytes)):
                if not s.live:
                    return
                await s.ws.send_str(message)
                self.c.metrics.frames_sent.inc(message.count("\n"))
                cursor = last_seq

    async def _on_going_idle(self, s: Session, frame: dict[str, Any]) -> None:
        gid = s.gateway_id
        wake_at: float | None = None
        raw = frame.get("wakeAt")
        if raw is not None:
            try:
                wake_at = F.parse_rfc3339(raw)
            except ValueError as exc:
                log.warning("gateway %s: invalid wakeAt ignored: %s", gid, exc)
        s.flipped = True
        self._clear_with_ack.discard(gid)  # flipped again: the stored flip must stay set
        s.notify.set()
        for t in s.tasks:
            t.cancel()
        s.tasks.clear()
        self.c.flipped[gid] = True
        await self.c.store.set_flip(gid, True, wake_at, self.c.clock.wall())
        self.c.poker(gid).schedule_wake_at(wake_at)
        log.info("gateway %s: flipped to buffered-only (wakeAt %s)", gid, raw if wake_at else None)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await s.ws.send_str(encode_frame(F.going_idle_ack()))
        # PROTOCOL.md 7.2: entries it has not acked must not wait for the next event: poke now.
        unacked = await self.c.store.unacked_count(gid)
        if unacked:
            log.info("gateway %s: flipped with %d unacked entries; poking at once", gid, unacked)
            self.c.poker(gid).request(immediate=True)
