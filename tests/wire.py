"""Raw relay frames as a connector would put them on the wire, and a scripted connector that
sends them, for tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.protocol import frames as F


def inbound(bid: str, chat_id: Any, message_id: Any, text: str = "hi") -> str:
    """One inbound frame line, ASCII-escaped (so a lone surrogate travels as ``\\ud800``)."""
    return (
        json.dumps(
            {
                "type": "inbound",
                "bufferId": bid,
                "event": {
                    "text": text,
                    "message_type": "text",
                    "message_id": message_id,
                    "source": {"platform": "relay", "chat_id": chat_id, "user_id": "u1", "profile": None},
                },
            }
        )
        + "\n"
    )


class RawConnector:
    """A scripted connector (the far side of the boundary) on 127.0.0.1: answers hellos with a
    descriptor, then sends ``first_message`` (raw text) once; ``push(line)`` sends more at any
    time; acks every ``going_idle``; records every acked bufferId and answers every outbound
    with success (or ``outbound_result``)."""

    def __init__(self, first_message: str = "", **descriptor: Any) -> None:
        self.first_message = first_message
        self.ws: web.WebSocketResponse | None = None
        self.descriptor = descriptor
        self.acked: list[str] = []
        self.sends: list[dict[str, Any]] = []
        self.outbound_result: Callable[[dict[str, Any]], dict[str, Any]] = lambda _f: {
            "success": True,
            "message_id": "m",
        }
        self.changed = asyncio.Event()
        app = web.Application()
        app.router.add_get("/relay", self._ws)
        self.server = TestServer(app, host="127.0.0.1")

    async def wait_until(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not pred():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def push(self, line: str) -> None:
        """Send raw text once a gateway has handshaken."""
        await self.wait_until(lambda: self.ws is not None)
        assert self.ws is not None
        await self.ws.send_str(line)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            for line in msg.data.splitlines():
                frame = json.loads(line)
                if frame["type"] == "hello":
                    await ws.send_str(json.dumps(F.descriptor(frame["platform"], **self.descriptor)) + "\n")
                    self.ws = ws
                    if self.first_message:
                        await ws.send_str(self.first_message)
                        self.first_message = ""
                elif frame["type"] == "inbound_ack":
                    ids = frame.get("bufferIds") or [frame.get("bufferId")]
                    self.acked.extend(ids)
                elif frame["type"] == "going_idle":
                    await ws.send_str(json.dumps(F.going_idle_ack()) + "\n")
                elif frame["type"] == "outbound":
                    self.sends.append(frame)
                    await ws.send_str(
                        json.dumps(F.outbound_result(frame["requestId"], self.outbound_result(frame))) + "\n"
                    )
                self.changed.set()
        return ws
