"""Second-release connector: idempotent sends, replay size, batched acks (PROTOCOL.md 7), ingress
hardening and token robustness (SPEC 8.1, 8.3), private database files."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.clock import FakeClock
from common.errors import TokenError
from relay.connector.server import Connector
from relay.connector.store import IDEMPOTENCY_KEEP_S, BufferStore
from relay.connector.wake import WakePoker
from relay.protocol import frames as F
from relay.protocol.token import mint_token, token_gateway_id, verify_token
from tests.relay.helpers import FakeGatewayHttp, RawGateway, post, start_connector

MSG = {"chat_id": 42, "user_id": "u1", "text": "hello", "message_id": 1}
SEND = {"op": "send", "chat_id": "42", "content": "hi"}
KEY_ERROR = "idempotencyKey must be a string of 1-128 characters"


class Rig:
    """An in-process connector on a file database (restartable), a fake gateway HTTP side and
    raw protocol clients."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = str(tmp_path / "relay.db")
        self.clock = FakeClock(wall=time.time())
        self.gw_http = FakeGatewayHttp()
        self._http_started = False
        self.connector: Connector | None = None
        self.server: Any = None
        self.raws: list[RawGateway] = []

    async def start(self, **kwargs: Any) -> Connector:
        if not self._http_started:
            await self.gw_http.start()
            self._http_started = True
        kwargs.setdefault("clock", self.clock)
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

    def raw(self, headers: dict[str, str] | None = None) -> RawGateway:
        g = RawGateway(f"ws://127.0.0.1:{self.server.port}/relay", headers)
        self.raws.append(g)
        return g

    async def outbox(self) -> list[dict[str, Any]]:
        assert self.connector is not None
        await self.connector.store.flush()
        return await self.connector.store.outbox()

    async def buffer_rows(self) -> list[dict[str, Any]]:
        assert self.connector is not None
        await self.connector.store.flush()
        return await self.connector.store.buffer_rows()

    async def close(self) -> None:
        await self.stop()
        if self._http_started:
            await self.gw_http.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    yield r
    await r.close()


async def call(raw: RawGateway, action: dict[str, Any], key: Any = None, rid: str = "") -> dict[str, Any]:
    """One outbound and its result (``key`` None: no idempotencyKey field)."""
    rid = rid or F.new_request_id()
    frame = F.outbound(rid, action)
    if key is not None:
        frame["idempotencyKey"] = key
    await raw.send(frame)
    result = await raw.recv_type("outbound_result")
    assert result["requestId"] == rid
    return result["result"]


# --- 1. idempotent sends (PROTOCOL.md 7.1) -----------------------------------------------------


async def test_connector_idempotent_send_is_recorded_once_and_answered_duplicate(rig: Rig) -> None:
    """The same idempotencyKey twice: one outbox row; the second result is the first plus duplicate."""
    await rig.start()
    raw = rig.raw()
    await raw.connect()
    first = await call(raw, SEND, key="task-1:0")
    second = await call(raw, {**SEND, "content": "different"}, key="task-1:0")
    assert first["success"] is True
    assert "duplicate" not in first
    assert second == {**first, "duplicate": True}
    rows = await rig.outbox()
    assert [r["action"]["content"] for r in rows] == ["hi"]


async def test_connector_idempotent_send_in_flight_twice_makes_one_outbox_row(rig: Rig) -> None:
    """Two outbounds with one key in one message (the first not yet committed): one row, one id."""
    await rig.start()
    raw = rig.raw()
    await raw.connect()
    assert raw.ws is not None
    line = json.dumps(F.outbound("a" * 32, SEND, idempotency_key="k")) + "\n"
    await raw.ws.send_str(line + line.replace("a" * 32, "b" * 32))
    results = {}
    for _ in range(2):
        f = await raw.recv_type("outbound_result")
        results[f["requestId"]] = f["result"]
    assert results["a" * 32]["success"] is True
    assert results["b" * 32] == {**results["a" * 32], "duplicate": True}
    assert len(await rig.outbox()) == 1


async def test_connector_idempotency_key_survives_a_restart_for_seven_days(rig: Rig) -> None:
    """A key stored before a restart is still known after it (6.9 days later): not sent again."""
    await rig.start()
    raw = rig.raw()
    await raw.connect()
    first = await call(raw, SEND, key="task-9:2")
    await rig.stop()
    rig.clock.jump_wall(6.9 * 86400)
    await rig.start()
    again = rig.raw()
    await again.connect()
    second = await call(again, SEND, key="task-9:2")
    assert second == {**first, "duplicate": True}
    fresh = await call(again, SEND, key="task-9:3")
    assert "duplicate" not in fresh
    assert fresh["message_id"] != first["message_id"]
    assert len(await rig.outbox()) == 2


async def test_connector_idempotency_keys_are_per_gateway(rig: Rig) -> None:
    """One key used by two gateway ids is two sends, neither a duplicate."""
    await rig.start(secrets={"a": "sa", "b": "sb"})
    results = []
    for gid, secret in (("a", "sa"), ("b", "sb")):
        raw = rig.raw({"Authorization": "Bearer " + mint_token(gid, secret, rig.clock.wall())})
        await raw.connect(bot_id=gid)
        results.append(await call(raw, SEND, key="same"))
    assert [("duplicate" in r) for r in results] == [False, False]
    assert [r["gateway_id"] for r in await rig.outbox()] == ["a", "b"]


@pytest.mark.parametrize(
    "key", ["", "x" * 129, 5, ["k"], {"k": 1}], ids=["empty", "129", "int", "list", "object"]
)
async def test_connector_outbound_with_bad_idempotency_key_is_refused_unsent(rig: Rig, key: Any) -> None:
    """An idempotencyKey that is not a 1-128 character string is refused and nothing is recorded."""
    await rig.start()
    raw = rig.raw()
    await raw.connect()
    assert await call(raw, SEND, key=key) == {"success": False, "error": KEY_ERROR}
    assert await rig.outbox() == []
    ok = await call(raw, SEND, key="x" * 128)
    assert ok["success"] is True


async def test_store_outbox_row_and_idempotency_key_commit_together(tmp_path: Path) -> None:
    """A job whose key row fails leaves no outbox row either (one transaction)."""
    store = await BufferStore.open(str(tmp_path / "s.db"))
    try:
        common: dict[str, Any] = {
            "gateway_id": "gw",
            "platform": "relay",
            "bot_id": "",
            "action": SEND,
            "now": 1000.0,
            "idempotency_key": "k",
        }
        await store.record_outbound(**common, result={"success": True, "message_id": "m1"})
        with pytest.raises(sqlite3.IntegrityError):
            await store.record_outbound(**common, result={"success": True, "message_id": "m2"})
        assert len(await store.outbox()) == 1
        assert await store.idempotent_result("gw", "k") == {"success": True, "message_id": "m1"}
        assert await store.idempotent_result("other", "k") is None
    finally:
        await store.close()


async def test_store_prunes_idempotency_keys_older_than_seven_days(tmp_path: Path) -> None:
    """Pruning at the 7-day horizon forgets older keys and keeps younger ones."""
    store = await BufferStore.open(str(tmp_path / "s.db"))
    now = 1_800_000_000.0
    try:
        for key, age_days in (("old", 7.5), ("young", 6.5)):
            await store.record_outbound(
                gateway_id="gw",
                platform="relay",
                bot_id="",
                action=SEND,
                now=now - age_days * 86400,
                idempotency_key=key,
                result={"success": True},
            )
        await store.prune(now - IDEMPOTENCY_KEEP_S, now - IDEMPOTENCY_KEEP_S)
        assert await store.idempotent_result("gw", "old") is None
        assert await store.idempotent_result("gw", "young") == {"success": True}
    finally:
        await store.close()


# --- 2. replay size and the flip with unacked entries (PROTOCOL.md 7.2) ------------------------


async def test_connector_first_descriptor_carries_buffered_later_ones_do_not(rig: Rig) -> None:
    """The descriptor answering a handshake's first hello says how many entries follow."""
    await rig.start()
    raw = rig.raw()
    first = await raw.connect(bot_id="b")
    assert first["descriptor"]["buffered"] == 0
    assert first["descriptor"]["supports_idempotent_send"] is True
    assert first["descriptor"]["supports_ack_batch"] is True
    await raw.close()
    ids = []
    for i in range(3):
        _, body = await post(rig.base + "/ingress/relay/b", {**MSG, "message_id": i})
        ids.append(body["buffer_id"])
    again = rig.raw()
    d1 = await again.connect(bot_id="b")
    assert d1["descriptor"]["buffered"] == 3
    await again.send(F.hello("telegram", "bot2"))
    frames = [await again.recv() for _ in range(4)]
    [d2] = [f for f in frames if f["type"] == "descriptor"]
    assert d2["descriptor"]["platform"] == "telegram"
    assert "buffered" not in d2["descriptor"]
    assert [f["bufferId"] for f in frames if f["type"] == "inbound"] == ids


async def test_connector_going_idle_with_unacked_entries_pokes_at_once(rig: Rig) -> None:
    """A flip while entries are unacked is acked, then poked at once, inside the 10 s window."""
    await rig.start()
    wake = rig.gw_http.wake_url
    raw = rig.raw()
    await raw.connect(wake_url=wake)
    await raw.close()
    _, body = await post(rig.base + "/ingress/relay", MSG)
    assert body["delivered"] == "buffered"
    await rig.gw_http.changes.until(lambda: len(rig.gw_http.pokes) == 1)
    again = rig.raw()
    assert (await again.connect(wake_url=wake))["descriptor"]["buffered"] == 1
    assert (await again.recv_type("inbound"))["bufferId"] == body["buffer_id"]  # never acked
    await again.send(F.going_idle())
    await again.recv_type("going_idle_ack")
    # The fake clock never moves: only a poke outside the rate window can arrive.
    await rig.gw_http.changes.until(lambda: len(rig.gw_http.pokes) == 2, timeout=5)


async def test_connector_going_idle_with_everything_acked_does_not_poke(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flip right after the last ack (not yet committed) asks for no poke."""
    requests: list[bool] = []
    original = WakePoker.request

    def spy(self: WakePoker, *, immediate: bool = False) -> None:
        requests.append(immediate)
        original(self, immediate=immediate)

    monkeypatch.setattr(WakePoker, "request", spy)
    await rig.start()
    raw = rig.raw()
    await raw.connect(wake_url=rig.gw_http.wake_url)
    await post(rig.base + "/ingress/relay", MSG)
    got = await raw.recv_type("inbound")
    await raw.send(F.inbound_ack(got["bufferId"]))
    await raw.send(F.going_idle())
    await raw.recv_type("going_idle_ack")
    await call(raw, {"op": "typing", "chat_id": "42"})  # the flip is fully handled by now
    assert requests == []
    assert rig.gw_http.pokes == []


async def test_wake_poker_immediate_request_bypasses_the_rate_window() -> None:
    """request(immediate=True) pokes now and replaces a poke deferred to the window's end."""
    gw = FakeGatewayHttp()
    await gw.start()
    clock = FakeClock()
    try:
        async with aiohttp.ClientSession() as http:
            poker = WakePoker("gw", http=http, clock=clock, wake_url=lambda: gw.wake_url, auth=dict)
            poker.request()
            await gw.changes.until(lambda: len(gw.pokes) == 1)
            poker.request()
            await clock.settle()
            assert clock.pending == [10.0]  # deferred to the end of the 10 s window
            poker.request(immediate=True)
            await gw.changes.until(lambda: len(gw.pokes) == 2)
            await clock.advance(30)
            assert len(gw.pokes) == 2
            poker.cancel()
    finally:
        await gw.close()


# --- 3. batched acks (PROTOCOL.md 7.3) ---------------------------------------------------------


async def test_connector_batched_ack_acks_every_string_id(rig: Rig) -> None:
    """bufferIds acks each string in the list (others ignored); only the unacked one comes back."""
    await rig.start()
    raw = rig.raw()
    await raw.connect()
    ids = []
    for i in range(3):
        await post(rig.base + "/ingress/relay", {**MSG, "message_id": i})
        ids.append((await raw.recv_type("inbound"))["bufferId"])
    await raw.send({"type": "inbound_ack", "bufferIds": [ids[0], 7, None, {"x": 1}, ids[2]]})
    await raw.send({"type": "inbound_ack", "bufferIds": "not-a-list"})
    await raw.close()
    again = rig.raw()
    assert (await again.connect())["descriptor"]["buffered"] == 1
    assert (await again.recv_type("inbound"))["bufferId"] == ids[1]
    assert [r["acked"] for r in await rig.buffer_rows()] == [True, False, True]


# --- 4. ingress hardening (SPEC 8.3) -------------------------------------------------------------


def _body(**fields: Any) -> bytes:
    """A JSON body (ASCII, so a lone surrogate travels as a ``\\udXXX`` escape)."""
    return json.dumps({**MSG, **fields}).encode()


def _literal(field: str, literal: str) -> bytes:
    """A body whose ``field`` is the bare JSON token ``literal`` (NaN, Infinity, 1e400)."""
    return json.dumps({**MSG, field: "@@"}).replace('"@@"', literal).encode()


async def _live(rig: Rig, **kwargs: Any) -> RawGateway:
    await rig.start(**kwargs)
    raw = rig.raw()
    await raw.connect(bot_id="b")
    return raw


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"[" * 1000 + b"]" * 1000, "nests deeper"),
        (b'{"chat_id":' + b"[" * 1000 + b"]" * 1000 + b"}", "nests deeper"),
        (_body()[:-1] + b', "x": ' + b"[" * 100 + b"]" * 100 + b"}", "'x'"),
        (b'{"text": "\xff\xfe"}', "JSON object"),
    ],
    ids=["array-1000", "field-1000", "extra-100", "not-utf8"],
)
async def test_ingress_deep_nesting_or_bad_bytes_is_400(rig: Rig, raw: bytes, needle: str) -> None:
    """Deeply nested or undecodable bodies are a 400, never a 5xx, and store nothing."""
    await _live(rig)
    status, body = await post(rig.base + "/ingress/relay/b", None, raw)
    assert (status, needle in body["error"]) == (400, True), body
    assert await rig.buffer_rows() == []


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"text": "a\ud800b"}, "text"),
        ({"text": "\udc00"}, "text"),
        ({"chat_id": "c\ud800"}, "chat_id"),
        ({"message_id": "\udfff"}, "message_id"),
        ({"user_name": "\ud800"}, "user_name"),
        ({"profile": "\ud800"}, "profile"),
        ({"thread_id": "\ud800"}, "thread_id"),
        ({"chat_name": "\ud800"}, "chat_name"),
        ({"message_type": "photo", "text": None, "caption": "\ud800"}, "caption"),
    ],
    ids=[
        "text-mid",
        "text-only",
        "chat_id",
        "message_id",
        "user_name",
        "profile",
        "thread_id",
        "chat_name",
        "caption",
    ],
)
async def test_ingress_lone_surrogate_is_400_naming_the_field(
    rig: Rig, fields: dict[str, Any], name: str
) -> None:
    """A lone surrogate in a kept string is a 400 naming that field; nothing is stored."""
    await _live(rig)
    status, body = await post(rig.base + "/ingress/relay/b", None, _body(**fields))
    assert status == 400
    assert f"'{name}'" in body["error"]
    assert "Unicode" in body["error"]
    assert await rig.buffer_rows() == []


async def test_ingress_surrogate_pair_is_valid_unicode(rig: Rig) -> None:
    """A proper surrogate pair escape (an emoji) is accepted and delivered intact."""
    raw = await _live(rig)
    status, _ = await post(rig.base + "/ingress/relay/b", None, _body(text="ok \ud83d\ude00"))
    assert status == 202
    assert (await raw.recv_type("inbound"))["event"]["text"] == "ok \U0001f600"


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("chat_id", "NaN"),
        ("user_id", "Infinity"),
        ("message_id", "-Infinity"),
        ("thread_id", "1e400"),
        ("guild_id", "-1e400"),
        ("scope_id", "NaN"),
    ],
    ids=[
        "chat_id-nan",
        "user_id-inf",
        "message_id-neg-inf",
        "thread_id-overflow",
        "guild_id-neg-overflow",
        "scope_id-nan",
    ],
)
async def test_ingress_non_finite_number_is_400_naming_the_field(rig: Rig, field: str, literal: str) -> None:
    """NaN, Infinity and numbers that overflow to inf are a 400 naming the field."""
    await _live(rig)
    status, body = await post(rig.base + "/ingress/relay/b", None, _literal(field, literal))
    assert status == 400
    assert f"'{field}'" in body["error"]
    assert "finite" in body["error"]
    assert await rig.buffer_rows() == []


@pytest.mark.parametrize(
    ("limit", "size"), [(10_000, 20_000), (None, 5 * 1024 * 1024)], ids=["configured", "default"]
)
async def test_ingress_body_over_the_limit_is_413_with_json_error(
    rig: Rig, limit: int | None, size: int
) -> None:
    """A body over the limit is a 413 whose JSON error names the limit; nothing is stored."""
    await _live(rig, max_body_bytes=limit)
    assert rig.connector is not None
    async with (
        aiohttp.ClientSession() as http,
        http.post(rig.base + "/ingress/relay/b", data=io.BytesIO(b" " * size)) as resp,
    ):
        status, body = resp.status, await resp.json()
    assert status == 413
    assert str(rig.connector.max_body_bytes) in body["error"]
    assert await rig.buffer_rows() == []


async def test_ingress_client_errors_never_5xx_nor_log_a_traceback(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Every kind of bad input is a 4xx and logs nothing above DEBUG with a traceback."""
    caplog.set_level(logging.DEBUG)
    await _live(rig, max_body_bytes=50_000)
    bad = [
        b"[" * 5000 + b"]" * 5000,
        _body(text="\ud800"),
        _literal("chat_id", "NaN"),
        b"x" * 60_000,
        b"{",
        b"\xff",
        _body(message_type=3),
        _body(text=None),
        b"1e400",
        _literal("text", "Infinity"),
    ]
    for raw in bad:
        status, _ = await post(rig.base + "/ingress/relay/b", None, raw)
        assert 400 <= status < 500, raw[:40]
    status, _ = await post(rig.base + "/ingress/relay/%ED%A0%80", None, _body())
    assert status == 404
    noisy = [r for r in caplog.records if r.levelno > logging.DEBUG and (r.exc_info or r.exc_text)]
    assert noisy == []
    assert "Traceback" not in caplog.text


async def test_ingress_message_type_and_caption_reach_the_event(rig: Rig) -> None:
    """Non-text types may carry a caption instead of text; text needs text; unknown types are 400."""
    raw = await _live(rig)
    url = rig.base + "/ingress/relay/b"
    status, _ = await post(url, {**MSG, "text": None, "message_type": "photo", "caption": "look"})
    assert status == 202
    ev = (await raw.recv_type("inbound"))["event"]
    assert (ev["message_type"], ev["caption"], ev["text"]) == ("photo", "look", "")
    status, _ = await post(url, {k: v for k, v in MSG.items() if k != "text"} | {"message_type": "voice"})
    assert status == 202
    ev = (await raw.recv_type("inbound"))["event"]
    assert (ev["message_type"], ev["text"], "caption" in ev) == ("voice", "", False)
    status, _ = await post(url, MSG)
    assert status == 202
    assert (await raw.recv_type("inbound"))["event"]["message_type"] == "text"
    refused: list[tuple[dict[str, Any], str]] = [
        ({"text": None}, "'text'"),
        ({"message_type": "video"}, "photo"),
        ({"message_type": "photo", "caption": 5}, "'caption'"),
        ({"message_type": "photo", "text": 5}, "'text'"),
    ]
    for fields, needle in refused:
        status, body = await post(url, {**MSG, **fields})
        assert (status, needle in body["error"]) == (400, True), body


async def test_ingress_keeps_thread_id_and_stock_gateway_source_fields(rig: Rig) -> None:
    """thread_id, scope_id, guild_id, parent_chat_id, chat_name, chat_topic are kept as strings."""
    raw = await _live(rig)
    url = rig.base + "/ingress/relay/b"
    extra = {
        "thread_id": 7,
        "scope_id": "s1",
        "guild_id": 99,
        "parent_chat_id": -100123,
        "chat_name": "Team",
        "chat_topic": "ops",
        "user_name": "Ann",
        "chat_type": "group",
    }
    assert (await post(url, {**MSG, **extra}))[0] == 202
    src = (await raw.recv_type("inbound"))["event"]["source"]
    assert {k: src[k] for k in extra} == {
        "thread_id": "7",
        "scope_id": "s1",
        "guild_id": "99",
        "parent_chat_id": "-100123",
        "chat_name": "Team",
        "chat_topic": "ops",
        "user_name": "Ann",
        "chat_type": "group",
    }
    assert (await post(url, {**MSG, "guild_id": [1], "chat_name": True}))[0] == 202
    src = (await raw.recv_type("inbound"))["event"]["source"]
    assert "guild_id" not in src
    assert src["chat_name"] is None  # contract 3: always present, null when unknown
    status, body = await post(url, {**MSG, "thread_id": [1]})
    assert (status, "'thread_id'" in body["error"]) == (400, True)


# --- 5. tokens ----------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


@pytest.mark.parametrize(
    "exp",
    ["²", "٣", "１２", "+5", " 5", "-1", "1" * 40],
    ids=["superscript", "arabic-indic", "fullwidth", "plus-sign", "leading-space", "negative", "too-long"],
)
def test_token_with_non_ascii_digit_exp_is_unauthorized(exp: str) -> None:
    """An exp that is not plain ASCII digits is 'unauthorized', never a ValueError."""
    with pytest.raises(TokenError) as err:
        verify_token(_b64(f"gw:{exp}:sig"), {"gw": "s"}, 1_800_000_000.0)
    assert err.value.reason == "unauthorized"


_ANY = st.text(st.characters(exclude_categories=()), max_size=40)
_EXP = st.one_of(st.text(st.sampled_from("0123456789²³¹٣١２۵߀ -+"), max_size=12), _ANY)
_TOKENS = st.one_of(
    _ANY,
    st.builds(lambda g, e, s: _b64(f"{g}:{e}:{s}"), st.one_of(st.just("gw"), _ANY), _EXP, _ANY),
    st.builds(lambda t: _b64(t), _ANY),
)


@given(_TOKENS, st.floats(min_value=0, max_value=4e9))
def test_verify_token_on_any_text_raises_only_token_error(token: str, now: float) -> None:
    """Any text (non-ASCII, surrogates, odd digits) verifies or raises TokenError, nothing else."""
    try:
        outcome = verify_token(token, {"gw": "s"}, now)
    except TokenError as exc:
        outcome = exc.reason
    assert outcome in ("gw", "unauthorized", "expired")
    token_gateway_id(token)  # never raises


@pytest.mark.parametrize(
    "header",
    ["Bearer " + _b64("gw:²:sig"), "Bearer é", "Bearer \udcff\udcfe", "Bearer " + _b64("gw:\ud800:x")],
    ids=["superscript-exp", "non-ascii", "invalid-utf8-bytes", "surrogate-in-payload"],
)
async def test_connector_closes_unreadable_tokens_with_4401_unauthorized(rig: Rig, header: str) -> None:
    """A token the connector cannot even parse closes the socket with 4401 'unauthorized'."""
    await rig.start(secrets={"gw": "s"})
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"ws://127.0.0.1:{rig.server.port}/relay", headers={"Authorization": header}) as ws,
    ):
        msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4401, "unauthorized")


# --- 7. private database files (SPEC 8.1) ------------------------------------------------------


async def test_connector_database_files_are_0600(rig: Rig) -> None:
    """The connector's database, -wal and -shm are readable by this user only."""
    old = os.umask(0)
    try:
        raw = await _live(rig)
        await post(rig.base + "/ingress/relay/b", MSG)
        await raw.recv_type("inbound")
    finally:
        os.umask(old)
    paths = [rig.db, rig.db + "-wal", rig.db + "-shm"]
    assert _modes(paths) == {p: 0o600 for p in paths}
    await rig.stop()
    left = _modes(paths)  # SQLite may remove -wal/-shm on the last close
    assert rig.db in left
    assert set(left.values()) == {0o600}


def _modes(paths: list[str]) -> dict[str, int]:
    """Permission bits of each path that exists."""
    out = {}
    for p in paths:
        try:
            out[p] = stat.S_IMODE(os.stat(p).st_mode)
        except FileNotFoundError:
            pass
    return out


async def test_connector_outbound_without_key_keeps_send_order(rig: Rig) -> None:
    """Keyed and unkeyed outbounds on one socket land in the outbox in frame order."""
    await rig.start()
    raw = rig.raw()
    await raw.connect()
    assert raw.ws is not None
    lines = [
        json.dumps(
            F.outbound(
                F.new_request_id(), {**SEND, "content": str(i)}, idempotency_key=f"k{i}" if i % 2 else None
            )
        )
        + "\n"
        for i in range(6)
    ]
    await raw.ws.send_str("".join(lines))
    for _ in range(6):
        await raw.recv_type("outbound_result")
    assert [r["action"]["content"] for r in await rig.outbox()] == [str(i) for i in range(6)]


async def test_connector_prunes_at_start_and_daily_keeping_keys_seven_days(tmp_path: Path) -> None:
    """With a one-day retention: an acked entry two days old is gone at start; one acked now
    is gone after the prunes of the next two days; an idempotency key stays its seven days even so."""
    day = 86400.0
    clock = FakeClock(wall=1_800_000_000.0)
    path = str(tmp_path / "c.db")
    store = await BufferStore.open(path)
    for bid, age in (("two-days", 2 * day), ("now", 0.0)):
        await store.append(
            buffer_id=bid,
            gateway_id="gw",
            platform="relay",
            bot_id="",
            chat_id="c",
            frame="f",
            now=clock.wall() - age,
        )
        store.ack("gw", bid, clock.wall() - age)
    await store.record_outbound(
        gateway_id="gw",
        platform="relay",
        bot_id="",
        action=SEND,
        now=clock.wall(),
        idempotency_key="k",
        result={"success": True},
    )
    await store.close()
    connector = await Connector.create(path, clock=clock, retention_s=day)

    async def days(n: int) -> None:
        for _ in range(n):  # one prune at a time: each commits (a real thread) before the next
            await clock.advance(day)
            await connector.store.flush()
            await clock.settle()

    try:
        assert [r["buffer_id"] for r in await connector.store.buffer_rows()] == ["now"]
        await days(2)
        assert await connector.store.buffer_rows() == []
        assert await connector.store.idempotent_result("gw", "k") == {"success": True}
        await days(5)  # day 7: still kept
        assert await connector.store.idempotent_result("gw", "k") == {"success": True}
        await days(1)
        assert await connector.store.idempotent_result("gw", "k") is None
    finally:
        await connector.close()
