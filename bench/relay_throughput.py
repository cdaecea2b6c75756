"""Inbound frames per second through the relay transport and reference connector.

Three figures from one run, on 127.0.0.1:
- baseline: a bare aiohttp WS server sending NDJSON inbound lines to a bare aiohttp client that
  ``json.loads`` each one (no persistence, no acks);
- live: entries already persisted by the connector are pushed over an established live session
  (its sender) -> ``RelayTransport`` -> handler -> ``inbound_ack`` back, timed until every entry
  is acked in the connector's store (the durable ingest itself is reported separately), twice:
  with the sidecar's real durable admit as the handler (state.db inbox rows and board tasks,
  one FULL commit per batch) and with a no-op handler;
- ingest: ``Connector.ingest`` with 512 concurrent callers (durable group commit), for reference;
- replay: the same number of entries buffered while the gateway is away, then one handshake,
  timed until every entry was handed to the handler and acked (no-op, then durable admit).

Prints one JSON object per figure on stdout (``--json``) or a table. Goals (issue #16): live
with durable admit >= 0.3x baseline, live no-op >= 0.5x, replay >= 60,000 frames/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiosqlite
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.common import emit_rows
from common import loop
from gateway.inbox.store import InboxStore
from gateway.kanban.sources import add_inbound_tasks
from gateway.statedb import open_state_db
from relay.client.machine import ConnState
from relay.client.transport import RelayTransport, TransportConfig
from relay.connector.server import Connector
from relay.protocol import frames as F

EVENT = {
    "text": "hello there",
    "message_type": "text",
    "message_id": "1",
    "source": {"platform": "relay", "chat_id": "42", "chat_type": "dm", "user_id": "u1", "user_name": None},
}


async def raw_baseline(n: int) -> float:
    line = json.dumps(F.inbound(EVENT, "0" * 32)) + "\n"

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for _ in range(n):
            await ws.send_str(line)
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        async with s.ws_connect(f"ws://127.0.0.1:{server.port}/") as ws:
            got = 0
            while got < n:
                msg = await ws.receive()
                json.loads(msg.data)
                got += 1
            elapsed = time.perf_counter() - t0
    await server.close()
    return n / elapsed


class _Gateway:
    """The transport with a handler: a no-op (``inbox`` None) or the sidecar's real durable
    admit (``InboxStore.admit`` with the board tasks in the same FULL commit, as
    ``gateway/runtime/inbound.py`` calls it)."""

    def __init__(self, url: str, inbox: InboxStore | None = None) -> None:
        self.count = 0
        self.done = asyncio.Event()
        self.target = 0
        self.inbox = inbox
        self.t = RelayTransport(TransportConfig(url=url, ping_interval_s=None), on_inbound=self._on)

    async def _on(self, batch: list[dict[str, Any]]) -> None:
        if self.inbox is not None:
            now = time.time()
            await self.inbox.admit(batch, now, in_tx=lambda conn, items: add_inbound_tasks(conn, items, now))
        self.count += len(batch)
        if self.count >= self.target:
            self.done.set()


async def _state_db(db: str | None) -> aiosqlite.Connection | None:
    return None if db is None else await open_state_db(Path(db))


async def _all_acked(connector: Connector) -> None:
    while True:
        await connector.store.flush()
        if await connector.store.unacked_count("dev") == 0:
            return
        await asyncio.sleep(0.001)


async def relay_live(n: int, db: str, state_db: str | None = None) -> tuple[float, float]:
    """Returns (live frames/s, durable ingest messages/s); with ``state_db`` the handler is
    the sidecar's durable admit into that state.db, else a no-op."""
    connector = await Connector.create(db)
    server = TestServer(connector.app, host="127.0.0.1")
    await server.start_server()
    sdb = await _state_db(state_db)
    gw = _Gateway(f"ws://127.0.0.1:{server.port}/relay", None if sdb is None else InboxStore(sdb))
    await gw.t.start()
    await gw.t.wait_until(lambda: gw.t.state is ConnState.CONNECTED)
    session = connector.sessions["dev"]
    # Durable ingest while the session is live, its sender held back (not timed as "live").
    sem = asyncio.Semaphore(512)

    async def one(i: int) -> None:
        async with sem:
            event = {**EVENT, "message_id": str(i)}  # distinct messages: none is a duplicate
            line = json.dumps(F.inbound(event, f"b{i}")) + "\n"
            await connector.store.append(
                buffer_id=f"b{i}",
                gateway_id="dev",
                platform="relay",
                bot_id="",
                chat_id="42",
                frame=line,
                now=time.time(),
            )

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    ingest = n / (time.perf_counter() - t0)
    gw.target = n
    t0 = time.perf_counter()
    session.notify.set()
    await gw.done.wait()
    await _all_acked(connector)
    elapsed = time.perf_counter() - t0
    await gw.t.disconnect()
    await server.close()
    await connector.close()
    if sdb is not None:
        await sdb.close()
    return n / elapsed, ingest


async def relay_replay(n: int, db: str, state_db: str | None = None) -> float:
    """Buffered replay frames/s; ``state_db`` as in ``relay_live``."""
    connector = await Connector.create(db)
    server = TestServer(connector.app, host="127.0.0.1")
    await server.start_server()
    url = f"ws://127.0.0.1:{server.port}/relay"
    first = _Gateway(url)
    await first.t.start()
    await first.t.wait_until(lambda: first.t.state is ConnState.CONNECTED)
    await first.t.go_dormant()
    await first.t.disconnect()
    sem = asyncio.Semaphore(512)

    async def one(i: int) -> None:
        async with sem:
            await connector.ingest(
                "relay", "", {"chat_id": 42, "user_id": "u1", "text": "hello there", "message_id": i}
            )

    await asyncio.gather(*(one(i) for i in range(n)))
    for poker in connector.pokers.values():
        poker.cancel()
    sdb = await _state_db(state_db)
    gw = _Gateway(url, None if sdb is None else InboxStore(sdb))
    gw.target = n
    t0 = time.perf_counter()
    await gw.t.start()
    await gw.done.wait()
    await _all_acked(connector)
    elapsed = time.perf_counter() - t0
    await gw.t.disconnect()
    await server.close()
    await connector.close()
    if sdb is not None:
        await sdb.close()
    return n / elapsed


async def run(n: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        base = await raw_baseline(n)
        live, ingest = await relay_live(n, str(Path(tmp) / "live.db"))
        durable, _ = await relay_live(n, str(Path(tmp) / "live2.db"), str(Path(tmp) / "state-live.db"))
        replay = await relay_replay(n, str(Path(tmp) / "replay.db"))
        replay_durable = await relay_replay(
            n, str(Path(tmp) / "replay2.db"), str(Path(tmp) / "state-replay.db")
        )

    def row(figure: str, ours: float, goal: str, met: bool) -> dict[str, Any]:
        return {
            "figure": figure,
            "ours": round(ours),
            "baseline": round(base),
            "ratio": round(ours / base, 3),
            "goal": goal,
            "met": met,
        }

    return [
        row(
            "relay live frames/s, sidecar durable admit",
            durable,
            ">= 0.3x raw aiohttp",
            durable / base >= 0.3,
        ),
        row("relay live frames/s, no-op handler", live, ">= 0.5x raw aiohttp", live / base >= 0.5),
        row("connector durable ingest msgs/s", ingest, "(reference only)", True),
        row("relay buffered replay frames/s, no-op handler", replay, ">= 60000 frames/s", replay >= 60_000),
        row(
            "relay buffered replay frames/s, sidecar durable admit", replay_durable, "(reference only)", True
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=20_000)
    p.add_argument("--quick", action="store_true", help="5,000 frames")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = loop.run(run(5_000 if args.quick else args.frames))
    emit_rows(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
