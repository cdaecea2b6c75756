"""Bad and unusual inbound against a real in-process sidecar: a raw scripted connector (the far
side of the boundary) sends exact bytes and records acks and sends; the provider is fake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import load_config
from gateway.runtime.sidecar import Sidecar
from tests.fake_llm import FakeLLM, provider_config
from tests.wire import RawConnector, inbound


async def first_id(sc: Sidecar) -> int:
    """The id of the first message admitted (ids start at a random offset per state.db)."""
    async with sc.db.execute("SELECT MIN(id) FROM inbox WHERE status != 'rejected'") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
async def start(tmp_path: Path, llm: FakeLLM) -> AsyncIterator[Callable[[RawConnector], Any]]:
    """Start a connector and a sidecar pointed at it (stopped after the test)."""
    (tmp_path / "config.yaml").write_text(provider_config(llm.base_url))
    started: list[tuple[RawConnector, Sidecar]] = []

    async def go(conn: RawConnector) -> Sidecar:
        await conn.server.start_server()
        env = {"GATEWAY_RELAY_URL": f"http://127.0.0.1:{conn.server.port}"}
        sc = Sidecar(load_config(tmp_path, env), port=0, env=env, metrics_port=0)
        await sc.start()
        started.append((conn, sc))
        return sc

    yield go
    for conn, sc in started:
        await sc.shutdown()
        await conn.server.close()


async def test_poison_frame_is_quarantined_and_its_batch_still_answered(start: Any) -> None:
    """valid_a + an inbound with a lone surrogate + valid_b in one WS message: all three are
    acked, a and b answered, the bad one kept as rejected and counted."""
    message = (
        inbound("a", "c1", "1", "first") + inbound("bad", "\ud800", "2") + inbound("b", "c2", "3", "second")
    )
    conn = RawConnector(message)
    sc = await start(conn)
    await conn.wait_until(lambda: len(conn.sends) == 2 and len(conn.acked) == 3)
    assert sorted(conn.acked) == ["a", "b", "bad"]
    assert sorted(s["action"]["content"] for s in conn.sends) == ["echo: first", "echo: second"]
    rejected = await sc.inbox.rejected()
    assert [(r["buffer_id"], "not valid unicode" in r["error"]) for r in rejected] == [("bad", True)]
    assert sc.metrics.rejected.labels(reason="invalid_unicode")._value.get() == 1


async def test_bad_shapes_and_unknown_types_with_a_buffer_id_are_acked_not_stuck(start: Any) -> None:
    """No event object, no chat id, an unknown type with a bufferId: each acked, quarantined."""
    message = (
        json.dumps({"type": "inbound", "bufferId": "no-event"})
        + "\n"
        + json.dumps(
            {
                "type": "inbound",
                "bufferId": "no-chat",
                "event": {"text": "x", "source": {"platform": "relay"}},
            }
        )
        + "\n"
        + json.dumps({"type": "mystery", "bufferId": "odd"})
        + "\n"
        + inbound("fine", "c1", "9", "ok")
    )
    conn = RawConnector(message)
    sc = await start(conn)
    await conn.wait_until(lambda: len(conn.acked) == 4 and len(conn.sends) == 1)
    reasons = {r["buffer_id"]: r["error"] for r in await sc.inbox.rejected()}
    assert set(reasons) == {"no-event", "no-chat", "odd"}
    assert "not 'inbound'" in reasons["odd"]


async def test_two_messages_without_message_id_are_both_answered(start: Any) -> None:
    """message_id null twice in one chat with distinct bufferIds: two messages, two answers."""
    conn = RawConnector(inbound("x1", "c1", None, "one") + inbound("x2", "c1", None, "two"))
    await start(conn)
    await conn.wait_until(lambda: len(conn.sends) == 2)
    assert [s["action"]["content"] for s in conn.sends] == ["echo: one", "echo: two"]


async def test_a_resent_frame_without_message_id_is_acked_again_not_answered_twice(start: Any) -> None:
    """The same bufferId twice (a resend): acked both times, answered once."""
    conn = RawConnector(inbound("x1", "c1", None, "one") + inbound("x1", "c1", None, "one"))
    await start(conn)
    await conn.wait_until(lambda: len(conn.sends) == 1 and len(conn.acked) == 2)
    await asyncio.sleep(0.1)  # would a second turn start? (a negative check, bounded)
    assert len(conn.sends) == 1


async def test_reply_carries_identity_metadata_and_the_chunk_key(start: Any) -> None:
    """A reply names platform, botId, metadata.user_id and, with idempotent sends, its key."""
    conn = RawConnector(inbound("k1", "c1", "5", "meta"))
    sc = await start(conn)
    await conn.wait_until(lambda: len(conn.sends) == 1)
    send = conn.sends[0]
    item = await sc.inbox.get(await first_id(sc))
    assert item is not None
    assert send["platform"] == "relay"
    assert send["botId"] == ""
    assert send["action"]["metadata"] == {"user_id": "u1"}
    assert send["idempotencyKey"] == f"inbox:{item.id}:0"


async def test_a_declined_reply_is_never_resent(start: Any) -> None:
    """An egress_declined result is definite: one attempt, the turn fails, nothing resent."""
    conn = RawConnector(inbound("d1", "c1", "6", "nope"))
    conn.outbound_result = lambda _f: {
        "success": False,
        "code": "egress_declined",
        "error": "egress declined: not announced",
    }
    sc = await start(conn)
    await conn.wait_until(lambda: len(conn.sends) == 1)
    for _ in range(50):
        row = await sc.inbox.turn(await first_id(sc))
        if row is not None and row.state.value == "undelivered":
            break
        await asyncio.sleep(0.02)
    assert row is not None
    assert row.state.value == "undelivered"
    assert len(conn.sends) == 1


@pytest.mark.parametrize("garbage", ["lots", 1e400, [1]], ids=["text", "inf", "list"])
async def test_garbage_usage_gets_the_apology_and_a_failed_turn(
    start: Any, llm: FakeLLM, garbage: Any
) -> None:
    """usage.prompt_tokens "lots", 1e400 or [1]: the user gets the apology, the turn fails."""
    llm.usage = {"prompt_tokens": "PLACEHOLDER", "completion_tokens": 1}
    llm.usage["prompt_tokens"] = garbage
    conn = RawConnector(inbound("g1", "c1", "7", "count me"))
    sc = await start(conn)
    await conn.wait_until(lambda: len(conn.sends) == 1)
    assert conn.sends[0]["action"]["content"].startswith("Sorry, the model provider failed")
    for _ in range(50):
        row = await sc.inbox.turn(await first_id(sc))
        if row is not None and row.state.value == "delivered":
            break
        await asyncio.sleep(0.02)
    assert row is not None
    assert (row.state.value, row.outcome) == ("delivered", "failed")
    assert "usage.prompt_tokens" in (row.error or "")


async def test_a_provider_echoing_the_key_leaves_no_key_in_state_or_log(
    tmp_path: Path, llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 body that echoes the API key: inbox.error, tasks.error and the log hold no key."""
    key = "k3y-Value-0123456789"
    (tmp_path / "config.yaml").write_text(
        f"model: {{default: m, provider: fake}}\n"
        f"providers: {{fake: {{base_url: '{llm.base_url}', api_key_env: FAKE_KEY}}}}\n"
    )
    llm.status = 401
    llm.error_body = {"error": f"invalid api key {key}", "echo": f"Authorization: Bearer {key}"}
    conn = RawConnector(inbound("s1", "c1", "8", "leak?"))
    await conn.server.start_server()
    env = {"GATEWAY_RELAY_URL": f"http://127.0.0.1:{conn.server.port}", "FAKE_KEY": key}
    sc = Sidecar(load_config(tmp_path, env), port=0, env=env)
    await sc.start()
    try:
        await conn.wait_until(lambda: len(conn.sends) == 1)
        for _ in range(50):
            async with sc.db.execute("SELECT status FROM tasks WHERE id = 1") as cur:
                task = await cur.fetchone()
            if task is not None and task[0] == "failed":
                break
            await asyncio.sleep(0.02)
        dump = "\n".join([line async for line in _iterdump(sc)])
    finally:
        await sc.shutdown()
        await conn.server.close()
    assert "401" in dump
    assert key not in dump
    assert key not in caplog.text


async def _iterdump(sc: Sidecar) -> AsyncIterator[str]:
    async for line in sc.db.iterdump():
        yield line


async def test_metrics_and_status_show_turns_spend_latency_and_substitutions(
    start: Any, llm: FakeLLM
) -> None:
    """After a substituted turn: /metrics counts the turn by source, profile and outcome, its
    spend per model, the provider latency and the substitution; /status lists the episode."""
    llm.answer_model = "cheaper-model"
    conn = RawConnector(inbound("m1", "c1", "11", "count"))
    sc = await start(conn)
    await conn.wait_until(lambda: len(conn.sends) == 1)
    base = f"http://127.0.0.1:{sc.port}"
    async with aiohttp.ClientSession() as s:
        for _ in range(50):  # the turn finishes just after its send is confirmed
            async with s.get(f"http://127.0.0.1:{sc.metrics_port}/metrics") as r:
                text = await r.text()
            if "hermes_turns_total{" in text:
                break
            await asyncio.sleep(0.02)
        async with s.get(f"{base}/status") as r:
            status = await r.json()
    assert 'hermes_turns_total{outcome="succeeded",profile="default",source="inbound"} 1.0' in text
    assert 'hermes_turn_cost_usd_total{model="test-model",profile="default"} 0.001' in text
    assert "hermes_provider_latency_seconds_count 1.0" in text
    assert 'hermes_model_substitutions_total{answered="cheaper-model",asked="test-model"} 1.0' in text
    assert [a["answered"] for a in status["substitution_alerts"]] == ["cheaper-model"]
