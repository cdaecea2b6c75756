"""A whole loop on real processes for end-to-end tests: ``hermes-relay serve``, ``hermes-sidecar
run`` and a fake OpenAI-compatible provider, all on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.fake_llm import FakeLLM, provider_config
from tests.procs import Proc, free_port, relay_cmd


class Stack:
    """A relay process, a sidecar process (``--port``) and a fake provider on 127.0.0.1;
    ``home`` is the sidecar's ``HERMES_HOME``. ``relay_url`` lets a test put a link proxy
    between the two (default: the relay itself)."""

    def __init__(self, tmp: Path, llm: FakeLLM) -> None:
        self.tmp = tmp
        self.llm = llm
        self.home = tmp / "home"
        self.home.mkdir()
        self.relay_port, self.port = free_port(), free_port()
        self.relay: Proc | None = None
        self.sidecar: Proc | None = None
        self.relay_url: str | None = None
        self.extra_config = ""

    def write_config(
        self, idle_minutes: float = 0.05, cooldown_s: float = 1, ack_timeout_s: float = 10
    ) -> None:
        (self.home / "config.yaml").write_text(
            provider_config(self.llm.base_url)
            + f"gateway:\n  scale_to_zero: {{idle_timeout_minutes: {idle_minutes}, "
            f"cooldown_seconds: {cooldown_s}, ack_timeout_seconds: {ack_timeout_s}}}\n" + self.extra_config
        )

    @property
    def relay_base(self) -> str:
        return f"http://127.0.0.1:{self.relay_port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start_relay(self) -> None:
        self.relay = await Proc(
            relay_cmd(self.relay_port, str(self.tmp / "relay.db"), "--gateway", "gw=s3cret")
        ).start()
        await self.relay.wait_for_line("hermes-relay serving on")

    async def start_sidecar(self) -> Proc:
        env = {
            "HERMES_HOME": str(self.home),
            "HERMES_SCALE_TO_ZERO": "1",
            "GATEWAY_RELAY_URL": self.relay_url or self.relay_base,
            "GATEWAY_RELAY_ID": "gw",
            "GATEWAY_RELAY_SECRET": "s3cret",
            "GATEWAY_RELAY_WAKE_URL": f"{self.base}/wake",
        }
        self.sidecar = await Proc(
            [sys.executable, "-m", "gateway", "run", "--port", str(self.port)], env=env
        ).start()
        await self.sidecar.wait_for_line("relay handshaking -> connected")
        return self.sidecar

    async def ingress(self, text: str, message_id: Any, chat_id: str = "c1") -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{self.relay_base}/ingress/relay",
                json={"chat_id": chat_id, "user_id": "u1", "text": text, "message_id": message_id},
            ) as r,
        ):
            assert r.status == 202
            return await r.json()

    async def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
            return r.status, await r.json()

    async def replies(self, chat_id: str | None = "c1") -> list[str]:
        """The content of every ``send`` in the connector's outbox (one chat, or all)."""
        query = "" if chat_id is None else f"?chat_id={chat_id}"
        _, rows = await self.get(f"{self.relay_base}/outbox{query}")
        return [r["action"]["content"] for r in rows if r["action"]["op"] == "send"]

    async def close(self) -> None:
        for p in (self.sidecar, self.relay):
            if p is not None:
                await p.stop()
