"""A scriptable in-process connector for transport tests (the far side of the boundary).

Each dial takes the next behaviour from ``script`` (then ``default``):
``"accept"`` (descriptor per hello), ``"refuse"`` (HTTP 503, no upgrade), ``"silent"`` (upgrade
but never answer), ``("close", code, reason)`` right after the upgrade, or
``("close_after_hello", code, reason)`` after the descriptor.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.protocol import frames as F


class FakeConnector:
    def __init__(self) -> None:
        self.default: Any = "accept"
        self.script: list[Any] = []
        self.dials = 0
        self.ack_going_idle = True
        self.answer_outbound = False  # True: every outbound gets a success result
        self.frames: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.ws: web.WebSocketResponse | None = None
        self._changed = asyncio.Event()
        self.descriptor_overrides: dict[str, Any] = {}
        self.autoping = True  # False: a peer that never answers pings
        app = web.Application()
        app.router.add_get("/relay", self._handler)
        self.server = TestServer(app, host="127.0.0.1")

    async def __aenter__(self) -> FakeConnector:
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close(code=1001, message=b"test over")
        await self.server.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/relay"

    async def wait_until(self, pred: Callable[[], bool]) -> None:
        while not pred():
            self._changed.clear()
            await self._changed.wait()

    def of_type(self, t: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == t]

    async def send(self, frame: dict[str, Any] | str) -> None:
        assert self.ws is not None
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame) + "\n")

    async def close(self, code: int, reason: str) -> None:
        assert self.ws is not None
        await self.ws.close(code=code, message=reason.encode())

    async def _handler(self, request: web.Request) -> web.StreamResponse:
        self.dials += 1
        self.headers.append(dict(request.headers))
        behaviour = self.script.pop(0) if self.script else self.default
        self._changed.set()
        if behaviour == "refuse":
            return web.Response(status=503)
        ws = web.WebSocketResponse(max_msg_size=0, autoping=self.autoping)
        await ws.prepare(request)
        self.ws = ws
        self._changed.set()
        if isinstance(behaviour, tuple) and behaviour[0] == "close":
            await ws.close(code=behaviour[1], message=behaviour[2].encode())
            return ws
        async for msg in ws:
            if msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                continue
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            for line in msg.data.split("\n"):
                if not line.strip():
                    continue
                frame = json.loads(line)
                self.frames.append(frame)
                self._changed.set()
                if frame["type"] == "hello" and behaviour != "silent":
                    await ws.send_str(
                        json.dumps(F.descriptor(frame["platform"], **self.descriptor_overrides)) + "\n"
                    )
                    if isinstance(behaviour, tuple) and behaviour[0] == "close_after_hello":
                        await ws.close(code=behaviour[1], message=behaviour[2].encode())
                elif frame["type"] == "outbound" and self.answer_outbound:
                    await ws.send_str(
                        json.dumps(
                            F.outbound_result(frame["requestId"], {"success": True, "message_id": "m"})
                        )
                        + "\n"
                    )
                elif frame["type"] == "going_idle" and self.ack_going_idle:
                    await ws.send_str(json.dumps(F.going_idle_ack()) + "\n")
        self._changed.set()
        return ws
