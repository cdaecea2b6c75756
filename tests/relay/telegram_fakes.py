"""A fake Telegram Bot API (aiohttp TestServer on 127.0.0.1), scriptable per method.

``script[method]`` holds ``(status, body)`` answers used in turn before the default one; every
call is recorded in ``calls`` as ``(token, method, json)``; ``delivered`` lists the calls that
were answered ``ok``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


class FakeBotApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.delivered: list[tuple[str, str, dict[str, Any]]] = []
        self.script: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.always: dict[str, tuple[int, dict[str, Any]]] = {}  # a method that always answers this
        self._ids = itertools.count(501)
        self._changed = asyncio.Event()
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def start(self) -> FakeBotApi:
        await self.server.start_server()
        return self

    async def close(self) -> None:
        await self.server.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def fail_next(self, method: str, status: int, description: str, **params: Any) -> None:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if params:
            body["parameters"] = params
        self.script.setdefault(method, []).append((status, body))

    def of(self, method: str) -> list[dict[str, Any]]:
        return [j for _, m, j in self.delivered if m == method]

    async def wait_until(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not pred():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def _handle(self, request: web.Request) -> web.Response:
        token, method = request.match_info["token"], request.match_info["method"]
        body = await request.json()
        self.calls.append((token, method, body))
        self._changed.set()
        queued = self.script.get(method)
        if queued:
            status, answer = queued.pop(0)
            return web.json_response(answer, status=status)
        if method in self.always:
            status, answer = self.always[method]
            return web.json_response(answer, status=status)
        self.delivered.append((token, method, body))
        result: Any = True
        if method == "sendMessage":
            result = {
                "message_id": next(self._ids),
                "date": 0,
                "chat": {"id": body["chat_id"], "type": "private"},
                "text": body["text"],
            }
        elif method == "editMessageText":
            result = {"message_id": body["message_id"], "date": 0, "chat": {"id": body["chat_id"]}}
        return web.json_response({"ok": True, "result": result})


def update(
    update_id: int,
    text: str | None = "hello",
    *,
    chat_id: int = 42,
    user_id: int = 7,
    message_id: int = 10,
    **extra: Any,
) -> dict[str, Any]:
    """A webhook ``message`` Update."""
    msg: dict[str, Any] = {
        "message_id": message_id,
        "date": 0,
        "chat": {"id": chat_id, "type": "private"},
        "from": {"id": user_id, "is_bot": False, "first_name": "Ada", "username": "ada"},
    }
    if text is not None:
        msg["text"] = text
    msg.update(extra)
    return {"update_id": update_id, "message": msg}
