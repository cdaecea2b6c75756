"""SPEC 8.3 end to end on real processes: a Telegram Update posted to the connector's webhook is
answered by ``sendMessage`` in that chat (relay + sidecar + fake provider + fake Bot API)."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp

from tests.fake_llm import FakeLLM
from tests.procs import Proc
from tests.relay.telegram_fakes import FakeBotApi, update
from tests.stack import Stack


async def test_webhook_update_is_answered_with_send_message(tmp_path: Path) -> None:
    llm = await FakeLLM().start()
    api = await FakeBotApi().start()
    st = Stack(tmp_path, llm)
    try:
        st.extra_config = '  relay_identities: [{platform: telegram, bot_id: "111"}]\n'
        st.write_config(idle_minutes=10)
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
        await st.start_sidecar()
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
        assert sent["chat_id"] == 4242
        assert sent["text"]
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
