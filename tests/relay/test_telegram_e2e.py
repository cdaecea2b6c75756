"""SPEC 8.3 end to end on real processes: a Telegram Update posted to the connector's webhook is
answered by ``sendMessage`` in that chat (relay + sidecar + fake provider + fake Bot API)."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
import pytest

from tests.fake_llm import FakeLLM
from tests.procs import Proc
from tests.relay.telegram_fakes import FakeBotApi, update
from tests.stack import Stack


@pytest.mark.parametrize("dormant", [False, True], ids=["live", "after-a-dormant-flip"])
async def test_webhook_update_is_answered_with_send_message(tmp_path: Path, dormant: bool) -> None:
    """An Update posted to the webhook is answered by one sendMessage in that chat, also when
    the sidecar had gone dormant (the update is buffered, the sidecar poked and woken)."""
    llm = await FakeLLM().start()
    api = await FakeBotApi().start()
    st = Stack(tmp_path, llm)
    try:
        st.extra_config = '  relay_identities: [{platform: telegram, bot_id: "111"}]\n'
        st.write_config(idle_minutes=0.05 if dormant else 10)
        st.relay = await Proc(
            [
                *_relay_args(st),
                "--telegram",
                "gw=111:tok",
                "--telegram-webhook-secret",
                "hooksecret",
            ],
            env={"TELEGRAM_API_BASE_URL": api.base},
        ).start()
        await st.relay.wait_for_line("hermes-relay serving on")
        sc = await st.start_sidecar()
        if dormant:
            await sc.wait_for_line("watcher draining -> dormant")
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{st.relay_base}/telegram/gw",
                json=update(900, "what is up?", chat_id=4242, message_id=12),
                headers={"X-Telegram-Bot-Api-Secret-Token": "hooksecret"},
            ) as r,
        ):
            assert r.status == 200
        await api.wait_until(lambda: bool(api.of("sendMessage")), timeout=30)
        [sent] = api.of("sendMessage")
        assert str(sent["chat_id"]) == "4242"
        assert sent["text"] == "echo: what is up?"
        if dormant:
            assert any("woken by poke" in line for line in sc.lines)
        assert api.delivered[0][0] == "111:tok"
    finally:
        await st.close()
        await api.close()
        await llm.close()


def _relay_args(st: Stack) -> list[str]:
    return [
        sys.executable,
        "-m",
        "relay",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(st.relay_port),
        "--db",
        str(st.tmp / "relay.db"),
        "--gateway",
        "gw=s3cret",
    ]
