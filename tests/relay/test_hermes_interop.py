"""Issue 19: the reference connector serves stock hermes-agent gateways (PROTOCOL.md 7.5).

The client is ``StockGateway`` (tests/relay/stock_gateway.py), written from the public
relay-connector contract; sockets are real (127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from relay.connector.server import Connector
from relay.protocol.token import mint_token
from tests.relay.helpers import start_connector
from tests.relay.stock_gateway import StockGateway
from tests.relay.telegram_fakes import FakeBotApi, update

GW, SECRET = "gw1", "s3cret"
TG_TOKEN = "123456:ABC"
TG_BOT = "123456"
HOOK_SECRET = "hook"


class Rig:
    def __init__(self, tmp: str) -> None:
        self.db = f"{tmp}/relay.db"
        self.connector: Connector | None = None
        self.server: Any = None
        self.gateways: list[StockGateway] = []
        self.api: FakeBotApi | None = None

    async def start(self, telegram: bool = False, **kw: Any) -> Connector:
        if telegram:
            self.api = await FakeBotApi().start()
            kw.update(
                telegram={GW: TG_TOKEN},
                telegram_webhook_secret=HOOK_SECRET,
                telegram_api_base=self.api.base,
            )
        self.connector, self.server = await start_connector(self.db, secrets={GW: SECRET}, **kw)
        return self.connector

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def gateway(self, identities: list[tuple[str, str]] | None = None) -> StockGateway:
        g = StockGateway(self.base, GW, SECRET, identities or [("relay", "")])
        self.gateways.append(g)
        await g.wake_server.start_server()
        return g

    async def stop_connector(self) -> None:
        if self.server is not None:
            await self.server.close()
        if self.connector is not None:
            await self.connector.close()
        self.connector = self.server = None

    async def close(self) -> None:
        for g in self.gateways:
            await g.stop()
        await self.stop_connector()
        if self.api is not None:
            await self.api.close()

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with s.post(self.base + path, data=data, headers=headers or {}) as r:
                try:
                    return r.status, await r.json()
                except aiohttp.ContentTypeError:
                    return r.status, await r.text()

    async def outbox(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.get(self.base + "/outbox") as r:
            rows: list[dict[str, Any]] = await r.json()
            return rows


@pytest.fixture
async def rig(tmp_path: Any) -> AsyncIterator[Rig]:
    r = Rig(str(tmp_path))
    yield r
    await r.close()


def bearer(gid: str = GW, secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(gid, secret, time.time())}


async def start_gateway(g: StockGateway) -> None:
    g._task = asyncio.create_task(g._supervise())
    await g.changes.until(lambda: g.connected)


# --- POST /relay/provision -----------------------------------------------------------------


async def test_provision_registers_identity_and_wake_url_and_survives_restart(rig: Rig) -> None:
    await rig.start()
    g = await rig.gateway([("relay", ""), ("slack", "T1")])
    answers = await g.provision(g.wake_url)
    assert [s for s, _ in answers] == [200, 200]
    body = answers[1][1]
    assert body["gatewayId"] == GW
    assert body["platform"] == "slack"
    assert body["botId"] == "T1"
    assert body["wakeUrl"] == g.wake_url
    assert body["routeKeys"] == []
    assert "secret" not in body
    assert "deliveryKey" not in body
    await rig.stop_connector()
    c = await rig.start()
    assert c.wake_urls[GW] == g.wake_url
    assert c.routes[("slack", "T1")] == GW
    assert c.routes[("relay", "")] == GW


async def test_provision_refuses_bad_auth_and_bad_bodies(rig: Rig) -> None:
    await rig.start()
    ok = {"platform": "relay", "botId": "", "wakeUrl": "http://127.0.0.1:1/wake"}
    for headers in ({}, {"Authorization": "Bearer nope"}, bearer(secret="wrong")):
        status, body = await rig.post("/relay/provision", ok, headers)
        assert status == 401
        assert "unauthorized" in body["error"]
    cases = [
        ({"botId": ""}, "'platform'"),
        ({"platform": 3}, "'platform'"),
        ({**ok, "botId": 5}, "'botId'"),
        ({**ok, "wakeUrl": "ftp://x/wake"}, "'wakeUrl'"),
        ({**ok, "wakeUrl": 7}, "'wakeUrl'"),
        ({**ok, "routeKeys": "a,b"}, "'routeKeys'"),
        ({**ok, "instanceId": []}, "'instanceId'"),
    ]
    for bad, field in cases:
        status, body = await rig.post("/relay/provision", bad, bearer())
        assert (status, field in body["error"]) == (400, True), (bad, body)
    status, body = await rig.post("/relay/provision", b"[1]", bearer())
    assert status == 400
    assert "JSON object" in body["error"]
    status, body = await rig.post("/relay/provision", b"{nope", bearer())
    assert status == 400
    status, body = await rig.post("/relay/provision", {**ok, "gatewayId": "other"}, bearer())
    assert status == 403
    assert "gatewayId" in body["error"]
    assert rig.connector is not None
    assert GW not in rig.connector.wake_urls


async def test_policy_is_accepted_and_media_is_not_served(rig: Rig) -> None:
    await rig.start()
    policy = {
        "platform": "discord",
        "requireAddress": True,
        "freeResponseScopes": ["c1"],
        "allowOtherBots": False,
    }
    assert (await rig.post("/relay/policy", policy, {}))[0] == 401
    status, body = await rig.post("/relay/policy", policy, bearer())
    assert (status, body) == (200, {"ok": True, "enforced": False})
    status, body = await rig.post("/relay/policy", {**policy, "requireAddress": "yes"}, bearer())
    assert status == 400
    assert "'requireAddress'" in body["error"]
    assert (await rig.post("/relay/media", b"bytes", bearer()))[0] == 404


# --- sleep / wake / replay with a stock gateway --------------------------------------------


async def test_stock_gateway_is_poked_while_dormant_and_replays_in_order(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    c = await rig.start()
    g = await rig.gateway()
    assert [s for s, _ in await g.provision(g.wake_url)] == [200]
    await start_gateway(g)
    assert "wakeUrl" not in json.dumps(g.descriptors)  # (hello carried none either)
    # Presence toward a host without /presence: one 404, then never again for this gateway.
    await g.changes.until(lambda: g.presence_requests == 1)
    await asyncio.sleep(0.1)
    assert GW in c.presence_off
    msg = {"chat_id": "42", "user_id": "u1", "message_id": "1", "text": "one"}
    assert (await rig.post("/ingress/relay", msg))[1]["delivered"] == "live"
    await g.changes.until(lambda: len(g.events) == 1)
    await g.go_dormant()
    for i, text in enumerate(["two", "three", "four"], start=2):
        status, out = await rig.post("/ingress/relay", {**msg, "message_id": str(i), "text": text})
        assert status == 202
        if i == 2:  # the first one after the flip is buffered (the poke may be answered fast)
            assert out["delivered"] == "buffered"
    await g.changes.until(lambda: g.pokes >= 1)  # the wake URL came from provision only
    await g.changes.until(lambda: len(g.events) == 4 and g.handshakes == 2)
    assert [e["text"] for e in g.events] == ["one", "two", "three", "four"]
    await asyncio.sleep(0.2)
    assert await c.store.unacked_count(GW) == 0
    assert g.presence_requests == 1  # the 404 stopped presence across the re-handshake
    assert sum("has no /presence" in r.message for r in caplog.records) == 1
    # A new provision re-arms presence (one more try, one more 404).
    await g.provision(g.wake_url)
    await g.changes.until(lambda: g.presence_requests == 2)


async def test_two_stock_gateways_on_one_id_settle_with_one_connected(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    c = await rig.start()
    a, b = await rig.gateway(), await rig.gateway()
    await start_gateway(a)
    started = time.monotonic()
    b._task = asyncio.create_task(b._supervise())
    await b.changes.until(lambda: b.handshakes == 1)  # b replaces a once ("newest wins")
    await asyncio.sleep(4.0)  # a re-dials every 1 s: refused with 4409 while b is healthy
    counts = (a.handshakes, b.handshakes)
    await asyncio.sleep(3.0)
    assert (a.handshakes, b.handshakes) == counts == (1, 1)
    assert (a.connected, b.connected) == (False, True)
    assert time.monotonic() - started < 15.0
    assert a.closes[0] == 4409
    assert a.closes.count(4409) >= 4
    assert c.replacements_total[GW] >= 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "4409" in r.message]
    assert len(warnings) == 1
    assert GW in warnings[0].getMessage()
    # The winner goes away: the next re-dial of the other one takes over.
    await b.stop()
    await a.changes.until(lambda: a.connected, timeout=5.0)


# --- egress: only announced identities -----------------------------------------------------


async def test_unannounced_identity_is_declined_and_nothing_is_recorded(rig: Rig) -> None:
    await rig.start(telegram=True)
    g = await rig.gateway([("relay", "")])  # the Telegram bot is announced by --telegram
    await start_gateway(g)
    send = {"op": "send", "chat_id": "42", "content": "hi"}
    declined = await g.outbound("r1", send, platform="slack")
    assert declined["success"] is False
    assert declined["code"] == "egress_declined"
    assert declined["error"].startswith("egress declined: ")
    assert "slack" in declined["error"]
    other_bot = await g.outbound("r2", send, platform="relay", bot_id="B9")
    assert other_bot["code"] == "egress_declined"
    assert await rig.outbox() == []
    # Our sidecar's reply shapes keep working: the inbound's platform + botId, a cron delivery's
    # platform without botId, and no platform at all (the default identity).
    assert (await g.outbound("r3", send, platform="relay", bot_id=""))["success"] is True
    assert (await g.outbound("r4", send))["success"] is True
    tg = await g.outbound("r5", send, platform="telegram")
    assert tg["success"] is True
    assert tg["message_id"] == "501"
    assert rig.api is not None
    assert rig.api.of("sendMessage")[0]["chat_id"] == 42
    assert [r["bot_id"] for r in await rig.outbox()] == ["", "", TG_BOT]


# --- source fields and ops -----------------------------------------------------------------

SOURCE = {
    "scope_id": "S1",
    "guild_id": "G1",
    "thread_id": "T1",
    "parent_chat_id": "P1",
    "chat_name": "Team",
    "chat_topic": "ops",
    "chat_type": "thread",
    "user_name": "ann",
    "user_id_alt": "uuid-1",
    "chat_id_alt": "alt-1",
    "profile": "work",
}


async def test_every_source_field_round_trips_from_ingress(rig: Rig) -> None:
    await rig.start()
    g = await rig.gateway([("discord", "D1")])
    await g.provision()
    await start_gateway(g)
    body = {
        "chat_id": "c1",
        "user_id": "u1",
        "message_id": "m1",
        "text": "hi",
        "reply_to_message_id": "m0",
        **SOURCE,
        "source": {"auto_thread_created": True, "future_field": "x", "is_new": None},
    }
    assert (await rig.post("/ingress/discord/D1", body))[0] == 202
    await g.changes.until(lambda: len(g.events) == 1)
    ev = g.events[0]
    src = ev["source"]
    assert {k: src[k] for k in SOURCE} == SOURCE
    assert src["future_field"] == "x"
    assert src["auto_thread_created"] is True
    assert src["is_new"] is None
    assert (src["platform"], src["chat_id"], src["user_id"]) == ("discord", "c1", "u1")
    assert ev["reply_to_message_id"] == "m0"
    # The always-present keys are there (null) on a bare message too.
    assert (await rig.post("/ingress/discord/D1", {**body, "message_id": "m2", **dict.fromkeys(SOURCE)}))[
        0
    ] == 202
    await g.changes.until(lambda: len(g.events) == 2)
    assert all(k in g.events[1]["source"] for k in ("thread_id", "chat_name", "chat_topic", "user_name"))
    status, err = await rig.post("/ingress/discord/D1", {**body, "source": {"chat_id": "x"}})
    assert status == 400
    assert "source.chat_id" in err["error"]
    status, err = await rig.post("/ingress/discord/D1", {**body, "source": {"deep": {"a": 1}}})
    assert status == 400
    assert "source.deep" in err["error"]


async def test_ops_on_the_relay_platform(rig: Rig) -> None:
    await rig.start()
    g = await rig.gateway()
    await start_gateway(g)
    ops = g.descriptors[0]["supported_ops"]
    assert {"send", "edit", "typing", "follow_up", "send_media", "get_chat_info"} <= set(ops)
    msg = {
        "chat_id": "42",
        "user_id": "u1",
        "message_id": "1",
        "text": "x",
        "chat_name": "Team",
        "chat_type": "group",
    }
    await rig.post("/ingress/relay", msg)
    await g.changes.until(lambda: len(g.events) == 1)
    info = await g.outbound("i1", {"op": "get_chat_info", "chat_id": "42"})
    assert info["success"] is True
    assert info["chat_info"] == {"name": "Team", "type": "group"}
    unknown = await g.outbound("i2", {"op": "get_chat_info", "chat_id": "nope"})
    assert unknown["success"] is False
    fu = await g.outbound(
        "f1", {"op": "follow_up", "session_key": "agent:main:relay:group:42", "kind": "k", "content": "later"}
    )
    assert fu["success"] is True
    assert fu["message_id"]
    lost = await g.outbound("f2", {"op": "follow_up", "session_key": "agent:main:relay:dm:9", "content": "?"})
    assert lost["success"] is False
    assert "session_key" in lost["error"]
    media = {
        "op": "send_media",
        "chat_id": "42",
        "media_kind": "image",
        "source_url": "https://x/a.png",
        "content": "cap",
    }
    assert (await g.outbound("m1", media))["success"] is True
    bad = await g.outbound("m2", {**media, "media_kind": "gif"})
    assert bad["success"] is False
    assert "media_kind" in bad["error"]
    rows = await rig.outbox()
    assert [r["action"]["op"] for r in rows] == ["follow_up", "send_media"]
    assert rows[0]["action"]["chat_id"] == "42"  # resolved from the session key


async def test_source_fields_and_ops_through_telegram(rig: Rig) -> None:
    await rig.start(telegram=True)
    assert rig.api is not None
    api = rig.api
    g = await rig.gateway([("telegram", TG_BOT)])
    await start_gateway(g)
    upd = update(
        1,
        "hi",
        chat_id=-100,
        message_thread_id=5,
        reply_to_message={"message_id": 4, "forum_topic_created": {"name": "Bugs"}},
    )
    upd["message"]["chat"] = {"id": -100, "type": "supergroup", "title": "Devs", "is_forum": True}
    status, _ = await rig.post(f"/telegram/{GW}", upd, {"X-Telegram-Bot-Api-Secret-Token": HOOK_SECRET})
    assert status == 200
    await g.changes.until(lambda: len(g.events) == 1)
    ev = g.events[0]
    src = ev["source"]
    assert (src["chat_id"], src["chat_type"], src["chat_name"], src["thread_id"]) == (
        "-100",
        "forum",
        "Devs",
        "5",
    )
    assert src["chat_topic"] == "Bugs"
    assert src["user_name"] == "ada"
    assert ev["reply_to_message_id"] == "4"
    # get_chat_info: Telegram's getChat first, the last inbound when it fails.
    api.always["getChat"] = (
        200,
        {"ok": True, "result": {"id": -100, "type": "supergroup", "title": "Devs!"}},
    )
    info = await g.outbound("i1", {"op": "get_chat_info", "chat_id": "-100"}, platform="telegram")
    assert info["chat_info"] == {"name": "Devs!", "type": "group"}
    api.always["getChat"] = (400, {"ok": False, "description": "Bad Request: chat not found"})
    info = await g.outbound("i2", {"op": "get_chat_info", "chat_id": "-100"}, platform="telegram")
    assert info["chat_info"] == {"name": "Devs", "type": "forum"}
    # send_media by media_kind; follow_up as a sendMessage to the session's chat.
    for kind, method in (("image", "sendPhoto"), ("document", "sendDocument")):
        action = {
            "op": "send_media",
            "chat_id": "-100",
            "media_kind": kind,
            "source_url": f"https://x/{kind}",
            "content": "c",
        }
        assert (await g.outbound(kind, action, platform="telegram", bot_id=TG_BOT))["success"] is True
        field = "photo" if kind == "image" else "document"
        assert api.of(method) == [{"chat_id": -100, field: f"https://x/{kind}", "caption": "c"}]
    fu = {
        "op": "follow_up",
        "session_key": "agent:main:telegram:forum:-100:5",
        "kind": "k",
        "content": "done",
    }
    assert (await g.outbound("f", fu, platform="telegram", bot_id=TG_BOT))["success"] is True
    assert api.of("sendMessage")[-1] == {"chat_id": -100, "text": "done"}
