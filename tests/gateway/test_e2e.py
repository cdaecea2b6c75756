"""End to end on real processes on 127.0.0.1: ``hermes-relay serve``, ``hermes-sidecar run`` and
a fake OpenAI-compatible provider. Nothing is lost across sleep, restarts or kill -9."""

from __future__ import annotations

import json
import signal
import time

import pytest

from relay.protocol.token import mint_token
from tests.stack import Stack

pytestmark = pytest.mark.timeout(90)


async def test_e2e_answer_sleep_buffer_wake_replay_exactly_once(stack: Stack) -> None:
    """Live answer; idle -> dormant (presence closed); buffered message pokes, replays, answered once."""
    stack.write_config(idle_minutes=0.05)  # 3 s
    await stack.start_relay()
    sc = await stack.start_sidecar()
    body = await stack.ingress("hello", 1)
    assert body["delivered"] == "live"
    await sc.wait_for_line("turn succeeded")
    assert await stack.replies() == ["echo: hello"]

    n = len(sc.lines)
    await sc.wait_for_line("watcher draining -> dormant", start=n)
    status, doc = await stack.get(f"{stack.base}/status")
    assert (status, doc["state"], doc["relay"]["connected"]) == (200, "dormant", False)
    assert doc["last_inbound_at"].endswith("Z")
    status, _ = await stack.get(f"{stack.base}/presence")
    assert status == 401  # a relay secret is set: presence needs its token
    token = mint_token("gw", "s3cret", time.time())
    status, _ = await stack.get(f"{stack.base}/presence", {"Authorization": f"Bearer {token}"})
    assert status == 409  # presence is closed while dormant
    status, _ = await stack.get(f"{stack.base}/healthz")
    assert status == 200  # dormant is healthy

    n = len(sc.lines)
    body = await stack.ingress("while dormant", 2)
    assert body["delivered"] == "buffered"
    await sc.wait_for_line("woken by poke", start=n)
    await sc.wait_for_line("turn succeeded", start=n)
    assert await stack.replies() == ["echo: hello", "echo: while dormant"]
    _, doc = await stack.get(f"{stack.base}/status")
    assert doc["relay"]["dial_attempts"] == 2
    assert len(stack.llm.requests) == 2


async def _kill9_before_answer(stack: Stack, dormant_first: bool) -> None:
    stack.write_config(idle_minutes=0.05 if dormant_first else 10)
    await stack.start_relay()
    sc = await stack.start_sidecar()
    if dormant_first:
        await sc.wait_for_line("watcher draining -> dormant")
    stack.llm.hold = hold = __import__("asyncio").Event()
    body = await stack.ingress("precious", 7)
    assert body["delivered"] == ("buffered" if dormant_first else "live")
    await stack.llm.wait_requests(1)  # persisted, acked, and the turn is at the provider
    sc.kill9()
    await sc.wait()
    stack.llm.hold = None
    hold.set()
    assert await stack.replies() == []
    sc2 = await stack.start_sidecar()
    await sc2.wait_for_line("resuming 1 unfinished inbox item")
    await sc2.wait_for_line("requeued 1 task(s) whose claim lapsed: 1")  # its board task
    await sc2.wait_for_line("turn succeeded")
    assert await stack.replies() == ["echo: precious"], sc2.output
    assert len(stack.llm.requests) == 2  # the interrupted call and the one that answered


async def test_e2e_kill9_after_live_ack_before_answer_answers_once(stack: Stack) -> None:
    """kill -9 after acking a live message, before answering: the restart answers it once."""
    await _kill9_before_answer(stack, dormant_first=False)


async def test_e2e_kill9_after_replayed_message_persisted_answers_once(stack: Stack) -> None:
    """kill -9 after persisting a replayed message, before answering: answered once."""
    await _kill9_before_answer(stack, dormant_first=True)


async def test_e2e_sigterm_lets_running_turn_finish_and_exits_0(stack: Stack) -> None:
    """SIGTERM while a turn runs: the turn finishes (its reply goes out) and the exit is 0."""
    import asyncio

    stack.write_config(idle_minutes=10)
    await stack.start_relay()
    sc = await stack.start_sidecar()
    stack.llm.hold = hold = asyncio.Event()
    await stack.ingress("slow one", 3)
    await stack.llm.wait_requests(1)
    assert sc.proc is not None
    sc.proc.send_signal(signal.SIGTERM)
    await sc.wait_for_line("signal received")
    hold.set()
    assert await sc.wait() == 0
    assert await stack.replies() == ["echo: slow one"]
    assert any("shutdown complete" in line for line in sc.lines)
    assert not (stack.home / "sidecar.json").exists()


async def test_e2e_sidecar_json_is_private_and_names_the_port(stack: Stack) -> None:
    """sidecar.json holds port, pid and a token, mode 0600; the home is 0700, its databases 0600."""
    stack.write_config(idle_minutes=10)
    await stack.start_relay()
    await stack.start_sidecar()
    path = stack.home / "sidecar.json"
    info = json.loads(path.read_text())
    assert info["port"] == stack.port
    assert info["pid"] > 0
    assert len(info["token"]) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    # message content is readable by this user only (SPEC 8.1)
    assert stack.home.stat().st_mode & 0o777 == 0o700
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        assert (stack.home / name).stat().st_mode & 0o777 == 0o600, name


async def test_e2e_history_survives_a_restart_and_a_dormant_flip(stack: Stack) -> None:
    """Real processes: the Ada exchange, a kill -9 and restart, then a message buffered while
    dormant: every request carries the conversation so far."""
    stack.write_config(idle_minutes=0.05)
    await stack.start_relay()
    sc = await stack.start_sidecar()
    await stack.ingress("my name is Ada", "a1")
    await sc.wait_for_line("turn succeeded")
    sc.kill9()
    await sc.wait()
    sc = await stack.start_sidecar()
    await stack.ingress("what is my name?", "a2")
    await sc.wait_for_line("turn succeeded")
    assert [m["content"] for m in stack.llm.requests[-1]["messages"]] == [
        "my name is Ada",
        "echo: my name is Ada",
        "what is my name?",
    ]
    mark = len(sc.lines)
    await sc.wait_for_line("watcher draining -> dormant", start=mark)
    assert (await stack.ingress("and again?", "a3"))["delivered"] == "buffered"
    await sc.wait_for_line("turn succeeded", start=mark)
    assert [m["content"] for m in stack.llm.requests[-1]["messages"]] == [
        "my name is Ada",
        "echo: my name is Ada",
        "what is my name?",
        "echo: what is my name?",
        "and again?",
    ]
    assert await stack.replies() == ["echo: my name is Ada", "echo: what is my name?", "echo: and again?"]
