"""The gateway's relay transport: one aiohttp WebSocket client driven by ``ConnectionMachine``.

Owns the supervisor (the only dialer), the handshake, the reader, outbound request futures, the
ordered inbound worker that acks after the handler persisted a batch, keepalive, ``go_dormant``
and ``wake``. Time and jitter are injected (``Clock``, ``uniform``), so every timer here runs on
a ``FakeClock`` in tests. Model: websockets' ``asyncio/client.py`` reconnect loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from relay.client.backoff import Backoff, Uniform
from relay.client.machine import CloseAction, ConnectionMachine, ConnEvent, ConnState, decide_close
from relay.clock import Clock, SystemClock, wait_with_timeout
from relay.errors import FrameTooLarge, ProtocolError
from relay.protocol import frames as F
from relay.protocol.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    LogLimiter,
    NdjsonSplitter,
    decode_line,
    encode_frame,
)
from relay.protocol.token import mint_token

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
class _Socket:
    """Per-socket state; a new one on every dial."""

    ws: aiohttp.ClientWebSocketResponse
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


class RelayTransport:
    """Client side of PROTOCOL.md: dial, handshake, frames, flip, reconnect.

    Read-only status: ``state`` (``ConnState``), ``connected``, ``dial_attempts``,
    ``last_close_code``, ``descriptor`` (the first identity's), ``supports_wake_at``,
    ``backoff_delays`` (every backoff slept, seconds). Use ``wait_until(pred)`` to await a change.
    """

    def __init__(
        self,
        config: TransportConfig,
        *,
        on_inbound: InboundHandler,
        on_interrupt: FrameHandler | None = None,
        clock: Clock | None = None,
        uniform: Uniform = random.uniform,
    ) -> None:
        self.config = config
        self._on_inbound = on_inbound
        self._on_interrupt = on_interrupt
        self.clock: Clock = clock or SystemClock()
        self._backoff = Backoff(uniform=uniform)
        self._m = ConnectionMachine()
        self._sock: _Socket | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._limiter = LogLimiter()
        self._ever_handshaken = False
        self._strike_next = False
        self._next_delay = 0.0
        self.dial_attempts = 0
        self.last_close_code: int | None = None
        self.last_close_reason = ""
        self.descriptor: F.Descriptor | None = None
        self.descriptors: list[F.Descriptor] = []
        self.backoff_delays: list[float] = []
        self.listeners: list[Callable[[], None]] = []

    # --- status --------------------------------------------------------------------------

    @property
    def state(self) -> ConnState:
        return self._m.state

    @property
    def connected(self) -> bool:
        """True while a handshaken socket is up (including while a flip is pending)."""
        return self._m.state in (ConnState.CONNECTED, ConnState.FLIPPING)

    @property
    def supports_wake_at(self) -> bool:
        return bool(self.descriptor and self.descriptor.supports_wake_at)

    @property
    def supports_idempotent_send(self) -> bool:
        """The connector stores idempotency keys (PROTOCOL 7.1): an ambiguous send may be resent."""
        return bool(self.descriptor and self.descriptor.supports_idempotent_send)

    @property
    def replaying(self) -> bool:
        """True while the replay announced by the handshake's descriptor (``buffered``) has
        not fully arrived and ``ack_timeout_s`` has not passed: the owner must not flip."""
        sock = self._sock
        return sock is not None and sock.replay_open

    @property
    def max_message_length(self) -> int:
        return self.descriptor.max_message_length if self.descriptor else F.DEFAULT_MAX_MESSAGE_LENGTH

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked on every state or counter change."""
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        for listener in self.listeners:
            listener()

    def _fire(self, event: ConnEvent, why: str = "") -> None:
        before = self._m.state
        after = self._m.fire(event)
        if after is not before:
            log.info(
                "relay %s -> %s (%s)%s", before.value, after.value, event.value, f": {why}" if why else ""
            )
        self._notify()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor (the one dialer). Idempotent."""
        if self._supervisor is None:
            self._fire(ConnEvent.START)
            self._supervisor = asyncio.create_task(self._supervise(), name="relay-supervisor")

    async def disconnect(self) -> None:
        """Terminal close: no reconnect after this (PROTOCOL.md section 6)."""
        if self._m.state is ConnState.CLOSED:
            return
        self._fire(ConnEvent.CLOSE, "disconnect()")
        sock = self._sock
        if sock is not None:
            sock.planned = ConnEvent.CLOSE
            with contextlib.suppress(Exception):
                await sock.ws.close(code=1000, message=b"disconnect")
        self._wake.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for t in list(self._handler_tasks):
            t.cancel()

    def wake(self, reason: str = "wake") -> bool:
        """Re-dial at once if dormant or backing off (or right after a flip in progress).

        Returns True if this wake will cause a dial. Never resets anything else.
        """
        if self._m.state in (ConnState.DORMANT, ConnState.BACKOFF, ConnState.FLIPPING):
            log.info("relay wake requested (%s) in state %s", reason, self._m.state.value)
            self._wake.set()
            return True
        return False

    # --- supervisor ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                st = self._m.state
                if st is ConnState.DIALING:
                    await self._dial_once(http)
                elif st is ConnState.BACKOFF:
                    delay = self._next_delay
                    self.backoff_delays.append(delay)
                    self._notify()
                    log.info("relay backoff %.2f s (attempt %d)", delay, self._backoff.attempts)
                    try:
                        await wait_with_timeout(self.clock, self._wake.wait(), delay)
                        self._wake.clear()
                        self._fire(ConnEvent.WAKE, "woken during backoff")
                    except TimeoutError:
                        self._fire(ConnEvent.BACKOFF_ELAPSED)
                elif st is ConnState.DORMANT:
                    # No timer while dormant: only wake() re-dials.
                    await self._wake.wait()
                    self._wake.clear()
                    self._fire(ConnEvent.WAKE, "woken while dormant")
                else:
                    return

    def _headers(self) -> dict[str, str]:
        c = self.config
        if c.gateway_id and c.secret:
            return {"Authorization": f"Bearer {mint_token(c.gateway_id, c.secret, self.clock.wall())}"}
        return {}

    async def _dial_once(self, http: aiohttp.ClientSession) -> None:
        self.dial_attempts += 1
        strike, self._strike_next = self._strike_next, False
        self._notify()
        try:
            ws = await http.ws_connect(
                self.config.url,
                headers=self._headers(),
                autoping=False,
                max_msg_size=self.config.max_frame_bytes,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                # An aiohttp timeout is a last resort for a hung TCP connect only.
                receive_timeout=None,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._closed(None, f"dial failed: {type(exc).__name__}: {exc}", strike, None)
            return
        self._fire(ConnEvent.UPGRADED)
        sock = _Socket(ws=ws, strike=strike, last_rx=self.clock.monotonic())
        sock.first_descriptor = asyncio.get_running_loop().create_future()
        self._sock = sock
        reader = asyncio.create_task(self._read(sock), name="relay-reader")
        worker = asyncio.create_task(self._inbound_worker(sock), name="relay-inbound")
        keepalive: asyncio.Task[None] | None = None
        replay: asyncio.Task[None] | None = None
        try:
            ok = await self._handshake(sock, reader)
            if ok:
                if self.config.ping_interval_s:
                    keepalive = asyncio.create_task(self._keepalive(sock), name="relay-keepalive")
                if sock.replay_open:
                    replay = asyncio.create_task(self._replay_window(sock), name="relay-replay")
            await reader
        finally:
            if replay is not None:
                replay.cancel()
            for t in (worker, keepalive, reader):
                if t is not None and not t.done():
                    t.cancel()
            for t in (worker, keepalive, reader):
                if t is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
            for fut in sock.pending.values():
                if not fut.done():
                    fut.set_result(dict(F.CONNECTION_LOST))
            sock.pending.clear()
            if sock.flip_ack is not None and not sock.flip_ack.done():
                sock.flip_ack.set_exception(ConnectionError("socket closed before going_idle_ack"))
                sock.flip_ack.exception()
            self._sock = None
        self._closed(sock.close_code, sock.close_reason, strike, sock)

    async def _handshake(self, sock: _Socket, reader: asyncio.Task[None]) -> bool:
        try:
            for platform, bot_id in self.config.identities:
                await sock.ws.send_str(encode_frame(F.hello(platform, bot_id, self.config.wake_url)))
            assert sock.first_descriptor is not None
            desc = await wait_with_timeout(
                self.clock, asyncio.shield(sock.first_descriptor), self.config.handshake_timeout_s
            )
        except TimeoutError:
            log.warning(
                "relay handshake failed: no descriptor within %.0f s", self.config.handshake_timeout_s
            )
            await self._close_socket(sock, 1002, "handshake timeout")
            return False
        except (ProtocolError, ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            log.warning("relay handshake failed: %s", exc)
            if not reader.done():
                await self._close_socket(sock, 1002, "handshake failed")
            return False
        sock.handshake_at = self.clock.monotonic()
        self.descriptor = desc
        self._ever_handshaken = True
        self._wake.clear()
        sock.replay_expected = desc.buffered or 0
        sock.replay_open = len(sock.replay_seen) < sock.replay_expected
        if not sock.replay_open:
            sock.replay_seen.clear()
        self._fire(
            ConnEvent.HANDSHAKE_OK,
            f"descriptor {desc.label!r}"
            + (f"; {desc.buffered} buffered entr(ies) to replay" if desc.buffered else ""),
        )
        return True

    async def _replay_window(self, sock: _Socket) -> None:
        """Close the replay window after ``ack_timeout_s`` even if entries are missing."""
        await self.clock.sleep(self.config.ack_timeout_s)
        if sock.replay_open:
            sock.replay_open = False
            sock.replay_seen.clear()
            log.info(
                "relay replay window closed after %.0f s: %d of %d announced entr(ies) arrived",
                self.config.ack_timeout_s,
                len(sock.replay_seen),
                sock.replay_expected,
            )
            self._notify()

    async def _close_socket(self, sock: _Socket, code: int, reason: str) -> None:
        if sock.close_code is None:
            sock.close_code, sock.close_reason = code, reason
        with contextlib.suppress(Exception):
            await sock.ws.close(code=code, message=reason.encode())

    def _closed(self, code: int | None, reason: str, strike: bool, sock: _Socket | None) -> None:
        self.last_close_code, self.last_close_reason = code, reason
        state = self._m.state
        if state in (ConnState.CLOSED, ConnState.DORMANT):
            self._notify()
            return
        if sock is not None and sock.planned is ConnEvent.REDIAL:
            self._fire(ConnEvent.REDIAL, reason)
            return
        if sock is not None and sock.handshake_at is not None:
            if self.clock.monotonic() - sock.handshake_at >= self.config.stable_after_s:
                self._backoff.reset()
        decision = decide_close(code, reason, ever_handshaken=self._ever_handshaken, strike_on_socket=strike)
        if decision.action is CloseAction.REVOKE:
            log.error("relay revoked: second 4401 %r after a handshake; no more dials", reason)
            self._fire(ConnEvent.REVOKE, decision.reason)
        elif decision.action is CloseAction.REDIAL_NOW:
            self._strike_next = True
            self._fire(ConnEvent.REDIAL, f"{decision.reason}: one re-dial with a fresh token")
        else:
            self._next_delay = self._backoff.next_delay()
            self._fire(ConnEvent.FAILED, decision.reason)

    # --- reading -------------------------------------------------------------------------

    async def _read(self, sock: _Socket) -> None:
        splitter = NdjsonSplitter(self.config.max_frame_bytes)
        ws = sock.ws
        try:
            while True:
                msg = await ws.receive()
                sock.last_rx = self.clock.monotonic()
                kind = msg.type
                if kind is aiohttp.WSMsgType.TEXT:
                    data = msg.data
                elif kind is aiohttp.WSMsgType.BINARY:
                    data = msg.data.decode("utf-8", errors="replace")
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
                    lines = splitter.feed(data)
                except FrameTooLarge as exc:
                    log.warning("relay frame too large (%d > %d bytes): closing 1009", exc.size, exc.limit)
                    await self._close_socket(sock, 1009, "frame too large")
                    return
                for line in lines:
                    try:
                        frame = decode_line(line)
                    except ProtocolError as exc:
                        self._drop(exc)
                        continue
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

    def _dispatch(self, sock: _Socket, frame: dict[str, Any]) -> None:
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

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("relay %s raised; the reader goes on", what)

        task = asyncio.create_task(guarded())
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _inbound_worker(self, sock: _Socket) -> None:
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

    def _count_replayed(self, sock: _Socket, persisted: list[str]) -> None:
        """Count persisted bufferIds against the announced replay; close it when complete."""
        if sock.replay_expected is not None and not sock.replay_open:
            return
        sock.replay_seen.update(persisted)
        if sock.replay_open and len(sock.replay_seen) >= (sock.replay_expected or 0):
            sock.replay_open = False
            sock.replay_seen.clear()
            log.info("relay replay complete: %d announced entr(ies) persisted", sock.replay_expected)
            self._notify()

    async def _keepalive(self, sock: _Socket) -> None:
        interval = self.config.ping_interval_s or 30.0
        while True:
            await self.clock.sleep(interval)
            if self.clock.monotonic() - sock.last_rx > self.config.pong_timeout_s:
                log.warning("relay keepalive: nothing heard for %.0f s; closing", self.config.pong_timeout_s)
                await self._close_socket(sock, 1011, "keepalive timeout")
                return
            await sock.ws.ping()

    # --- requests ------------------------------------------------------------------------

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

    async def go_dormant(self, wake_at: float | None = None) -> bool:
        """Flip: ``going_idle`` -> ack -> close 1000 "dormant"; keep the supervisor armed.

        ``wake_at`` is Unix seconds of the next due job (sent as ``wakeAt``). Inbound that lands
        while waiting for the ack is handled live. Returns True once dormant. Returns False if
        not connected, or if the ack did not come within ``ack_timeout_s`` or ``abort_flip()``
        was called: then the socket is closed and re-handshaken at once (never half-flipped).
        """
        sock = self._sock
        if sock is None or self._m.state is not ConnState.CONNECTED:
            return False
        sock.flip_ack = asyncio.get_running_loop().create_future()
        self._fire(ConnEvent.FLIP_SENT, "going_idle sent")
        if not await self.send_frame(F.going_idle(wake_at)):
            return False
        try:
            await wait_with_timeout(self.clock, asyncio.shield(sock.flip_ack), self.config.ack_timeout_s)
        except TimeoutError:
            log.warning(
                "relay going_idle_ack not received within %.0f s: re-handshaking", self.config.ack_timeout_s
            )
            await self._rehandshake(sock, "going_idle_ack timeout")
            return False
        except (ConnectionError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and sock.planned is None:
                raise
            return False
        if sock.planned is not None or not self._flipping():
            return False
        # Inbound that arrived before the ack is persisted (and so seen by the owner, who may
        # abort the flip) before the socket closes.
        await sock.inbound.join()
        if sock.planned is not None or not self._flipping():
            return False
        # Outbound already in flight is still answered while the socket is open.
        if sock.pending:
            await asyncio.wait(list(sock.pending.values()))
        if not self._flipping():
            return False
        sock.planned = ConnEvent.FLIP_ACKED
        self._fire(ConnEvent.FLIP_ACKED, "going_idle_ack received")
        await self._close_socket(sock, 1000, "dormant")
        return True

    def _flipping(self) -> bool:
        """Still FLIPPING (re-read after every await: an abort or a close may have moved it)."""
        return self._m.state is ConnState.FLIPPING

    def abort_flip(self, reason: str) -> bool:
        """Stay live after ``going_idle`` was sent: close and re-handshake at once.

        Returns True if a flip was pending. PROTOCOL.md 5.6: never stay half-flipped.
        """
        sock = self._sock
        if sock is None or self._m.state is not ConnState.FLIPPING:
            return False
        if sock.planned is not None:
            return True
        log.info("relay flip aborted (%s): closing and re-handshaking", reason)
        sock.planned = ConnEvent.REDIAL
        self._spawn(self._rehandshake(sock, f"flip aborted: {reason}"), "flip abort")
        return True

    async def _rehandshake(self, sock: _Socket, reason: str) -> None:
        if sock.planned not in (None, ConnEvent.REDIAL):
            return
        sock.planned = ConnEvent.REDIAL
        if sock.flip_ack is not None and not sock.flip_ack.done():
            sock.flip_ack.set_exception(ConnectionError(reason))
            sock.flip_ack.exception()
        await self._close_socket(sock, 1000, "re-handshake")
