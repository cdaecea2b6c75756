"""Connector scale-out (issue #18): durable ingest and live relay throughput of real
``hermes-relay serve`` processes on SQLite (1 instance) and PostgreSQL (1 and 2 instances on one
database), in one run, on 127.0.0.1.

- ingest: ``POST /ingress/relay/<bot>`` from ``CONCURRENCY`` keep-alive callers spread over the
  instances, for ``GATEWAYS`` gateways whose sockets are away (every message is a durable commit
  and nothing more), timed until the last ``202``;
- live: the same gateways connected (sockets spread over the instances the way a load balancer
  would), messages posted to the instances round-robin, timed until every gateway received
  (and batch-acked) all of its frames.

PostgreSQL comes from ``--pg-url`` / ``HERMES_TEST_PG_URL`` or a throwaway cluster
(``tests/pgcluster.py``). Goal: 2 instances on PostgreSQL >= 1.5x one instance on PostgreSQL.
Each configuration runs ``--repeat`` times (default 3), interleaved; a figure is the median. Prints
one row per figure (``--json`` for JSON). The load generator runs in this process and
shares the machine with the connectors and the server: on a small machine it is part of what is
measured (the report says how many cores there were).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import emit_rows
from relay.protocol.token import mint_token
from tests.pgcluster import fresh_schema, start_or_reuse
from tests.procs import free_port

GATEWAYS = 8
"""Gateways (each its own identity ``relay/<bot>`` and socket) sharing the load."""
CONCURRENCY = 64
"""Ingress callers in flight at once."""
FIGURES = {
    "ingest": "ingest msgs/s",
    "live": "live msgs/s",
    "ingest_cpu": "ingest msgs/s per busiest-instance CPU s",
    "live_cpu": "live msgs/s per busiest-instance CPU s",
}
"""Figure key -> row label (the ``_cpu`` ones project a core per instance: see ``measure``)."""


async def _healthz(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"connector on port {port} did not start")
            await asyncio.sleep(0.05)


class Instances:
    """``n`` connector processes on ``db`` (dev mode: a token names any gateway id)."""

    def __init__(self, db: str, n: int) -> None:
        self.db = db
        self.ports = [free_port() for _ in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []

    async def __aenter__(self) -> Instances:
        for port in self.ports:
            cmd = [sys.executable, "-m", "relay", "serve", "--port", str(port), "--db", self.db]
            self.procs.append(subprocess.Popen([*cmd, "--log-level", "ERROR"]))
        for port in self.ports:
            await _healthz(port)
        return self

    def cpu_s(self) -> list[float]:
        """CPU seconds (user + system) each instance has used so far (Linux ``/proc``)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = []
        for p in self.procs:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / tick)
        return out

    async def __aexit__(self, *_exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=20)


class Gateway:
    """One gateway's socket: says hello for ``relay/<bot>``, acks what it gets in batches."""

    def __init__(self, http: aiohttp.ClientSession, gid: str) -> None:
        self.http = http
        self.gid = gid
        self.got = 0
        self.want = 0
        self.done = asyncio.Event()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, port: int) -> None:
        token = mint_token(self.gid, "bench", time.time())
        self.ws = await self.http.ws_connect(
            f"ws://127.0.0.1:{port}/relay", headers={"Authorization": f"Bearer {token}"}, max_msg_size=0
        )
        await self.ws.send_str(json.dumps({"type": "hello", "platform": "relay", "botId": self.gid}) + "\n")
        while True:
            msg = await self.ws.receive()
            if '"descriptor"' in msg.data:
                break
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            ids = []
            for line in str(msg.data).splitlines():
                if '"inbound"' in line:
                    ids.append(json.loads(line)["bufferId"])
            if ids:
                self.got += len(ids)
                await self.ws.send_str(json.dumps({"type": "inbound_ack", "bufferIds": ids}) + "\n")
                if self.want and self.got >= self.want:
                    self.done.set()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()


async def _post_all(http: aiohttp.ClientSession, ports: list[int], n: int, tag: str) -> float:
    """Post ``n`` messages spread over gateways and instances; seconds until the last 202."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def caller() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            port, bot = ports[i % len(ports)], f"g{i % GATEWAYS}"
            body = {"chat_id": i % 50, "user_id": "u", "text": f"{tag} {i}", "message_id": f"{tag}-{i}"}
            async with http.post(f"http://127.0.0.1:{port}/ingress/relay/{bot}", json=body) as r:
                if r.status != 202:
                    raise RuntimeError(f"ingress answered {r.status}: {await r.text()}")

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


async def measure(db: str, n_instances: int, n: int) -> dict[str, float]:
    """Per second for ``n_instances`` connectors on ``db``: ``ingest`` and ``live`` as measured,
    and ``ingest_cpu``/``live_cpu``, ``n`` over the CPU seconds of the busiest instance (what the
    instances could carry if each had a core of its own: a projection, not a measurement)."""
    async with Instances(db, n_instances) as inst:
        conn = aiohttp.TCPConnector(limit=CONCURRENCY + GATEWAYS + 8)
        async with aiohttp.ClientSession(connector=conn) as http:
            gws = [Gateway(http, f"g{g}") for g in range(GATEWAYS)]
            for g, gw in enumerate(gws):  # announce the identities, then go away
                await gw.connect(inst.ports[g % n_instances])
                await gw.close()
            await _post_all(http, inst.ports, min(200, n), "warm")
            cpu0 = inst.cpu_s()
            ingest_s = await _post_all(http, inst.ports, n, "ingest")
            ingest_cpu = max(b - a for a, b in zip(cpu0, inst.cpu_s(), strict=True))
            # live: reconnect (the backlog replays first), then time fresh messages end to end
            gws = [Gateway(http, f"g{g}") for g in range(GATEWAYS)]
            backlog = (n + min(200, n)) // GATEWAYS
            for g, gw in enumerate(gws):
                gw.want = backlog
                await gw.connect(inst.ports[g % n_instances])
            await asyncio.wait_for(asyncio.gather(*(gw.done.wait() for gw in gws)), 300)
            for gw in gws:
                gw.done.clear()
                gw.want = gw.got + n // GATEWAYS
            started, cpu0 = time.perf_counter(), inst.cpu_s()
            await _post_all(http, inst.ports, n, "live")
            await asyncio.wait_for(asyncio.gather(*(gw.done.wait() for gw in gws)), 300)
            live_s = time.perf_counter() - started
            live_cpu = max(b - a for a, b in zip(cpu0, inst.cpu_s(), strict=True))
            for gw in gws:
                await gw.close()
    return {
        "ingest": n / ingest_s,
        "live": n / live_s,
        "ingest_cpu": n / max(ingest_cpu, 1e-3),
        "live_cpu": n / max(live_cpu, 1e-3),
    }


async def run(n: int, pg_url: str | None, repeat: int) -> list[dict[str, Any]]:
    """Every configuration ``repeat`` times, interleaved (so a burst of other load on the machine
    hits all of them alike); each figure is the median of its runs."""
    samples: dict[str, list[dict[str, float]]] = {"sqlite x1": [], "postgres x1": [], "postgres x2": []}
    if pg_url:
        os.environ["HERMES_TEST_PG_URL"] = pg_url
    url, cluster = start_or_reuse()
    try:
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as tmp:
                samples["sqlite x1"].append(await measure(str(Path(tmp) / "relay.db"), 1, n))
            for k in (1, 2):
                async with fresh_schema(url) as schema_url:
                    samples[f"postgres x{k}"].append(await measure(schema_url, k, n))
    finally:
        if cluster is not None:
            cluster.stop()
    results = {
        name: {fig: statistics.median(r[fig] for r in runs) for fig in FIGURES}
        for name, runs in samples.items()
    }
    rows: list[dict[str, Any]] = []
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]  # other work on the machine skews every figure: say how much
    for figure, label in FIGURES.items():
        base = results["postgres x1"][figure]
        for name, res in results.items():
            rows.append(
                {
                    "figure": f"{label}, {name} ({cores} cores, load {load:.1f})",
                    "ours": round(res[figure]),
                    "baseline": round(base),
                    "ratio": round(res[figure] / base, 2),
                    "goal": ">= 1.5x postgres x1" if name == "postgres x2" else "reference",
                    "met": res[figure] / base >= 1.5 if name == "postgres x2" else True,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer messages (a smoke run)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--messages", type=int, default=None, help="messages per figure (default 3000)")
    p.add_argument("--pg-url", default=None, help="a PostgreSQL URL (default: a throwaway cluster)")
    p.add_argument("--repeat", type=int, default=None, help="runs per configuration (median; default 3)")
    args = p.parse_args(argv)
    n = args.messages or (800 if args.quick else 3000)
    repeat = args.repeat or (1 if args.quick else 3)
    emit_rows(asyncio.run(run(n, args.pg_url, repeat)), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
