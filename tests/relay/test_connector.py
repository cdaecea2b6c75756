"""Reference connector against real clients on 127.0.0.1 (PROTOCOL.md sections 5-6, SPEC section 2)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from common.clock import FakeClock
from relay.client.machine import ConnState
from relay.client.transport import RelayTransport, TransportConfig
from relay.connector.metrics import metrics_app
from relay.connector.server import Connector
from relay.protocol.token import mint_token, verify_token
from tests.relay.helpers import Changes, FakeGatewayHttp, RawGateway, post, start_connector

MSG = {"chat_id": 42, "user_id": "u1", "text": "hello", "message_id": 1}


class Env:
    def __init__(self, tmp_path: Any) -> None:
        self.tmp_path = tmp_path
        # Wall time starts at the real time: our transport mints tokens on the real clock.
        self.clock = FakeClock(wall=time.time())
        self.gw_http = FakeGatewayHttp()
        self.connector: Connector | None = None
        self.server: Any = None
        self.clients: list[Any] = []

    async def start(self, **kwargs: Any) -> None:
        await self.gw_http.start()
        kwargs.setdefault("clock", self.clock)
        self.connector, self.server = await start_connector(str(self.tmp_path / "relay.db"), **kwargs)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/relay"

    def raw(self, headers: dict[str, str] | None = None) -> RawGateway:
        g = RawGateway(self.ws_url, headers)
        self.clients.append(g)
        return g

    async def close(self) -> None:
        for c in self.clients:
            if isinstance(c, RawGateway):
                await c.close()
            else:
                await c.disconnect()
        if self.connector is not None:
            await self.server.close()
            await self.connector.close()
        await self.gw_http.close()


@pytest.fixture
async def env(tmp_path: Any) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    yield e
    await e.close()


class GatewayClient:
    """Our real transport, recording what its handler persisted."""

    def __init__(self, env: Env, **cfg: Any) -> None:
        self.got: list[dict[str, Any]] = []
        self.changes = Changes()
        cfg.setdefault("ping_interval_s", None)
        self.t = RelayTransport(TransportConfig(url=env.ws_url, **cfg), on_inbound=self._on)
        env.clients.append(self.t)

    async def _on(self, batch: list[dict[str, Any]]) -> None:
        self.got.extend(batch)
        self.changes.notify()

    async def connected(self) -> None:
        await asyncio.wait_for(self.t.wait_until(lambda: self.t.state is ConnState.CONNECTED), 10)


async def test_connector_ingress_live_is_persisted_delivered_and_acked(env: Env) -> None:
    """A message for a live gateway is stored, sent live with its bufferId, and acked."""
    await env.start()
    gw = GatewayClient(env, wake_url=env.gw_http.wake_url)
    await gw.t.start()
    await gw.connected()
    status, body = await post(env.base + "/ingress/relay", MSG)
    assert status == 202
    assert body["delivered"] == "live"
    await gw.changes.until(lambda: len(gw.got) == 1)
    frame = gw.got[0]
    assert frame["bufferId"] == body["buffer_id"]
    ev = frame["event"]
    assert ev["text"] == "hello"
    assert ev["message_id"] == "1"
    assert ev["source"]["chat_id"] == "42"
    assert ev["source"]["platform"] == "relay"
    assert env.connector is not None
    store = env.connector.store

    async def acked() -> bool:
        await store.flush()
        return all(r["acked"] for r in await store.buffer_rows())

    for _ in range(100):
        if await acked():
            break
        await asyncio.sleep(0)
    assert await acked()


async def test_connector_outbound_goes_to_outbox_in_send_order(env: Env) -> None:
    """send/edit/typing are answered and listed in /outbox; an unknown op is refused, unlisted."""
    await env.start()
    gw = GatewayClient(env)
    await gw.t.start()
    await gw.connected()
    r1 = await gw.t.send_outbound({"op": "send", "chat_id": "42", "content": "one"})
    assert r1["success"]
    assert r1["message_id"]
    r2 = await gw.t.send_outbound(
        {"op": "edit", "chat_id": "42", "message_id": r1["message_id"], "content": "one!"}
    )
    assert r2 == {"success": True, "message_id": r1["message_id"]}
    assert (await gw.t.send_outbound({"op": "typing", "chat_id": "7"}))["success"]
    bad = await gw.t.send_outbound({"op": "delete", "chat_id": "42"})
    assert bad["success"] is False
    assert "unsupported op" in bad["error"]
    missing = await gw.t.send_outbound({"chat_id": "42"})
    assert missing["success"] is False
    assert "unsupported op" in missing["error"]
    async with aiohttp.ClientSession() as s:
        async with s.get(env.base + "/outbox") as r:
            rows = await r.json()
        async with s.get(env.base + "/outbox?chat_id=42") as r:
            chat = await r.json()
    assert [x["action"]["op"] for x in rows] == ["send", "edit", "typing"]
    assert [x["action"]["content"] for x in chat] == ["one", "one!"]
    assert rows[0]["gateway_id"] == "dev"
    assert rows[0]["platform"] == "relay"
    assert rows[0]["at"].endswith("Z")
    assert rows[0]["bot_id"] == ""


async def test_connector_buffers_while_dormant_pokes_once_and_replays_in_order(env: Env) -> None:
    """After a flip: buffered, one poke per burst, ordered replay on the next handshake."""
    await env.start(secrets={"gw": "s"})
    gw = GatewayClient(env, gateway_id="gw", secret="s", wake_url=env.gw_http.wake_url)
    await gw.t.start()
    await gw.connected()
    assert await gw.t.go_dormant() is True
    ids = []
    for i in range(5):
        status, body = await post(env.base + "/ingress/relay", {**MSG, "message_id": i, "text": f"m{i}"})
        assert status == 202
        assert body["delivered"] == "buffered"
        ids.append(body["buffer_id"])
    await env.gw_http.changes.until(lambda: len(env.gw_http.pokes) == 1)
    await env.clock.advance(5)  # t=5 s: inside the 10 s window, nothing more
    assert len(env.gw_http.pokes) == 1
    token = env.gw_http.pokes[0]["Authorization"].removeprefix("Bearer ")
    assert verify_token(token, {"gw": "s"}, env.clock.wall()) == "gw"
    assert gw.got == []
    assert gw.t.wake("poke")
    await gw.connected()
    await gw.changes.until(lambda: len(gw.got) == 5)
    assert [f["bufferId"] for f in gw.got] == ids
    assert [f["event"]["text"] for f in gw.got] == [f"m{i}" for i in range(5)]


async def test_connector_failed_poke_is_retried_with_backoff(env: Env) -> None:
    """A poke answered 503 (or unreachable) is retried after 1 s, then 2 s, until it succeeds."""
    env.gw_http.wake_statuses = [503, 500]
    await env.start()
    raw = env.raw()
    await raw.connect(wake_url=env.gw_http.wake_url)
    await raw.close()
    await post(env.base + "/ingress/relay", MSG)
    await env.gw_http.changes.until(lambda: len(env.gw_http.pokes) == 1)
    await env.clock.advance(0.99)
    assert len(env.gw_http.pokes) == 1
    await env.clock.advance(0.01)
    await env.gw_http.changes.until(lambda: len(env.gw_http.pokes) == 2)
    await env.clock.advance(2)
    await env.gw_http.changes.until(lambda: len(env.gw_http.pokes) == 3)
    await env.clock.advance(600)  # the third poke succeeded: no more
    assert len(env.gw_http.pokes) == 3


async def test_connector_wake_at_pokes_at_that_time(env: Env) -> None:
    """going_idle.wakeAt pokes when it comes; a later going_idle replaces it."""
    await env.start()
    raw = env.raw()
    await raw.connect(wake_url=env.gw_http.wake_url)
    from relay.protocol import frames as F

    await raw.send(F.going_idle(env.clock.wall() + 120))
    assert (await raw.recv_type("going_idle_ack"))["type"] == "going_idle_ack"
    await raw.close()
    await env.clock.advance(119)
    assert env.gw_http.pokes == []
    await env.clock.advance(1)
    await env.gw_http.changes.until(lambda: len(env.gw_http.pokes) == 1)


async def test_connector_invalid_wake_at_is_ignored_and_still_acked(env: Env) -> None:
    """An unparseable wakeAt is logged and ignored; the ack is still sent."""
    await env.start()
    raw = env.raw()
    await raw.connect(wake_url=env.gw_http.wake_url)
    await raw.send({"type": "going_idle", "wakeAt": "tomorrow-ish"})
    assert (await raw.recv_type("going_idle_ack"))["type"] == "going_idle_ack"
    await env.clock.advance(3600)
    assert env.gw_http.pokes == []


async def test_connector_resends_unacked_live_entries_and_never_acked_ones(env: Env) -> None:
    """Entries sent live but unacked come again on the next handshake; acked ones never."""
    await env.start()
    raw = env.raw()
    await raw.connect()
    got = []
    for i in range(3):
        await post(env.base + "/ingress/relay", {**MSG, "message_id": i, "text": f"m{i}"})
        got.append(await raw.recv_type("inbound"))
    await raw.send({"type": "inbound_ack", "bufferId": got[0]["bufferId"]})
    await raw.send({"type": "inbound_ack", "bufferId": got[2]["bufferId"]})
    await raw.close()
    again = env.raw()
    await again.connect()
    first = await again.recv_type("inbound")
    assert first["bufferId"] == got[1]["bufferId"]
    await post(env.base + "/ingress/relay", {**MSG, "message_id": 9, "text": "m9"})
    nxt = await again.recv_type("inbound")
    assert nxt["event"]["text"] == "m9"  # the acked m0 and m2 were never resent


async def test_connector_ingress_rejections_store_nothing(env: Env) -> None:
    """404 unknown identity, 400 bad/missing field or non-object, 413 too long: nothing stored."""
    await env.start(max_frame_bytes=4096)
    raw = env.raw()
    await raw.connect(bot_id="b1")
    cases = [
        ("/ingress/telegram/zzz", MSG, None, 404, "telegram"),
        ("/ingress/relay/b1", {**MSG, "text": ""}, None, 400, "text"),
        ("/ingress/relay/b1", {k: v for k, v in MSG.items() if k != "chat_id"}, None, 400, "chat_id"),
        ("/ingress/relay/b1", {**MSG, "user_id": [1]}, None, 400, "user_id"),
        ("/ingress/relay/b1", None, b"[1,2]", 400, "JSON object"),
        ("/ingress/relay/b1", None, b"{not json", 400, "JSON object"),
        ("/ingress/relay/b1", {**MSG, "text": "x" * 5000}, None, 413, "4096"),
        ("/ingress/relay", MSG, None, 404, "relay"),
    ]
    for path, body, rawb, status, needle in cases:
        got_status, got = await post(env.base + path, body, rawb)
        assert (got_status, needle in got["error"]) == (status, True), (path, got)
    assert env.connector is not None
    await env.connector.store.flush()
    assert await env.connector.store.buffer_rows() == []
    ok_status, ok = await post(env.base + "/ingress/relay/b1", {**MSG, "extra": {"x": 1}})
    assert ok_status == 202
    assert ok["delivered"] == "live"


async def test_connector_presence_held_while_live_and_closed_on_flip(env: Env) -> None:
    """GET /presence is held with the poke bearer while live and dropped on the flip."""
    await env.start(secrets={"gw": "s"})
    gw = GatewayClient(env, gateway_id="gw", secret="s", wake_url=env.gw_http.wake_url)
    await gw.t.start()
    await gw.connected()
    await env.gw_http.changes.until(lambda: env.gw_http.presence_open == 1)
    token = env.gw_http.presence_headers[0]["Authorization"].removeprefix("Bearer ")
    assert verify_token(token, {"gw": "s"}, env.clock.wall()) == "gw"
    assert await gw.t.go_dormant() is True
    await env.gw_http.changes.until(lambda: env.gw_http.presence_open == 0)
    assert env.gw_http.presence_closed == 1
    await env.clock.advance(120)
    assert env.gw_http.presence_open == 0
    assert len(env.gw_http.presence_headers) == 1


async def test_connector_presence_409_stops_until_next_handshake(env: Env) -> None:
    """A 409 from /presence is not retried."""
    env.gw_http.presence_status = 409
    await env.start()
    raw = env.raw()
    await raw.connect(wake_url=env.gw_http.wake_url)
    await env.gw_http.changes.until(lambda: len(env.gw_http.presence_headers) == 1)
    assert env.connector is not None
    presence = env.connector.sessions["dev"].tasks[1]
    await asyncio.wait_for(presence, 10)  # it ends by itself on the 409
    await env.clock.advance(600)
    assert len(env.gw_http.presence_headers) == 1


async def test_connector_bad_token_closes_4401_and_expired_says_so(env: Env) -> None:
    """A bad token is closed with 4401 'unauthorized', a stale one with 'expired'."""
    await env.start(secrets={"gw": "s"})
    for headers, reason in [
        ({}, "unauthorized"),
        ({"Authorization": "Bearer " + mint_token("gw", "wrong", env.clock.wall())}, "unauthorized"),
        ({"Authorization": "Bearer " + mint_token("gw", "s", env.clock.wall() - 400)}, "expired"),
    ]:
        async with aiohttp.ClientSession() as s, s.ws_connect(env.ws_url, headers=headers) as ws:
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert (msg.data, msg.extra) == (4401, reason)


async def test_connector_newer_socket_replaces_older_with_4409(env: Env) -> None:
    """Two sockets for one gateway id: the newer handshake wins; the older is closed 4409."""
    await env.start()
    a = env.raw()
    await a.connect()
    b = env.raw()
    await b.connect()
    assert a.ws is not None
    msg = await a.ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4409, "replaced")
    status, body = await post(env.base + "/ingress/relay", MSG)
    assert body["delivered"] == "live"
    assert (await b.recv_type("inbound"))["bufferId"] == body["buffer_id"]


async def test_connector_new_ingress_during_replay_queues_behind_backlog(env: Env) -> None:
    """Ingress landing while a backlog is replayed comes after it, in order."""
    await env.start()
    raw = env.raw()
    await raw.connect()
    await raw.close()
    for i in range(300):
        await post(env.base + "/ingress/relay", {**MSG, "message_id": i, "text": f"m{i}"})
    again = env.raw()
    await again.connect()
    late = asyncio.create_task(post(env.base + "/ingress/relay", {**MSG, "message_id": 999, "text": "late"}))
    texts = [(await again.recv_type("inbound"))["event"]["text"] for _ in range(301)]
    await late
    assert texts == [f"m{i}" for i in range(300)] + ["late"]


async def test_connector_replay_packs_many_entries_into_one_message_and_takes_a_batched_ack(env: Env) -> None:
    """A backlog goes out several NDJSON lines per WS message, in order, after the descriptor
    that counts it; one ``bufferIds`` ack (PROTOCOL.md 7.3) acks them all."""
    await env.start()
    first = env.raw()
    await first.connect()  # the identity is known from now on
    await first.close()
    ids = []
    for i in range(5):
        status, body = await post(env.base + "/ingress/relay", {**MSG, "message_id": i, "text": f"m{i}"})
        assert status == 202
        ids.append(body["buffer_id"])
    async with aiohttp.ClientSession() as s, s.ws_connect(env.ws_url) as ws:
        await ws.send_str('{"type":"hello","platform":"relay","botId":""}\n')
        descriptor = await ws.receive(timeout=10)
        assert [json.loads(line)["descriptor"]["buffered"] for line in descriptor.data.splitlines()] == [5]
        replay = await ws.receive(timeout=10)
        lines = replay.data.splitlines()
        assert [json.loads(line)["bufferId"] for line in lines] == ids  # one message, in order
        await ws.send_str(json.dumps({"type": "inbound_ack", "bufferIds": ids}) + "\n")
        await ws.send_str('{"type":"hello","platform":"relay","botId":""}\n')
        await ws.receive(timeout=10)  # its descriptor: the ack before it was handled
        assert env.connector is not None
        store = env.connector.store
        await store.flush()
        assert await store.unacked_count("dev") == 0
        assert all(r["acked"] for r in await store.buffer_rows())


@pytest.mark.parametrize("flips_again", [False, True], ids=["acked", "flipped-again-first"])
async def test_connector_clears_the_stored_flip_with_the_first_ack_of_a_replay(
    env: Env, flips_again: bool
) -> None:
    """After a wake with a backlog, the stored flip is cleared together with the first ack
    (not beside the gateway's first commit); a gateway that flips again before acking keeps
    it set."""
    await env.start()
    assert env.connector is not None
    store = env.connector.store
    first = env.raw()
    await first.connect()
    await first.send({"type": "going_idle"})
    await first.recv_type("going_idle_ack")
    await first.close()
    status, body = await post(env.base + "/ingress/relay", MSG)
    assert (status, body["delivered"]) == (202, "buffered")
    again = env.raw()
    await again.connect()
    replayed = await again.recv_type("inbound")
    await store.flush()
    assert (await store.gateways())["dev"].flipped  # nothing acked yet: still stored flipped
    if flips_again:
        await again.send({"type": "going_idle"})
        await again.recv_type("going_idle_ack")
    await again.send({"type": "inbound_ack", "bufferId": replayed["bufferId"]})
    await again.send({"type": "hello", "platform": "relay", "botId": ""})
    await again.recv_type("descriptor")  # the ack before it was handled
    await store.flush()
    assert (await store.gateways())["dev"].flipped is flips_again


async def test_connector_metrics_show_what_an_operator_watches(env: Env) -> None:
    """The internal port's /metrics: messages stored by how they went out, entries sent and
    acked, live sockets, asleep (flipped) gateways, unacked entries per gateway, pokes."""
    await env.start(secrets={"gw": "s"})
    assert env.connector is not None
    connector = env.connector
    scraper = TestServer(metrics_app(connector), host="127.0.0.1")
    await scraper.start_server()

    async def scrape() -> str:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{scraper.port}/metrics") as r:
            assert r.status == 200
            return await r.text()

    try:
        gw = GatewayClient(env, gateway_id="gw", secret="s", wake_url=env.gw_http.wake_url)
        await gw.t.start()
        await gw.connected()
        assert "hermes_relay_sockets_live 1.0" in await scrape()
        status, _ = await post(env.base + "/ingress/relay", MSG)
        assert status == 202
        await gw.changes.until(lambda: len(gw.got) == 1)
        for _ in range(1000):  # the transport acks right after its handler returned
            if await connector.store.unacked_count("gw") == 0:
                break
            await asyncio.sleep(0)
        assert await gw.t.go_dormant() is True
        status, _ = await post(env.base + "/ingress/relay", {**MSG, "message_id": 2})
        assert status == 202
        await env.gw_http.changes.until(lambda: len(env.gw_http.pokes) == 1)
        text = ""
        for _ in range(1000):  # the poke is counted once its 202 is read
            text = await scrape()
            if 'hermes_relay_pokes_total{outcome="sent"} 1.0' in text:
                break
        for line in (
            'hermes_relay_ingress_total{delivered="live",platform="relay"} 1.0',
            'hermes_relay_ingress_total{delivered="buffered",platform="relay"} 1.0',
            "hermes_relay_frames_sent_total 1.0",
            "hermes_relay_acked_total 1.0",
            "hermes_relay_sockets_live 0.0",
            "hermes_relay_gateways_flipped 1.0",
            'hermes_relay_unacked_entries{gateway="gw"} 1.0',
            'hermes_relay_pokes_total{outcome="sent"} 1.0',
            'hermes_relay_pokes_total{outcome="failed"} 0.0',
            "hermes_relay_store_up 1.0",
        ):
            assert line in text

        async def store_down(gid: str) -> int:
            raise OSError("connection refused")

        connector.store.unacked_count = store_down  # type: ignore[method-assign]
        text = await scrape()  # still 200: the counters answer, store_up says what is missing
        assert "hermes_relay_store_up 0.0" in text
        assert "hermes_relay_acked_total 1.0" in text
        assert "hermes_relay_unacked_entries{" not in text  # no stale per-gateway values
    finally:
        await scraper.close()
