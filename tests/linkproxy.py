"""A lossy WebSocket link between a sidecar and a connector (the network, faked): every frame is
forwarded line by line, except those ``drop(direction, frame)`` says to lose."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

Drop = Callable[[str, dict[str, Any]], bool]
"""``drop("up" | "down", frame) -> lose it?``; "up" is sidecar -> connector."""


class LinkProxy:
    """Listens on ``/relay`` and dials ``upstream`` (the connector's ws URL) per socket, with the
    same headers (so the upgrade token passes through). ``seen`` records every frame type
    forwarded or dropped, in order, as ``(direction, type, dropped)``."""

    def __init__(self, upstream: str, drop: Drop = lambda _d, _f: False) -> None:
        self.upstream = upstream
        self.drop = drop
        self.seen: list[tuple[str, str, bool]] = []
        app = web.Application()
        app.router.add_get("/relay", self._ws)
        self.server = TestServer(app, host="127.0.0.1")

    async def start(self) -> LinkProxy:
        await self.server.start_server()
        return self

    async def close(self) -> None:
        await self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        down = web.WebSocketResponse(autoping=True)
        await down.prepare(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        async with aiohttp.ClientSession() as http:
            try:
                up = await http.ws_connect(self.upstream, headers=headers)
            except (aiohttp.ClientError, OSError):
                await down.close(code=1011, message=b"upstream unreachable")
                return down
            task = asyncio.create_task(self._pump(down, up, "up"))
            await self._pump(up, down, "down")
            task.cancel()
            await down.close()
            await up.close()
        return down

    async def _pump(self, src: Any, dst: Any, direction: str) -> None:
        async for msg in src:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            for line in msg.data.splitlines():
                if not line.strip():
                    continue
                frame = json.loads(line)
                lost = self.drop(direction, frame)
                self.seen.append((direction, str(frame.get("type")), lost))
                if not lost and not dst.closed:
                    await dst.send_str(line + "\n")
        if code := getattr(src, "close_code", None):
            if not dst.closed:
                await dst.close(code=code)
