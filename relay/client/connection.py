"""One relay socket's life on the gateway side (PROTOCOL.md sections 2-4): the reader that
dispatches the frames ``FrameReader`` (shared with the connector) makes of each message, the
ordered inbound worker that acks each batch after the handler persisted it (batched when the
connector supports it), keepalive, the replay window of PROTOCOL 7.2, and outbound requests with
their local results. ``SocketIO`` is the base of ``RelayTransport`` (``transport.py``), which adds
the supervisor: dial, handshake, backoff, flip and wake. Model: websockets'
``asyncio/connection.py`` beside ``asyncio/client.py``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from common.clock import Clock, wait_with_timeout
from common.errors import FrameTooLarge, ProtocolError
from common.tasks import TaskSet
from relay.client.machine import ConnEvent
from relay.protocol import frames as F
from relay.protocol.framing import (
    CLOSE_FRAME_TOO_LARGE,
    DEFAULT_MAX_FRAME_BYTES,
    FrameReader,
    LogLimiter,
    encode_frame,
)
from relay.protocol.sockets import ClientSocket

log = logging.getLogger("relay.transport")

InboundHandler = Callable[[list[dict[str, Any]]], Awaitable[None]]
"""Gets a batch of ``inbound`` frames in arrival order; returns once they are persisted.

Raising means "not persisted": nothing in the batch is acked (the connector resends it)."""
FrameHandler = Callable[[dict[str, Any]], Awaitable[None]]

INBOUND_BATCH_MAX = 512
_KNOWN_TYPES = frozenset({"inbound", "outbound_result", "descriptor", "going_idle_ack", "interrupt_inbound"})


@dataclass
class TransportConfig:
    """Everything the transport needs; times in seconds.

    ``url`` is already normalised (``normalise_relay_url``). ``identities`` are the
    ``(platform, bot_id)`` pairs sent as hellos, the first being the default identity.
    Upgrade auth is sent only when both ``gateway_id`` and ``secret`` are set.
    ``ping_interval_s=None`` turns keepalive off.
    """

    url: str
    identities: Sequence[tuple[str, str]] = (("relay", ""),)
    gateway_id: str | None = None
    secret: str | None = None
    wake_url: str | None = None
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    handshake_timeout_s: float = 30.0
    outbound_timeout_s: float = 30.0
    ack_timeout_s: float = 10.0
    ping_interval_s: float | None = 30.0
    pong_timeout_s: float = 60.0
    stable_after_s: float = 60.0
    connect_timeout_s: float = 10.0


@dataclass
class SocketState:
    """Per-socket state; a new one on every dial."""

    ws: ClientSocket
    strike: bool
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    inbound: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    first_descriptor: asyncio.Future[F.Descriptor] | None = None
    flip_ack: asyncio.Future[None] | None = None
    handshake_at: float | None = None
    last_rx: float = 0.0
    close_code: int | None = None
    close_reason: str = ""
    # Set when we close the socket on purpose; says what the supervisor does next.
    planned: ConnEvent | None = None
    # PROTOCOL 7.2: the replay the first descriptor announced (``buffered``), counted as work
    # until that many distinct bufferIds arrived or ``ack_timeout_s`` passed.
    # Persisted bufferIds are collected until the handshake says how many to expect (None).
    replay_expected: int | None = None
    replay_seen: set[str] = field(default_factory=set)
    replay_open: bool = False


class SocketIO:
    """The per-socket half of ``RelayTransport``: everything that happens on one handshaken
    (or handshaking) socket. The transport provides the attributes declared here."""

    config: TransportConfig
    clock: Clock
    descriptor: F.Descriptor | None
    descriptors: list[F.Descriptor]
    _on_inbound: InboundHandler
    _on_interrupt: FrameHandler | None
    _sock: SocketState | None
    _limiter: LogLimiter
    _handler_tasks: TaskSet

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    def _notify(self) -> None:
        raise NotImplementedError

    async def _replay_window(self, sock: SocketState) -> None:
        """Close the replay window after ``ack_timeout_s`` even if entries are missing."""
        await self.clock.sleep(self.config.ack_timeout_s)
        if sock.replay_open:
            sock.replay_open = False
            log.info(
                "relay replay window closed after %.0f s: %d of %d announced entr(ies) arrived",
                self.config.ack_timeout_s,
                len(sock.replay_seen),
                sock.replay_expected,
            )
            sock.replay_seen.clear()
            self._notify()

    async def _close_socket(self, sock: SocketState, code: int, reason: str) -> None:
        if sock.close_code is None:
            sock.close_code, sock.close_reason = code, reason
        with contextlib.suppress(Exception):
            await sock.ws.close(code=code, message=reason.encode())

    # --- reading -------------------------------------------------------------------------

    async def _read(self, sock: SocketState) -> None:
        reader = FrameReader(self._drop, self.config.max_frame_bytes)
        ws = sock.ws
        try:
            while True:
                msg = await ws.receive()
                sock.last_rx = self.clock.monotonic()
                kind = msg.type
                if kind is aiohttp.WSMsgType.TEXT or kind is aiohttp.WSMsgType.BINARY:
                    data = msg.data
                elif kind is aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
                    continue
                elif kind is aiohttp.WSMsgType.PONG:
                    continue
                elif kind is aiohttp.WSMsgType.CLOSE:
                    if sock.close_code is None:
                        sock.close_code, sock.close_reason = msg.data, msg.extra or ""
                    return
                elif kind is aiohttp.WSMsgType.ERROR:
                    exc = msg.data
                    code = getattr(exc, "code", None) or ws.close_code
                    if sock.close_code is None:
                        sock.close_code, sock.close_reason = code, str(exc)
                    log.warning("relay socket error %s: %s", code, exc)
                    return
                else:  # CLOSING / CLOSED
                    if sock.close_code is None:
                        sock.close_code = ws.close_code
                    return
                try:
                    frames = reader.feed(data)
                except FrameTooLarge as exc:
                    log.warning("relay frame too large (%d > %d bytes): closing 1009", exc.size, exc.limit)
                    await self._close_socket(sock, CLOSE_FRAME_TOO_LARGE, "frame too large")
                    return
                for frame in frames:
                    self._dispatch(sock, frame)
        finally:
            if sock.first_descriptor is not None and not sock.first_descriptor.done():
                sock.first_descriptor.set_exception(
                    ConnectionError(f"socket closed during handshake ({sock.close_code})")
                )
                sock.first_descriptor.exception()  # consumed: never "exception never retrieved"

    def _drop(self, exc: ProtocolError) -> None:
        if self._limiter.allow(exc.kind, self.clock.monotonic()):
            log.warning("relay dropped a frame (%s): %s", exc.kind, exc)

    def _dispatch(self, sock: SocketState, frame: dict[str, Any]) -> None:
        t = frame["type"]
        bid = frame.get("bufferId")
        has_bid = isinstance(bid, str | int) and not isinstance(bid, bool)
        if t == "inbound" or (has_bid and t not in _KNOWN_TYPES):
            # Every frame carrying a bufferId reaches the handler, which stores or quarantines
            # it, so it is acked and never blocks the connector's cursor (SPEC 8.1).
            if not isinstance(frame.get("event"), dict) and not has_bid:
                self._drop(ProtocolError("inbound frame has no 'event' object"))
                return
            sock.inbound.put_nowait(frame)
        elif t == "outbound_result":
            fut = sock.pending.get(str(frame.get("requestId")))
            result = frame.get("result")
            if fut is not None and not fut.done():
                fut.set_result(
                    result if isinstance(result, dict) else {"success": False, "error": "malformed result"}
                )
        elif t == "descriptor":
            try:
                desc = F.parse_descriptor(frame)
            except ProtocolError as exc:
                if sock.first_descriptor is not None and not sock.first_descriptor.done():
                    sock.first_descriptor.set_exception(exc)
                    return
                self._drop(exc)
                return
            self.descriptors.append(desc)
            if sock.first_descriptor is not None and not sock.first_descriptor.done():
                self.descriptors = [desc]
                sock.first_descriptor.set_result(desc)
        elif t == "going_idle_ack":
            if sock.flip_ack is not None and not sock.flip_ack.done():
                sock.flip_ack.set_result(None)
        elif t == "interrupt_inbound" and self._on_interrupt is not None:
            self._spawn(self._on_interrupt(frame), "interrupt handler")
        # Unknown types are ignored (PROTOCOL.md section 2).

    def _spawn(self, aw: Awaitable[None], what: str) -> None:
        """Run ``aw`` beside the reader; if it raises, the error is logged and the reader goes on."""

        async def run() -> None:
            await aw

        self._handler_tasks.spawn(run(), name=f"relay {what}")

    async def _inbound_worker(self, sock: SocketState) -> None:
        """Hand inbound to the handler in order, in batches; ack each bufferId once persisted."""
        q = sock.inbound
        while True:
            batch = [await q.get()]
            while not q.empty() and len(batch) < INBOUND_BATCH_MAX:
                batch.append(q.get_nowait())
            try:
                await self._on_inbound(batch)
            except Exception:
                log.exception("relay inbound handler raised; %d frame(s) left unacked", len(batch))
                for _ in batch:
                    q.task_done()
                continue
            try:
                ids = [
                    str(b)
                    for f in batch
                    if isinstance(b := f.get("bufferId"), str | int) and not isinstance(b, bool)
                ]
                self._count_replayed(sock, ids)
                if len(ids) > 1 and self.descriptor is not None and self.descriptor.supports_ack_batch:
                    await sock.ws.send_str(F.encode_inbound_ack_batch(ids))
                else:
                    for bid in ids:
                        await sock.ws.send_str(F.encode_inbound_ack(bid))
            finally:
                for _ in batch:
                    q.task_done()

    def _count_replayed(self, sock: SocketState, persisted: list[str]) -> None:
        """Count persisted bufferIds against the announced replay; close it when complete."""
        if sock.replay_expected is not None and not sock.replay_open:
            return
        sock.replay_seen.update(persisted)
        if sock.replay_open and len(sock.replay_seen) >= (sock.replay_expected or 0):
            sock.replay_open = False
            sock.replay_seen.clear()
            log.info("relay replay complete: %d announced entr(ies) persisted", sock.replay_expected)
            self._notify()

    async def _keepalive(self, sock: SocketState) -> None:
        interval = self.config.ping_interval_s or 30.0
        while True:
            await self.clock.sleep(interval)
            if self.clock.monotonic() - sock.last_rx > self.config.pong_timeout_s:
                log.warning("relay keepalive: nothing heard for %.0f s; closing", self.config.pong_timeout_s)
                await self._close_socket(sock, 1011, "keepalive timeout")
                return
            await sock.ws.ping()

    # --- requests ---

    async def send_frame(self, frame: dict[str, Any]) -> bool:
        """Send one frame on the live socket; False (nothing sent) if there is none."""
        sock = self._sock
        if sock is None or not self.connected:
            return False
        try:
            await sock.ws.send_str(encode_frame(frame))
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            # The socket is going away: close it now, so the reader ends and the state moves
            # on (a caller retrying on "not connected" waits for that change, never spins).
            log.warning("relay send failed (%s): closing the socket", type(exc).__name__)
            self._spawn(self._close_socket(sock, 1011, "send failed"), "close after send failure")
            return False
        return True

    async def send_outbound(
        self,
        action: dict[str, Any],
        *,
        platform: str | None = None,
        bot_id: str | None = None,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Send an ``outbound`` and return its ``result`` dict; never hangs.

        Local results: not connected (nothing sent), timed out (ambiguous), connection lost
        (ambiguous), as PROTOCOL.md section 4 lists them. ``idempotency_key`` (PROTOCOL 7.1)
        goes on the frame as ``idempotencyKey``: send one only to a connector that advertises
        ``supports_idempotent_send``.
        """
        sock = self._sock
        if sock is None or not self.connected:
            return dict(F.NOT_CONNECTED)
        rid = F.new_request_id()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        sock.pending[rid] = fut
        try:
            if not await self.send_frame(F.outbound(rid, action, platform, bot_id, idempotency_key)):
                return dict(F.NOT_CONNECTED)
            try:
                return await wait_with_timeout(
                    self.clock, asyncio.shield(fut), timeout_s or self.config.outbound_timeout_s
                )
            except TimeoutError:
                return dict(F.TIMED_OUT)
        finally:
            sock.pending.pop(rid, None)
