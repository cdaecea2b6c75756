"""The gateway's relay transport: one aiohttp WebSocket client driven by ``ConnectionMachine``.

Owns the supervisor (the only dialer), the handshake, backoff, ``go_dormant`` and ``wake``; what
happens on one socket (reader, dispatch, acks, keepalive, requests) is ``SocketIO`` in
``connection.py``. Time and jitter are injected (``Clock``, ``uniform``), so every timer here runs on
a ``FakeClock`` in tests. Model: websockets' ``asyncio/client.py`` reconnect loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp

from common.clock import Clock, SystemClock, wait_with_timeout
from common.errors import ProtocolError
from common.tasks import TaskSet
from relay.client.backoff import Backoff, Uniform
from relay.client.connection import (
    FrameHandler,
    InboundHandler,
    SocketIO,
    SocketState,
    TransportConfig,
)
from relay.client.machine import CloseAction, ConnectionMachine, ConnEvent, ConnState, decide_close
from relay.protocol import frames as F
from relay.protocol.framing import (
    LogLimiter,
    encode_frame,
)
from relay.protocol.sockets import ClientSocket, Dial
from relay.protocol.token import mint_token

__all__ = ["FrameHandler", "InboundHandler", "RelayTransport", "TransportConfig"]

log = logging.getLogger("relay.transport")


class RelayTransport(SocketIO):
    """Client side of PROTOCOL.md: dial, handshake, frames, flip, reconnect.

    Read-only status: ``state`` (``ConnState``), ``connected``, ``dial_attempts``,
    ``last_close_code``, ``descriptor`` (the first identity's), ``supports_wake_at``,
    ``backoff_delays`` (every backoff slept, seconds). Use ``wait_until(pred)`` to await a change.

    ``dial`` opens a socket (``relay.protocol.sockets.Dial``); the default dials with aiohttp.
    The simulator passes its in-memory link.
    """

    def __init__(
        self,
        config: TransportConfig,
        *,
        on_inbound: InboundHandler,
        on_interrupt: FrameHandler | None = None,
        clock: Clock | None = None,
        uniform: Uniform = random.uniform,
        dial: Dial | None = None,
    ) -> None:
        self.config = config
        self._dial = dial  # None: aiohttp, one ClientSession for the supervisor's life
        self._on_inbound = on_inbound
        self._on_interrupt = on_interrupt
        self.clock: Clock = clock or SystemClock()
        self._backoff = Backoff(uniform=uniform)
        self._m = ConnectionMachine()
        self._sock: SocketState | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._handler_tasks = TaskSet(log)
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
        await self._handler_tasks.aclose()

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
        async with self._dialer() as dial:
            while True:
                st = self._m.state
                if st is ConnState.DIALING:
                    await self._dial_once(dial)
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

    @contextlib.asynccontextmanager
    async def _dialer(self) -> AsyncIterator[Dial]:
        """The injected ``dial``, or aiohttp's ``ws_connect`` on a session kept open meanwhile."""
        if self._dial is not None:
            yield self._dial
            return
        async with aiohttp.ClientSession() as http:

            async def dial(url: str, headers: Mapping[str, str]) -> ClientSocket:
                return await http.ws_connect(
                    url,
                    headers=headers,
                    autoping=False,
                    max_msg_size=self.config.max_frame_bytes,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                    # An aiohttp timeout is a last resort for a hung TCP connect only.
                    receive_timeout=None,
                )

            yield dial

    def _headers(self) -> dict[str, str]:
        c = self.config
        if c.gateway_id and c.secret:
            return {"Authorization": f"Bearer {mint_token(c.gateway_id, c.secret, self.clock.wall())}"}
        return {}

    async def _dial_once(self, dial: Dial) -> None:
        self.dial_attempts += 1
        strike, self._strike_next = self._strike_next, False
        self._notify()
        try:
            ws = await dial(self.config.url, self._headers())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._closed(None, f"dial failed: {type(exc).__name__}: {exc}", strike, None)
            return
        self._fire(ConnEvent.UPGRADED)
        sock = SocketState(ws=ws, strike=strike, last_rx=self.clock.monotonic())
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

    async def _handshake(self, sock: SocketState, reader: asyncio.Task[None]) -> bool:
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

    def _closed(self, code: int | None, reason: str, strike: bool, sock: SocketState | None) -> None:
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

    # --- requests ------------------------------------------------------------------------

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

    async def _rehandshake(self, sock: SocketState, reason: str) -> None:
        if sock.planned not in (None, ConnEvent.REDIAL):
            return
        sock.planned = ConnEvent.REDIAL
        if sock.flip_ack is not None and not sock.flip_ack.done():
            sock.flip_ack.set_exception(ConnectionError(reason))
            sock.flip_ack.exception()
        await self._close_socket(sock, 1000, "re-handshake")
