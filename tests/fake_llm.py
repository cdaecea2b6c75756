"""A fake OpenAI-compatible provider (the far side of the boundary) on 127.0.0.1.

``POST /v1/chat/completions`` answers ``"echo: <last user content>"`` with usage and cost.
``hold`` (an Event, when set to one) makes every request wait until it is set; ``requests``
records each request body and ``headers`` its headers; ``status`` forces an error status (with
``error_body``); ``usage`` is the usage object sent; ``reply_headers`` are sent back;
``answer_model`` names another model in the answer; ``delay`` (seconds) makes every answer slow
(a slow provider); ``max_in_flight`` is the most requests it held at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


class FakeLLM:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.hold: asyncio.Event | None = None
        self.status = 200
        self.error_body: Any = {"error": "boom"}  # the body of a forced error status
        self.usage: Any = {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.001}
        self.headers: list[dict[str, str]] = []  # each request's headers
        self.reply_headers: dict[str, str] = {}  # e.g. a hermes server's X-Hermes-Session-Id
        self.answer_model: str | None = None  # answer as this model (a silent substitution)
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.changed = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self.server = TestServer(app, host="127.0.0.1")

    async def start(self) -> FakeLLM:
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        await self.server.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/v1"

    async def wait_requests(self, n: int, timeout: float = 20.0) -> None:
        async def loop() -> None:
            while len(self.requests) < n:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.changed.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.delay:
                await asyncio.sleep(self.delay)  # the provider's own slowness, not a test wait
        finally:
            self.in_flight -= 1
        if self.status != 200:
            return web.json_response(self.error_body, status=self.status)
        content = body["messages"][-1]["content"]
        return web.json_response(
            {
                "model": self.answer_model or body["model"],
                "choices": [{"message": {"role": "assistant", "content": f"echo: {content}"}}],
                "usage": self.usage,
            },
            headers=self.reply_headers,
        )


def provider_config(base_url: str, model: str = "test-model") -> str:
    """A config.yaml body pointing the default profile at the fake provider."""
    return f"model: {{default: {model}, provider: fake}}\nproviders: {{fake: {{base_url: '{base_url}'}}}}\n"
