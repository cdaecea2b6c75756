"""SPEC 8.3 Telegram on the connector: the webhook (secret, dedupe by update_id, bad bodies),
durable Bot API sends (retries on 5xx/429, a 400 fails with the description, restart,
idempotency keys) and the ingress bearer token."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.clock import FakeClock
from relay.connector.server import PRUNE_EVERY_S, Connector
from relay.protocol.token import mint_token
from tests.relay.helpers import RawGateway, start_connector
from tests.relay.telegram_fakes import FakeBotApi, update

GW, GW_SECRET = "gw1", "gateway-secret"
TOKEN, BOT = "111:AAA-token", "111"
HOOK_SECRET = "hook-secret"
OK_HEADERS = {"X-Telegram-Bot-Api-Secret-Token": HOOK_SECRET}


class TgRig:
    def __init__(self, tmp_path: Path, api: FakeBotApi) -> None:
        self.db = str(tmp_path / "relay.db")
        self.api = api
        self.clock = FakeClock(wall=time.time())
        self.connector: Connector | None = None
        self.server: Any = None
        self.raws: list[RawGateway] = []

    async def start(self, **kwargs: Any) -> Connector:
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("secrets", {GW: GW_SECRET})
        kwargs.setdefault("telegram", {GW: TOKEN})
        kwargs.setdefault("telegram_webhook_secret", HOOK_SECRET)
        kwargs.setdefault("telegram_api_base", self.api.base)
        self.connector, self.server = await start_connector(self.db, **kwargs)
        return self.connector

    async def stop(self) -> None:
        for raw in self.raws:
            await raw.close()
        self.raws.clear()
        if self.connector is not None:
            await self.server.close()
            await self.connector.close()
            self.connector = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def gateway(self) -> RawGateway:
        g = RawGateway(
            f"ws://127.0.0.1:{self.server.port}/relay",
            {"Authorization": "Bearer " + mint_token(GW, GW_SECRET, self.clock.wall())},
        )
        self.raws.append(g)
        await g.connect(platform="telegram", bot_id=BOT)
        return g

    async def hook(
        self, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None, gid: str = GW
    ) -> tuple[int, Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{self.base}/telegram/{gid}", data=data, headers=OK_HEADERS if headers is None else headers
            ) as r,
        ):
            return r.status, await r.json()

    async def buffer(self) -> list[dict[str, Any]]:
        assert self.connector is not None
        await self.connector.store.flush()
        return await self.connector.store.buffer_rows()

    async def sleeping(self, timeout: float = 10.0) -> list[float]:
        """Wait until the send worker sleeps on the fake clock; return the pending delays (the
        connector's daily prune, a day away, is not the worker's)."""
        deadline = time.monotonic() + timeout
        while not (pending := [d for d in self.clock.pending if d < PRUNE_EVERY_S / 2]):
            assert time.monotonic() < deadline, "the worker never slept"
            await self.clock.settle()
            await _tick()
        return pending


async def _tick() -> None:
    await asyncio.sleep(0.01)


@pytest.fixture
async def api() -> AsyncIterator[FakeBotApi]:
    fake = await FakeBotApi().start()
    yield fake
    await fake.close()


@pytest.fixture
async def rig(tmp_path: Path, api: FakeBotApi) -> AsyncIterator[TgRig]:
    r = TgRig(tmp_path, api)
    yield r
    await r.stop()


def outbound(rid: str, action: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "outbound",
        "requestId": rid,
        "platform": "telegram",
        "botId": BOT,
        "action": action,
    }
    if key is not None:
        frame["idempotencyKey"] = key
    return frame


async def result_of(g: RawGateway, rid: str) -> dict[str, Any]:
    while True:
        f = await g.recv_type("outbound_result")
        if f["requestId"] == rid:
            result: dict[str, Any] = f["result"]
            return result


# --- webhook --------------------------------------------------------------------------------


async def test_update_becomes_inbound_and_reply_goes_out_as_send_message(rig: TgRig, api: FakeBotApi) -> None:
    await rig.start()
    g = await rig.gateway()
    status, body = await rig.hook(update(1, "hi there", message_thread_id=5, chat_id=-100, message_id=33))
    assert status == 200
    assert body["delivered"] == "live"
    inbound = await g.recv_type("inbound")
    assert inbound["bufferId"] == body["buffer_id"]
    ev = inbound["event"]
    assert ev["text"] == "hi there"
    assert ev["message_type"] == "text"
    assert ev["message_id"] == "33"
    assert ev["source"]["platform"] == "telegram"
    assert ev["source"]["chat_id"] == "-100"
    assert ev["source"]["user_id"] == "7"
    assert ev["source"]["user_name"] == "ada"
    assert ev["source"]["thread_id"] == "5"
    assert ev["source"]["chat_type"] == "dm"

    action = {"op": "send", "chat_id": "-100", "content": "answer", "reply_to": "33", "thread_id": "5"}
    await g.send(outbound("r1", action))
    result = await result_of(g, "r1")
    assert result == {"success": True, "message_id": "501"}
    [(token, method, payload)] = api.delivered
    assert (token, method) == (TOKEN, "sendMessage")
    assert payload == {"chat_id": -100, "text": "answer", "reply_to_message_id": 33, "message_thread_id": 5}
    # GET /outbox still lists what the gateway sent
    async with aiohttp.ClientSession() as s, s.get(f"{rig.base}/outbox") as r:
        rows = await r.json()
    assert [row["action"]["content"] for row in rows] == ["answer"]
    assert rows[0]["platform"] == "telegram"


async def test_typing_and_edit_map_to_chat_action_and_edit_message_text(rig: TgRig, api: FakeBotApi) -> None:
    await rig.start()
    g = await rig.gateway()
    await g.send(outbound("t", {"op": "typing", "chat_id": "42"}))
    assert await result_of(g, "t") == {"success": True}
    await g.send(outbound("e", {"op": "edit", "chat_id": "42", "message_id": "9", "content": "fixed"}))
    assert await result_of(g, "e") == {"success": True, "message_id": "9"}
    assert api.of("sendChatAction") == [{"chat_id": 42, "action": "typing"}]
    assert api.of("editMessageText") == [{"chat_id": 42, "message_id": 9, "text": "fixed"}]


@pytest.mark.parametrize(
    "headers", [{}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}], ids=["no-header", "wrong-secret"]
)
async def test_webhook_without_the_secret_is_401_and_stores_nothing(
    rig: TgRig, headers: dict[str, str]
) -> None:
    await rig.start()
    status, body = await rig.hook(update(1), headers=headers)
    assert status == 401
    assert "X-Telegram-Bot-Api-Secret-Token" in body["error"]
    assert await rig.buffer() == []


async def test_webhook_unknown_gateway_bad_bodies_and_other_updates(rig: TgRig) -> None:
    await rig.start()
    assert (await rig.hook(update(1), gid="nobody"))[0] == 404
    for raw in (b"not json", b"[1]", b'{"update_id": "x"}', b'{"update_id": 1, "message": {"chat": 5}}'):
        status, body = await rig.hook(None, raw=raw)
        assert status == 400, raw
        assert "error" in body
    status, _ = await rig.hook(None, raw=b'{"update_id": 2, "message": ' + b"[" * 200 + b"]" * 200 + b"}")
    assert status == 400
    msg = b'{"update_id": 3, "message": {"message_id": 1, "chat": {"id": 1}, "from": {"id": 2}, "text": '
    status, body = await rig.hook(None, raw=msg + b'"\\ud800"}}')
    assert (status, "text" in body["error"]) == (400, True)  # a lone surrogate
    status, body = await rig.hook(None, raw=msg.replace(b'"id": 1', b'"id": NaN') + b'"x"}}')
    assert (status, "chat_id" in body["error"]) == (400, True)
    status, body = await rig.hook({"update_id": 4, "edited_message": {"text": "x"}})
    assert (status, body["ignored"]) == (200, "not a message update")
    assert await rig.buffer() == []


async def test_webhook_update_id_past_64_bits_is_400_not_503(rig: TgRig) -> None:
    """An ``update_id`` SQLite cannot hold was the store's OverflowError, answered 503 with an
    error log; it is a bad body, 400, nothing stored (found by ``python -m sim --fuzz``, #13)."""
    await rig.start()
    msg = b', "message": {"message_id": 1, "chat": {"id": 1}, "from": {"id": 2}, "text": "hi"}}'
    for update_id in (b"9223372036854775808", b"-9223372036854775809", b"1" + b"0" * 30):
        status, body = await rig.hook(None, raw=b'{"update_id": ' + update_id + msg)
        assert (status, "update_id" in body["error"]) == (400, True), update_id
    assert await rig.buffer() == []
    status, _ = await rig.hook(None, raw=b'{"update_id": 9223372036854775807' + msg)
    assert status == 200


async def test_media_messages_get_their_type_and_caption(rig: TgRig) -> None:
    await rig.start()
    g = await rig.gateway()
    await rig.hook(update(1, None, photo=[{"file_id": "f"}], caption="look"))
    await rig.hook(update(2, None, voice={"file_id": "v"}))
    await rig.hook(update(3, None, location={"latitude": 1}))
    events = [(await g.recv_type("inbound"))["event"] for _ in range(3)]
    assert [e["message_type"] for e in events] == ["photo", "voice", "other"]
    assert events[0]["caption"] == "look"


async def test_repeated_update_id_is_stored_once_also_after_a_restart(rig: TgRig) -> None:
    await rig.start()
    first = await rig.hook(update(77))
    second = await rig.hook(update(77))
    assert first[0] == second[0] == 200
    assert second[1] == {"ok": True, "duplicate": True}
    assert len(await rig.buffer()) == 1
    await rig.stop()
    await rig.start()
    again = await rig.hook(update(77))
    assert again == (200, {"ok": True, "duplicate": True})
    assert len(await rig.buffer()) == 1
    # buffered while no gateway is connected: replayed on the handshake
    g = await rig.gateway()
    assert (await g.recv_type("inbound"))["bufferId"] == first[1]["buffer_id"]


async def test_bot_is_routed_at_start_without_a_hello(rig: TgRig) -> None:
    connector = await rig.start()
    assert connector.routes[("telegram", BOT)] == GW
    status, body = await rig.hook(update(1))
    assert (status, body["delivered"]) == (200, "buffered")


# --- durable sends --------------------------------------------------------------------------


async def test_500_then_429_are_retried_to_exactly_one_delivery(rig: TgRig, api: FakeBotApi) -> None:
    await rig.start()
    g = await rig.gateway()
    api.fail_next("sendMessage", 500, "Internal Server Error")
    api.fail_next("sendMessage", 429, "Too Many Requests: retry after 7", retry_after=7)
    await g.send(outbound("r", {"op": "send", "chat_id": "42", "content": "once"}))
    assert await rig.sleeping() == [1.0]
    await rig.clock.advance(1.0)
    assert await rig.sleeping() == [7.0]
    await rig.clock.advance(7.0)
    result = await result_of(g, "r")
    assert result == {"success": True, "message_id": "501"}
    assert len(api.calls) == 3
    assert [j["text"] for j in api.of("sendMessage")] == ["once"]


async def test_network_errors_back_off_1_2_4(rig: TgRig, api: FakeBotApi, tmp_path: Path) -> None:
    await rig.start(telegram_api_base="http://127.0.0.1:9")  # nothing listens: connection refused
    g = await rig.gateway()
    await g.send(outbound("r", {"op": "send", "chat_id": "42", "content": "x"}))
    delays = []
    for _ in range(3):
        [d] = await rig.sleeping()
        delays.append(d)
        assert rig.connector is not None
        rig.connector.platform_outbox.api_base = api.base if len(delays) == 3 else "http://127.0.0.1:9"
        await rig.clock.advance(d)
    assert delays == [1.0, 2.0, 4.0]
    assert (await result_of(g, "r"))["success"] is True


async def test_400_fails_the_send_with_telegrams_description(rig: TgRig, api: FakeBotApi) -> None:
    await rig.start()
    g = await rig.gateway()
    api.fail_next("sendMessage", 400, "Bad Request: chat not found")
    await g.send(outbound("r", {"op": "send", "chat_id": "404", "content": "x"}))
    assert await result_of(g, "r") == {"success": False, "error": "Bad Request: chat not found"}
    assert api.delivered == []
    # the queue moves on
    await g.send(outbound("r2", {"op": "send", "chat_id": "42", "content": "y"}))
    assert (await result_of(g, "r2"))["success"] is True


async def test_give_up_after_24_hours(rig: TgRig, api: FakeBotApi) -> None:
    await rig.start()
    g = await rig.gateway()
    api.always["sendMessage"] = (502, {"ok": False, "description": "Bad Gateway"})
    await g.send(outbound("r", {"op": "send", "chat_id": "42", "content": "x"}))
    await rig.sleeping()
    await rig.clock.advance(25 * 3600)
    result = await result_of(g, "r")
    assert result["success"] is False
    assert "24 h" in result["error"]
    assert "Bad Gateway" in result["error"]


async def test_queued_sends_survive_a_restart(rig: TgRig, api: FakeBotApi) -> None:
    await rig.start()
    g = await rig.gateway()
    api.always["sendMessage"] = (500, {"ok": False, "description": "down"})
    await g.send(outbound("r", {"op": "send", "chat_id": "42", "content": "durable"}))
    await rig.sleeping()
    await rig.stop()
    del api.always["sendMessage"]
    connector = await rig.start()
    await api.wait_until(lambda: len(api.delivered) == 1)
    assert [j["text"] for j in api.of("sendMessage")] == ["durable"]
    await connector.store.flush()
    [send] = await connector.store.platform_sends()
    assert send.done
    assert send.result == {"success": True, "message_id": "501"}
    assert send.attempts >= 1


async def test_idempotency_key_resend_while_queued_waits_for_the_same_result(
    rig: TgRig, api: FakeBotApi
) -> None:
    await rig.start()
    g = await rig.gateway()
    api.fail_next("sendMessage", 500, "down")
    action = {"op": "send", "chat_id": "42", "content": "keyed"}
    await g.send(outbound("a", action, key="k1"))
    await rig.sleeping()
    await g.send(outbound("b", action, key="k1"))  # resend while the first is queued
    await rig.clock.advance(1.0)
    results = {}
    for _ in range(2):
        f = await g.recv_type("outbound_result")
        results[f["requestId"]] = f["result"]
    assert results["a"] == {"success": True, "message_id": "501"}
    assert results["b"] == {"success": True, "message_id": "501", "duplicate": True}
    assert len(api.delivered) == 1
    # later resends get the stored result
    await g.send(outbound("c", action, key="k1"))
    assert await result_of(g, "c") == {"success": True, "message_id": "501", "duplicate": True}
    assert len(api.delivered) == 1


async def test_idempotency_key_of_a_queued_send_is_honoured_after_a_restart(
    rig: TgRig, api: FakeBotApi
) -> None:
    await rig.start()
    g = await rig.gateway()
    api.always["sendMessage"] = (500, {"ok": False, "description": "down"})
    action = {"op": "send", "chat_id": "42", "content": "keyed"}
    await g.send(outbound("a", action, key="k2"))
    await rig.sleeping()
    await rig.stop()
    connector = await rig.start()
    g2 = await rig.gateway()
    await g2.send(outbound("b", action, key="k2"))
    await rig.sleeping()
    del api.always["sendMessage"]
    await rig.clock.advance(60.0)
    got = {}
    for _ in range(2):
        f = await g2.recv_type("outbound_result")
        got[f["requestId"]] = f["result"]
    assert got["b"] == {"success": True, "message_id": "501", "duplicate": True}
    assert got["a"] == {"success": True, "message_id": "501"}
    assert len(api.delivered) == 1
    assert len(await connector.store.platform_sends()) == 1


async def test_an_unannounced_bot_is_declined_not_sent(rig: TgRig, api: FakeBotApi) -> None:
    """Issue 19: a bot id the gateway never announced is an egress decline (it used to be
    recorded with success under the wrong identity)."""
    await rig.start()
    g = await rig.gateway()
    frame = outbound("r", {"op": "send", "chat_id": "42", "content": "x"})
    frame["botId"] = "999"  # no bot configured for it, never said in hello
    await g.send(frame)
    result = await result_of(g, "r")
    assert result["success"] is False
    assert result["code"] == "egress_declined"
    assert api.calls == []


# --- ingress token --------------------------------------------------------------------------


async def test_ingress_token_guards_ingress_and_outbox(rig: TgRig) -> None:
    await rig.start(ingress_token="tok")
    await rig.gateway()
    msg = {"chat_id": 1, "user_id": 2, "text": "x", "message_id": 3}
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic tok"}):
            async with s.post(f"{rig.base}/ingress/telegram/{BOT}", json=msg, headers=headers) as r:
                assert r.status == 401
                assert "error" in await r.json()
            async with s.get(f"{rig.base}/outbox", headers=headers) as r:
                assert r.status == 401
        assert await rig.buffer() == []
        good = {"Authorization": "Bearer tok"}
        async with s.post(f"{rig.base}/ingress/telegram/{BOT}", json=msg, headers=good) as r:
            assert r.status == 202
        async with s.get(f"{rig.base}/outbox", headers=good) as r:
            assert r.status == 200
    assert len(await rig.buffer()) == 1
