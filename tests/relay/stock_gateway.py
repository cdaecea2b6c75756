"""A test client that behaves like a stock hermes-agent gateway, written from the public
relay-connector contract (hermes-agent ``relay-connector-contract.md``) and nothing else.

What makes it "stock" (unlike our sidecar): it never sends ``wakeUrl`` in ``hello`` (it
registers its wake URL with ``POST /relay/provision``, contract 3.3), it re-dials a fixed
``redial_s`` (1 s) after **any** close, a 4409 included (an unexpected close to it), it serves
``/wake`` but no ``/presence``, and while dormant it re-dials only when poked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.protocol.token import mint_token
from tests.relay.helpers import Changes


class StockGateway:
    def __init__(
        self,
        base: str,
        gateway_id: str,
        secret: str,
        identities: list[tuple[str, str]],
        *,
        redial_s: float = 1.0,
    ) -> None:
        self.base = base.rstrip("/")
        self.gateway_id = gateway_id
        self.secret = secret
        self.identities = identities
        self.redial_s = redial_s
        self.http = aiohttp.ClientSession()
        self.events: list[dict[str, Any]] = []  # inbound events, de-duplicated by bufferId
        self.seen: set[str] = set()
        self.acked: list[str] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.descriptors: list[dict[str, Any]] = []
        self.closes: list[int | None] = []
        self.handshakes = 0
        self.connected = False
        self.dormant = False
        self.pokes = 0
        self.presence_requests = 0
        self.changes = Changes()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._idle_ack = asyncio.Event()
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        app = web.Application()
        app.router.add_get("/wake", self._wake)
        app.router.add_post("/wake", self._wake)
        app.router.add_get("/presence", self._no_presence)
        self.wake_server = TestServer(app, host="127.0.0.1")

    # --- the gateway's own HTTP side: /wake only ---------------------------------------------

    @property
    def wake_url(self) -> str:
        return f"http://127.0.0.1:{self.wake_server.port}/wake"

    async def _wake(self, request: web.Request) -> web.Response:
        self.pokes += 1
        self._woken.set()
        self.changes.notify()
        return web.json_response({}, status=202)

    async def _no_presence(self, request: web.Request) -> web.Response:
        """Stock hermes-agent has no ``/presence``: counted, then the 404 any route would get."""
        self.presence_requests += 1
        self.changes.notify()
        return web.Response(status=404)

    # --- contract calls ----------------------------------------------------------------------

    def token(self) -> str:
        return mint_token(self.gateway_id, self.secret, time.time())

    async def provision(self, wake_url: str | None = None) -> list[tuple[int, Any]]:
        """``POST /relay/provision`` once per fronted identity (contract 3.3 / 6.1)."""
        out = []
        for platform, bot_id in self.identities:
            body: dict[str, Any] = {
                "gatewayId": self.gateway_id,
                "platform": platform,
                "botId": bot_id,
                "gatewayEndpoint": "",
                "routeKeys": [],
            }
            if wake_url:
                body["wakeUrl"] = wake_url
            async with self.http.post(
                self.base + "/relay/provision",
                data=json.dumps(body),
                headers={"Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"},
            ) as r:
                out.append((r.status, await r.json()))
        return out

    async def start(self) -> None:
        await self.wake_server.start_server()
        self._task = asyncio.create_task(self._supervise())

    async def stop(self) -> None:
        self._stopped = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.http.close()
        await self.wake_server.close()

    async def outbound(
        self, rid: str, action: dict[str, Any], platform: str | None = None, bot_id: str | None = None
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "outbound", "requestId": rid, "action": action}
        if platform is not None:
            frame["platform"] = platform
        if bot_id is not None:
            frame["botId"] = bot_id
        await self._send(frame)
        await self.changes.until(lambda: rid in self.results)
        return self.results[rid]

    async def go_dormant(self) -> None:
        """``going_idle`` -> wait for the ack -> close; re-dial only when poked (contract 3.2)."""
        self._idle_ack.clear()
        self._woken.clear()
        self.dormant = True
        await self._send({"type": "going_idle"})
        await asyncio.wait_for(self._idle_ack.wait(), 10)
        assert self._ws is not None
        await self._ws.close()

    # --- the supervisor ----------------------------------------------------------------------

    async def _send(self, frame: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps(frame) + "\n")

    async def _supervise(self) -> None:
        while not self._stopped:
            if self.dormant:
                await self._woken.wait()
                self.dormant = False
            with contextlib.suppress(aiohttp.ClientError, OSError, ConnectionError):
                await self._run_once()
            if self._stopped:
                return
            if not self.dormant:
                await asyncio.sleep(self.redial_s)  # any close, 4409 included: re-dial in 1 s

    async def _run_once(self) -> None:
        url = self.base.replace("http://", "ws://") + "/relay"
        ws = await self.http.ws_connect(url, headers={"Authorization": f"Bearer {self.token()}"})
        self._ws = ws
        for platform, bot_id in self.identities:  # no wakeUrl: stock gateways never send it
            await ws.send_str(json.dumps({"type": "hello", "platform": platform, "botId": bot_id}) + "\n")
        buf = ""
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                buf += msg.data
                while "\n" in buf:
                    line, buf = buf.split("\n", 1)
                    if line.strip():
                        await self._on_frame(ws, json.loads(line))
        finally:
            self.connected = False
            self.closes.append(ws.close_code)
            self.changes.notify()

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> None:
        t = frame.get("type")
        if t == "descriptor":
            self.descriptors.append(frame["descriptor"])
            if not self.connected:
                self.connected = True
                self.handshakes += 1
        elif t == "inbound":
            bid = frame.get("bufferId")
            if bid is None or bid not in self.seen:
                self.events.append(frame["event"])
            if bid is not None:
                self.seen.add(bid)
                self.acked.append(bid)
                await ws.send_str(json.dumps({"type": "inbound_ack", "bufferId": bid}) + "\n")
        elif t == "outbound_result":
            self.results[frame["requestId"]] = frame["result"]
        elif t == "going_idle_ack":
            self._idle_ack.set()
        self.changes.notify()
