"""Footprint of the real ``hermes-sidecar run`` beside a bare aiohttp app, in the same run.

Figures: RSS while idle with the relay connected; seconds from process start to the first
``/healthz`` 200 (state ready: migrations done); CPU wake-ups per second while live-idle and
while dormant, from ``voluntary_ctxt_switches`` in ``/proc/<pid>/status`` (each wake of an idle
event loop is a voluntary switch). Goals (issues "Benchmarks", #16): RSS <= 45 MB, start <= 0.4 s,
0 wake-ups/s while dormant.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import emit_rows

BARE_APP = """
import sys
from aiohttp import web
async def healthz(request):
    return web.json_response({"ok": True})
app = web.Application()
app.router.add_get("/healthz", healthz)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def rss_mb(pid: int) -> float:
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


def switches(pid: int) -> int:
    return int(proc_status(pid)["voluntary_ctxt_switches"])


async def wakeups_per_s(pid: int, seconds: float) -> float:
    before = switches(pid)
    await asyncio.sleep(seconds)
    return (switches(pid) - before) / seconds


async def first_healthz(port: int, started: float, timeout: float = 20.0) -> float:
    """Seconds from ``started`` to the first 200 on /healthz (polled every 2 ms)."""
    async with aiohttp.ClientSession() as s:
        while time.perf_counter() - started < timeout:
            try:
                async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.002)
    raise TimeoutError("no /healthz 200")


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


async def wait_state(port: int, state: str, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        doc = await get_json(f"http://127.0.0.1:{port}/status")
        if doc["state"] == state and (state != "live" or doc["relay"]["connected"]):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"sidecar never reached {state}")


async def measure_bare(sample_s: float) -> dict[str, float]:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)])
    try:
        start_s = await first_healthz(port, started)
        await asyncio.sleep(1.0)
        return {
            "rss": rss_mb(proc.pid),
            "start": start_s,
            "idle_wakeups": await wakeups_per_s(proc.pid, sample_s),
        }
    finally:
        proc.terminate()
        proc.wait()


async def measure_sidecar(sample_s: float, tmp: str) -> dict[str, float]:
    relay_port, port = free_port(), free_port()
    home = Path(tmp) / "home"
    home.mkdir()
    (home / "config.yaml").write_text(
        "gateway: {scale_to_zero: {idle_timeout_minutes: 0.05, cooldown_seconds: 0}}\n"
    )
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--port",
            str(relay_port),
            "--db",
            str(Path(tmp) / "relay.db"),
            "--log-level",
            "WARNING",
        ]
    )
    env = {
        **os.environ,
        "HERMES_HOME": str(home),
        "GATEWAY_RELAY_URL": f"http://127.0.0.1:{relay_port}",
        "HERMES_SCALE_TO_ZERO": "0",
    }
    try:
        await first_healthz(relay_port, time.perf_counter())
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--port", str(port), "--log-level", "WARNING"], env=env
        )
        try:
            start_s = await first_healthz(port, started)
            await wait_state(port, "live")
            await asyncio.sleep(1.0)
            live = await wakeups_per_s(proc.pid, sample_s)
            rss = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait()
        # Dormant: the same sidecar with scale-to-zero armed and a 3 s idle timeout.
        env["HERMES_SCALE_TO_ZERO"] = "1"
        env["GATEWAY_RELAY_WAKE_URL"] = f"http://127.0.0.1:{port}/wake"
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--port", str(port), "--log-level", "WARNING"], env=env
        )
        try:
            await first_healthz(port, time.perf_counter())
            await wait_state(port, "dormant")
            await asyncio.sleep(1.0)
            dormant = await wakeups_per_s(proc.pid, sample_s)
        finally:
            proc.terminate()
            proc.wait()
    finally:
        relay.terminate()
        relay.wait()
    return {"rss": rss, "start": start_s, "idle_wakeups": live, "dormant_wakeups": dormant}


async def run(sample_s: float) -> list[dict[str, Any]]:
    bare = await measure_bare(sample_s)
    with tempfile.TemporaryDirectory() as tmp:
        ours = await measure_sidecar(sample_s, tmp)

    def row(figure: str, o: float, b: float | None, goal: str, met: bool) -> dict[str, Any]:
        return {
            "figure": figure,
            "ours": round(o, 3),
            "baseline": None if b is None else round(b, 3),
            "ratio": None if not b else round(o / b, 2),
            "goal": goal,
            "met": met,
        }

    return [
        row(
            "sidecar RSS MB (idle, relay connected)", ours["rss"], bare["rss"], "<= 45 MB", ours["rss"] <= 45
        ),
        row("start to first /healthz 200, s", ours["start"], bare["start"], "<= 0.4 s", ours["start"] <= 0.4),
        row(
            "wake-ups/s while live-idle", ours["idle_wakeups"], bare["idle_wakeups"], "(reference only)", True
        ),
        row(
            "wake-ups/s while dormant",
            ours["dormant_wakeups"],
            bare["idle_wakeups"],
            "0",
            ours["dormant_wakeups"] == 0,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 s samples instead of 5 s")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    emit_rows(asyncio.run(run(2.0 if args.quick else 5.0)), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
