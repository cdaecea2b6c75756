"""The simulated network between the sidecar's transport and the connector's session.

``Link.dial`` is the transport's ``Dial``: after a virtual connect latency it makes a socket pair
and hands the server end to the connector's ``SessionHandler.serve`` (in the connector's
process), or fails with ``ConnectionRefusedError`` while the connector is down. Each direction
delivers in order after a latency drawn from the schedule. Faults, chosen per frame by the
schedule: the socket dies at this frame boundary (this and every frame still in flight lost,
both ends see 1006), or a drawn number of loop turns after a frame arrived (while the receiver
is still handling it: its reader and workers are cancelled mid-step), a ``going_idle_ack`` is
lost or late, an ``inbound`` is delivered twice
(the copy later, so also out of order). ``sever(side)`` is a process dying: its sockets drop.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp

from common.clock import Clock
from relay.protocol.sockets import ClientSocket, ServerSocket

WS = aiohttp.WSMsgType


@dataclass
class LinkFaults:
    """Chances per frame (0..1) of each link fault."""

    drop: float = 0.0
    drop_mid: float = 0.0
    ack_lost: float = 0.0
    ack_late: float = 0.0
    duplicate: float = 0.0


def _label(data: str) -> str:
    """A short, deterministic name for a message: its frame types and buffer ids."""
    out = []
    for line in data.splitlines():
        try:
            frame = json.loads(line)
        except ValueError:
            out.append("?")
            continue
        if not isinstance(frame, dict):
            out.append("?")
            continue
        t = str(frame.get("type"))
        mid = ""
        if t == "inbound" and isinstance(frame.get("event"), dict):
            mid = str(frame["event"].get("message_id", ""))
        elif t == "outbound" and isinstance(frame.get("action"), dict):
            mid = str(frame["action"].get("content", ""))[:24]
        elif t == "inbound_ack":
            ids = frame.get("bufferIds") or [frame.get("bufferId")]
            mid = f"x{len(ids)}" if isinstance(ids, list) else ""
        out.append(f"{t}({mid})" if mid else t)
    return ",".join(out)


class End:
    """One end of a simulated socket; satisfies ``ClientSocket`` and ``ServerSocket``."""

    def __init__(self, pair: Pair, side: str) -> None:
        self._pair = pair
        self.side = side  # "sidecar" or "connector"
        self.peer: End
        self._inbox: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self._close_code: int | None = None
        self._closed = False

    @property
    def close_code(self) -> int | None:
        return self._close_code

    @property
    def closed(self) -> bool:
        return self._closed

    async def receive(self) -> aiohttp.WSMessage:
        if self._closed and self._inbox.empty():
            return aiohttp.WSMessage(WS.CLOSED, None, None)
        msg = await self._inbox.get()
        if msg.type is WS.CLOSE or msg.type is WS.CLOSED:
            self._closed = True
            if self._close_code is None:
                self._close_code = msg.data if msg.type is WS.CLOSE else 1006
        return msg

    def __aiter__(self) -> AsyncIterator[aiohttp.WSMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[aiohttp.WSMessage]:
        while True:
            msg = await self.receive()
            if msg.type is WS.PING:
                await self.pong(msg.data or b"")
                continue
            if msg.type is WS.PONG:
                continue
            if msg.type is not WS.TEXT:
                return
            yield msg

    async def send_str(self, data: str) -> None:
        if self._closed:
            raise ConnectionResetError("Cannot write to closing transport")
        self._pair.link.transmit(self, aiohttp.WSMessage(WS.TEXT, data, None))

    async def ping(self, message: bytes = b"") -> None:
        if self._closed:
            raise ConnectionResetError("Cannot write to closing transport")
        self._pair.link.transmit(self, aiohttp.WSMessage(WS.PING, message, None))

    async def pong(self, message: bytes = b"") -> None:
        if not self._closed:
            self._pair.link.transmit(self, aiohttp.WSMessage(WS.PONG, message, None))

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self._closed:
            return False
        self._closed = True
        self._close_code = code
        self._pair.link.transmit(self, aiohttp.WSMessage(WS.CLOSE, code, message.decode(errors="replace")))
        self._inbox.put_nowait(aiohttp.WSMessage(WS.CLOSED, None, None))
        return True

    def abort(self) -> None:
        """The socket died under this end (1006): pending reads end at once."""
        if not self._closed:
            self._closed = True
            self._close_code = 1006
        self._inbox.put_nowait(aiohttp.WSMessage(WS.CLOSED, None, None))


class Pair:
    """One socket: two ends and a queue per direction."""

    def __init__(self, link: Link, number: int) -> None:
        self.link = link
        self.number = number
        self.client = End(self, "sidecar")
        self.server = End(self, "connector")
        self.client.peer, self.server.peer = self.server, self.client
        self.dead = False
        self.queues: dict[str, deque[tuple[float, aiohttp.WSMessage]]] = {
            "sidecar": deque(),
            "connector": deque(),
        }
        self.wakeups: dict[str, asyncio.Event] = {"sidecar": asyncio.Event(), "connector": asyncio.Event()}


Serve = Callable[[ServerSocket, str | None], Awaitable[None]]


class Link:
    """The network. ``serve``/``connector_up`` are set by the world as processes come and go."""

    def __init__(
        self,
        clock: Clock,
        draw: Callable[[], float],
        faults: LinkFaults,
        trace: Callable[[str], None],
        count: Callable[[str], None],
        spawn: Callable[[Awaitable[None]], None],
        spawn_connector: Callable[[Awaitable[None]], None],
    ) -> None:
        self.clock = clock
        self._draw = draw
        self.faults = faults
        self._trace = trace
        self._count = count
        self._spawn = spawn
        self._spawn_connector = spawn_connector
        self.serve: Serve | None = None
        self._pairs: list[Pair] = []
        self._numbers = 0
        self.delivered: dict[str, int] = {"sidecar": 0, "connector": 0}
        self.on_delivered: Callable[[str, int], None] | None = None

    def _latency(self) -> float:
        return 0.001 + 0.049 * self._draw()

    async def dial(self, url: str, headers: Mapping[str, str]) -> ClientSocket:
        """The sidecar transport's ``Dial``."""
        await self.clock.sleep(self._latency())
        serve = self.serve
        if serve is None:
            self._trace("dial refused: connector down")
            raise ConnectionRefusedError(f"connect to {url} refused (connector down)")
        self._numbers += 1
        pair = Pair(self, self._numbers)
        self._pairs.append(pair)
        self._trace(f"socket {pair.number} open")
        for direction in ("sidecar", "connector"):
            self._spawn(self._deliver(pair, direction))
        self._spawn_connector(serve(pair.server, headers.get("Authorization")))
        return pair.client

    def transmit(self, sender: End, msg: aiohttp.WSMessage) -> None:
        """Queue ``msg`` from ``sender`` for its peer, applying this frame's faults."""
        pair = sender._pair
        if pair.dead:
            return
        to = sender.peer.side
        label = _label(msg.data) if msg.type is WS.TEXT else msg.type.name
        if msg.type is WS.TEXT and self.faults.drop and self._draw() < self.faults.drop:
            self._count("socket_drop")
            self._trace(f"socket {pair.number} dropped at {sender.side}->{to} {label}")
            self._kill(pair)
            return
        delay = self._latency()
        if msg.type is WS.TEXT and label == "going_idle_ack":
            if self.faults.ack_lost and self._draw() < self.faults.ack_lost:
                self._count("ack_lost")
                self._trace(f"socket {pair.number} going_idle_ack lost")
                return
            if self.faults.ack_late and self._draw() < self.faults.ack_late:
                self._count("ack_late")
                delay += 1.0 + 14.0 * self._draw()
        queue = pair.queues[to]
        at = max(self.clock.monotonic() + delay, queue[-1][0] if queue else 0.0)
        queue.append((at, msg))
        if msg.type is WS.TEXT and label.startswith("inbound(") and self.faults.duplicate:
            if self._draw() < self.faults.duplicate:
                self._count("duplicate")
                self._trace(f"socket {pair.number} duplicates {label}")
                queue.append((at + 0.5 + 5.0 * self._draw(), msg))
        pair.wakeups[to].set()

    async def _deliver(self, pair: Pair, to: str) -> None:
        end = pair.client if to == "sidecar" else pair.server
        queue = pair.queues[to]
        while not pair.dead:
            if not queue:
                pair.wakeups[to].clear()
                await pair.wakeups[to].wait()
                continue
            at, msg = queue[0]
            if at > self.clock.monotonic():
                await self.clock.sleep(at - self.clock.monotonic())
                continue
            queue.popleft()
            if pair.dead:
                return
            if msg.type is WS.TEXT:
                self.delivered[to] += 1
                self._trace(f"socket {pair.number} -> {to}: {_label(msg.data)}")
            elif msg.type is WS.CLOSE:
                self._trace(f"socket {pair.number} -> {to}: close {msg.data} {msg.extra}")
            if not end.closed:
                end._inbox.put_nowait(msg)
            if msg.type is WS.CLOSE:
                # The peer answers a close with a close: both ends are done.
                end._closed = True
                if end._close_code is None:
                    end._close_code = msg.data
                end._inbox.put_nowait(aiohttp.WSMessage(WS.CLOSED, None, None))
            if msg.type is WS.TEXT and self.faults.drop_mid and self._draw() < self.faults.drop_mid:
                self._spawn(self._kill_after(pair, int(self._draw() * 40)))
            if msg.type is WS.TEXT and self.on_delivered is not None:
                self.on_delivered(to, self.delivered[to])

    async def _kill_after(self, pair: Pair, turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)
        if not pair.dead:
            self._count("socket_drop_mid")
            self._trace(f"socket {pair.number} dropped {turns} loop turns after a frame")
            self._kill(pair)

    def _kill(self, pair: Pair) -> None:
        pair.dead = True
        for q in pair.queues.values():
            q.clear()
        for w in pair.wakeups.values():
            w.set()
        pair.client.abort()
        pair.server.abort()

    def sever(self, side: str) -> None:
        """A process on ``side`` died: every socket it held drops (its peer sees 1006)."""
        for pair in self._pairs:
            if not pair.dead and not (pair.client.closed and pair.server.closed):
                self._trace(f"socket {pair.number} dropped: {side} died")
                self._kill(pair)
        self._pairs = []
        if side == "connector":
            self.serve = None
