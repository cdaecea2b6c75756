"""Scale-out on real processes (issue #18): two ``hermes-relay serve`` processes on one
PostgreSQL database behind one address, a sidecar that sleeps and wakes, a fake provider.

How the sidecar reaches "any instance": its ``GATEWAY_RELAY_URL`` is one address
(``tests/tcpfront.py``, a round-robin TCP front like a load balancer) in front of both
instances, so each re-dial (every wake, every lost socket) may land on either one. Ingress is
posted round-robin straight to both instances. Midway, the instance holding the sidecar's socket
is killed with SIGKILL and restarted. Every accepted message must be answered by exactly one
send in the (shared) outbox. ``HERMES_SCALEOUT_MESSAGES`` raises the count (default 200; the
issue's figure is 1,000).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fake_llm import FakeLLM
from tests.procs import Proc, free_port, relay_cmd
from tests.stack import Stack
from tests.tcpfront import TcpFront

MESSAGES = int(os.environ.get("HERMES_SCALEOUT_MESSAGES", "200"))
ROUNDS = 4
CHATS = 10

pytestmark = pytest.mark.timeout(max(300, MESSAGES))


class Relays:
    """The two connector processes (ports fixed, so a restart takes the same place)."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.ports = [free_port(), free_port()]
        self.procs: list[Proc | None] = [None, None]

    async def start(self, i: int) -> None:
        proc = await Proc(relay_cmd(self.ports[i], self.db, "--gateway", "gw=s3cret")).start()
        await proc.wait_for_line("hermes-relay serving on")
        self.procs[i] = proc

    async def kill9(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.kill9()
        await proc.wait()

    def base(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def up(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None and p.proc and p.proc.returncode is None]

    async def close(self) -> None:
        for p in self.procs:
            if p is not None:
                await p.stop()


async def post(http: aiohttp.ClientSession, base: str, text: str, message_id: str, chat: str) -> bool:
    """One ingress POST; True when accepted (202). A refused connection (instance down) is False."""
    body = {"chat_id": chat, "user_id": "u1", "text": text, "message_id": message_id}
    try:
        async with http.post(f"{base}/ingress/relay", json=body) as r:
            return r.status == 202
    except aiohttp.ClientConnectionError:
        return False


async def replies(http: aiohttp.ClientSession, relays: Relays) -> Counter[str]:
    """Reply counts from the shared outbox, read through any instance that is up."""
    for i in relays.up():
        try:
            async with http.get(f"{relays.base(i)}/outbox") as r:
                rows: list[dict[str, Any]] = await r.json()
                return Counter(row["action"]["content"] for row in rows if row["action"]["op"] == "send")
        except aiohttp.ClientConnectionError:
            continue
    return Counter()


async def test_e2e_two_connectors_on_postgres_answer_every_message_once(tmp_path: Path, pg_url: str) -> None:
    """Messages posted round-robin to two connector instances while the sidecar sleeps and wakes,
    one instance kill -9'd and restarted: every accepted message is answered exactly once."""
    llm = await FakeLLM().start()
    relays = Relays(pg_url)
    front: TcpFront | None = None
    stack = Stack(tmp_path, llm)
    try:
        await relays.start(0)
        await relays.start(1)
        front = await TcpFront(relays.ports).start()
        stack.relay_url = f"http://127.0.0.1:{front.port}"
        stack.write_config(idle_minutes=0.03, cooldown_s=0.5)  # dormant after ~2 s idle
        sc = await stack.start_sidecar()
        expected: list[str] = []
        per_round = MESSAGES // ROUNDS
        n = 0
        async with aiohttp.ClientSession() as http:
            for rnd in range(ROUNDS):
                mark = len(sc.lines)
                await sc.wait_for_line("watcher draining -> dormant", start=mark, timeout=60)
                for k in range(per_round):
                    if rnd == 1 and k == per_round // 3:
                        # kill -9 the instance the sidecar's socket landed on last (it holds it)
                        victim = relays.ports.index(front.landed[-1])
                        await relays.kill9(victim)
                    if rnd == 1 and k == 2 * per_round // 3:
                        await relays.start(victim)
                    up = relays.up()
                    target = up[n % len(up)]
                    text = f"r{rnd}-m{k}"
                    if await post(http, relays.base(target), text, f"{rnd}-{k}", f"c{k % CHATS}"):
                        expected.append(f"echo: {text}")
                    n += 1

            async def all_answered() -> Counter[str]:
                while True:
                    counts = await replies(http, relays)
                    if all(counts[e] >= 1 for e in expected):
                        return counts
                    await asyncio.sleep(0.2)  # polling real processes' outbox, not a timing wait

            try:
                counts = await asyncio.wait_for(all_answered(), timeout=max(120, MESSAGES / 5))
            except TimeoutError:
                counts = await replies(http, relays)
                missing = [e for e in expected if counts[e] == 0]
                outs = "\n".join(p.output for p in relays.procs if p is not None)
                raise AssertionError(
                    f"{len(missing)} never answered, e.g. {missing[:3]}\n{sc.output}\n{outs}"
                ) from None
        assert len(expected) == per_round * ROUNDS  # every post found an instance up
        twice = {reply: c for reply, c in counts.items() if c > 1}
        assert twice == {}, f"answered more than once: {twice}"
        assert len(set(front.landed)) == 2, "the sidecar's socket never landed on both instances"
        # Shown with -rP: what the run covered.
        print(f"{len(expected)} messages answered once; sockets per instance: {Counter(front.landed)}")
    finally:
        await stack.close()
        if front is not None:
            await front.close()
        await relays.close()
        await llm.close()
