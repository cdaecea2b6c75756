"""Exactly once under faults, on real processes (SPEC 8.1): kill -9 of either side at random
points, a cooldown of 0, a lost going_idle_ack. Every accepted message is answered by exactly
one confirmed send. ``HERMES_KILL_TRIALS`` raises the number of kill trials (default 10)."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from typing import Any

import pytest

from tests.linkproxy import LinkProxy
from tests.procs import Proc, relay_cmd
from tests.stack import Stack

pytestmark = pytest.mark.timeout(240)

TRIALS = int(os.environ.get("HERMES_KILL_TRIALS", "10"))
MESSAGES = 50
CHATS = 5


async def wait_answered(stack: Stack, expected: list[str], timeout: float = 60.0) -> Counter[str]:
    """Poll the outbox until every expected reply is there (bounded); the reply counts."""

    async def loop() -> Counter[str]:
        while True:
            counts = Counter(await stack.replies(chat_id=None))
            if all(counts[e] >= 1 for e in expected):
                return counts
            await asyncio.sleep(0.1)

    try:
        return await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        counts = Counter(await stack.replies(chat_id=None))
        missing = [e for e in expected if counts[e] == 0]
        sc = stack.sidecar.output if stack.sidecar else ""
        relay = stack.relay.output if stack.relay else ""
        raise AssertionError(
            f"{len(missing)} never answered, e.g. {missing[:3]}\nsidecar:\n{sc}\nrelay:\n{relay}"
        ) from None


async def post_all(stack: Stack, trial: int) -> list[str]:
    """Post MESSAGES messages over CHATS chats; the replies they should get, in order."""
    expected = []
    for i in range(MESSAGES):
        text = f"t{trial}-m{i}"
        await stack.ingress(text, f"{trial}-{i}", chat_id=f"c{i % CHATS}")
        expected.append(f"echo: {text}")
    return expected


def assert_exactly_once(counts: Counter[str], expected: list[str]) -> None:
    twice = {reply: n for reply, n in counts.items() if n > 1}
    assert twice == {}, f"answered more than once: {twice}"
    assert all(counts[e] == 1 for e in expected)


async def test_e2e_kill9_sidecar_at_random_points_answers_every_message_once(stack: Stack) -> None:
    """kill -9 of the sidecar at a random moment after it acked messages, TRIALS times: after
    each restart every message is answered by exactly one send."""
    rng = random.Random(11)
    stack.write_config(idle_minutes=10)
    stack.llm.delay = 0.02  # turns are in flight when the kill lands
    await stack.start_relay()
    expected: list[str] = []
    for trial in range(TRIALS):
        sc = await stack.start_sidecar()
        mark = len(sc.lines)
        poster = asyncio.create_task(post_all(stack, trial))
        await sc.wait_for_line("admitted", start=mark)
        await asyncio.sleep(rng.uniform(0.0, 0.4))  # the random kill point (real time: a fault)
        sc.kill9()
        await sc.wait()
        expected += await poster
        sc = await stack.start_sidecar()
        counts = await wait_answered(stack, expected)
        assert_exactly_once(counts, expected)
        sc.kill9()  # the next trial starts from a kill too
        await sc.wait()


async def test_e2e_kill9_connector_mid_replay_answers_every_message_once(stack: Stack) -> None:
    """kill -9 of the connector while it replays a buffered backlog: after its restart every
    message is answered once (ambiguous sends are resent with their idempotency key)."""
    rng = random.Random(7)
    stack.write_config(idle_minutes=0.05, cooldown_s=1)
    await stack.start_relay()
    sc = await stack.start_sidecar()
    expected: list[str] = []
    for trial in range(max(2, TRIALS // 3)):
        mark = len(sc.lines)
        await sc.wait_for_line("watcher draining -> dormant", start=mark, timeout=60)
        stack.llm.delay = 0.005
        expected += await post_all(stack, trial)
        await sc.wait_for_line("woken by poke", start=mark, timeout=30)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        assert stack.relay is not None
        stack.relay.kill9()
        await stack.relay.wait()
        await stack.start_relay()
        counts = await wait_answered(stack, expected)
        assert_exactly_once(counts, expected)


async def test_e2e_cooldown_zero_answers_every_buffered_message(stack: Stack) -> None:
    """cooldown_seconds 0: a wake's replay is handled before the next flip, every time."""
    stack.write_config(idle_minutes=0.02, cooldown_s=0)  # 1.2 s idle timeout
    await stack.start_relay()
    sc = await stack.start_sidecar()
    expected: list[str] = []
    for rnd in range(3):
        mark = len(sc.lines)
        await sc.wait_for_line("watcher draining -> dormant", start=mark, timeout=30)
        for i in range(5):
            await stack.ingress(f"r{rnd}-{i}", f"r{rnd}-{i}", chat_id=f"c{i}")
            expected.append(f"echo: r{rnd}-{i}")
        counts = await wait_answered(stack, expected, timeout=30)
        assert_exactly_once(counts, expected)


async def test_e2e_lost_going_idle_ack_still_answers_what_was_buffered(stack: Stack) -> None:
    """The connector flips but its going_idle_ack is lost; messages buffered meanwhile (and
    the pokes they cause mid-flip) are all answered once the sidecar re-handshakes."""
    lost: list[dict[str, Any]] = []
    flip_in_flight = asyncio.Event()

    def drop(direction: str, frame: dict[str, Any]) -> bool:
        if direction == "down" and frame.get("type") == "going_idle_ack" and not lost:
            lost.append(frame)
            flip_in_flight.set()
            return True
        return False

    stack.write_config(idle_minutes=0.02, cooldown_s=0, ack_timeout_s=2)
    await stack.start_relay()
    proxy = await LinkProxy(f"ws://127.0.0.1:{stack.relay_port}/relay", drop).start()
    try:
        stack.relay_url = proxy.url
        sc = await stack.start_sidecar()
        await asyncio.wait_for(flip_in_flight.wait(), 30)  # the connector flipped; ack lost
        expected = []
        for i in range(3):
            await stack.ingress(f"during flip {i}", f"f{i}", chat_id="c1")
            expected.append(f"echo: during flip {i}")
        counts = await wait_answered(stack, expected, timeout=30)
        assert_exactly_once(counts, expected)
        await sc.wait_for_line("going_idle_ack not received")
        mark = len(sc.lines)
        await sc.wait_for_line("watcher draining -> dormant", start=mark, timeout=30)
        assert len(lost) == 1
    finally:
        await proxy.close()


async def test_e2e_busy_connector_port_fails_fast(stack: Stack) -> None:
    """hermes-relay serve on a port in use exits non-zero within 5 s, naming the port."""
    await stack.start_relay()
    second = await Proc(relay_cmd(stack.relay_port, str(stack.tmp / "other.db"))).start()
    assert await second.wait(timeout=5) != 0
    assert any(str(stack.relay_port) in line for line in second.lines), second.output
