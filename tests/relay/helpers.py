"""Shared helpers for connector tests: an in-process connector, a fake gateway HTTP side, a raw client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.connector.server import Connector


class Changes:
    """An awaitable 'something changed' for test-side state."""

    def __init__(self) -> None:
        self._evt = asyncio.Event()

    def notify(self) -> None:
        self._evt.set()

    async def until(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not pred():
                self._evt.clear()
                await self._evt.wait()

        await asyncio.wait_for(loop(), timeout)


class FakeGatewayHttp:
    """The sidecar's HTTP side as the connector sees it: /wake and /presence, recorded.

    ``wake_statuses`` are answered in turn (then 202). ``/presence`` streams until the client
    leaves; ``presence_open`` counts open streams, ``presence_closed`` finished ones.
    """

    def __init__(self) -> None:
        self.pokes: list[dict[str, str]] = []
        self.wake_statuses: list[int] = []
        self.presence_status = 200
        self.presence_open = 0
        self.presence_closed = 0
        self.presence_headers: list[dict[str, str]] = []
        self.changes = Changes()
        app = web.Application()
        app.router.add_get("/wake", self._wake)
        app.router.add_get("/presence", self._presence)
        self.server = TestServer(app, host="127.0.0.1", handler_cancellation=True)

    async def start(self) -> None:
        await self.server.start_server()

    async def close(self) -> None:
        await self.server.close()

    @property
    def wake_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/wake"

    async def _wake(self, request: web.Request) -> web.Response:
        self.pokes.append(dict(request.headers))
        self.changes.notify()
        status = self.wake_statuses.pop(0) if self.wake_statuses else 202
        return web.json_response({}, status=status)

    async def _presence(self, request: web.Request) -> web.StreamResponse:
        self.presence_headers.append(dict(request.headers))
        self.changes.notify()
        if self.presence_status != 200:
            return web.Response(status=self.presence_status)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.presence_open += 1
        self.changes.notify()
        try:
            await resp.write(b": live\n\n")
            await asyncio.Event().wait()  # until the client leaves (handler cancelled)
        finally:
            self.presence_open -= 1
            self.presence_closed += 1
            self.changes.notify()
        return resp


async def start_connector(db_path: str, **kwargs: Any) -> tuple[Connector, TestServer]:
    connector = await Connector.create(db_path, **kwargs)
    server = TestServer(connector.app, host="127.0.0.1")
    await server.start_server()
    return connector, server


class RawGateway:
    """A bare WS client that speaks the protocol by hand, to control acks exactly."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.session = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._buf = ""

    async def connect(
        self, wake_url: str | None = None, platform: str = "relay", bot_id: str = ""
    ) -> dict[str, Any]:
        self.ws = await self.session.ws_connect(self.url, headers=self.headers)
        hello: dict[str, Any] = {"type": "hello", "platform": platform, "botId": bot_id}
        if wake_url:
            hello["wakeUrl"] = wake_url
        await self.send(hello)
        return await self.recv()

    async def send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(frame) + "\n")

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.ws is not None
        while "\n" not in self._buf:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"socket ended: {msg.type} {msg.data} {msg.extra}")
            self._buf += msg.data
        line, self._buf = self._buf.split("\n", 1)
        return json.loads(line)

    async def recv_type(self, t: str, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            f = await self.recv(timeout)
            if f["type"] == t:
                return f

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.session.close()


async def post(url: str, body: Any, raw: bytes | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        data = raw if raw is not None else json.dumps(body).encode()
        async with s.post(url, data=data) as r:
            return r.status, await r.json()
