"""Scheduler firing lateness and CPU for 10,000 jobs, beside APScheduler 3 in the same run.

Ours: the real ``CronScheduler`` over the real state.db store and ``job_runs`` ledger, opened
as the sidecar opens it (``synchronous=FULL``: each claim and finish waits for the disk; the
tick commits unsynced, see ``CronScheduler.tick``), with a no-op turn (claim the occurrence,
finish it ``succeeded``). Until session 6 this bench opened state.db ``NORMAL``, which the
sidecar never does: its CPU figure left out two fsyncs per occurrence. Jobs are one-shots spread evenly
over a firing window; lateness is the wall time between an occurrence's due time and its
claim. Then a quiet period with nothing due counts the scheduler's loop wake-ups.

Baseline: APScheduler 3's in-memory ``AsyncIOScheduler`` with ``DateTrigger`` jobs at the same
times, lateness measured in the job function. (Install with ``pip install -e '.[bench]'``.)

Goals (issue #16): p99 <= 2.5 ms, CPU <= 1.8x APScheduler's, the state.db WAL <= 64 MB
during the window (checkpointed as the sidecar does, ``common.wal``), no wake-ups while
nothing is due. Runs on ``common.loop`` (uvloop when installed), as the sidecar does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import emit_rows, pct
from common import loop
from common.clock import SystemClock
from common.timefmt import rfc3339
from common.wal import WalCheckpointer
from gateway.config import load_config
from gateway.cron.runner import CronContext
from gateway.cron.scheduler import CronScheduler, first_run_at
from gateway.cron.store import CronStore, Job, new_job_id
from gateway.statedb import open_state_db
from gateway.telemetry.writer import TelemetryWriter


async def ours(n: int, start_in: float, window: float, quiet: float, tmp: str) -> dict[str, Any]:
    clock = SystemClock()
    config = load_config(Path(tmp), {})
    path = Path(tmp) / "state.db"
    db = await open_state_db(path)  # synchronous=FULL, as the sidecar opens it
    # As the sidecar runs it: WAL checkpoints off the scheduler's connection, log bounded.
    checkpointer = WalCheckpointer(str(path), db, clock)
    await checkpointer.start()
    # Running from the start, as in the sidecar: the 10,000 adds below log about 140 MB.
    housekeeping = asyncio.create_task(checkpointer.run())
    store = CronStore(db)
    t0 = clock.wall() + start_in
    for i in range(n):
        at = t0 + window * i / n
        job = Job(
            id=new_job_id(),
            prompt="noop",
            schedule=rfc3339(at),
            tz="UTC",
            created_at=clock.wall(),
            updated_at=clock.wall(),
        )
        job.next_run_at = first_run_at(job)
        await store.add(job)
    lateness: list[float] = []
    all_fired = asyncio.Event()
    wal_max = 0

    async def noop_turn(ctx: CronContext, job: Job, scheduled_for: float) -> int | None:
        now = clock.wall()
        run_id = await store.claim(job.id, scheduled_for, now, 60)
        if run_id is not None:
            nonlocal wal_max
            lateness.append(now - scheduled_for)
            if len(lateness) % 50 == 0:
                wal_max = max(wal_max, checkpointer.wal_bytes())
            await store.finish(run_id, "succeeded", clock.wall())
            if len(lateness) >= n:
                all_fired.set()
        return run_id

    async with aiohttp.ClientSession() as http:

        async def deliver(platform: str, chat_id: str, text: str) -> None:
            return None

        ctx = CronContext(
            config=config,
            store=store,
            clock=clock,
            http=http,
            env={},
            deliver=deliver,
            telemetry=TelemetryWriter(db, clock=clock),
        )
        sched = CronScheduler(ctx, max_concurrent=64, run_fn=noop_turn)
        task = asyncio.create_task(sched.run())
        checkpointer.checkpoints.clear()  # count the window's checkpoints, not the adds'
        cpu0 = time.process_time()
        await all_fired.wait()
        await sched.wait_quiet()
        cpu = time.process_time() - cpu0
        ticks_before = sched.ticks
        await asyncio.sleep(quiet)
        idle_ticks = sched.ticks - ticks_before
        task.cancel()
        housekeeping.cancel()
        await asyncio.gather(task, housekeeping, return_exceptions=True)
        await checkpointer.aclose()
    async with db.execute("SELECT COUNT(*) FROM job_runs WHERE status = 'succeeded'") as cur:
        row = await cur.fetchone()
    await db.close()
    if row is None or row[0] != n:
        raise RuntimeError(f"ledger has {row} succeeded rows, expected {n}")
    return {
        "lateness": lateness,
        "cpu": cpu,
        "idle_wakeups": idle_ticks / quiet,
        "wal_mb": wal_max / 1e6,
        "checkpoints": dict(checkpointer.checkpoints),
    }


async def apscheduler3(n: int, start_in: float, window: float) -> dict[str, Any]:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.date import DateTrigger

    lateness: list[float] = []
    done = asyncio.Event()

    async def job(due: float) -> None:
        lateness.append(time.time() - due)
        if len(lateness) >= n:
            done.set()

    sched = AsyncIOScheduler(timezone=UTC)
    t0 = time.time() + start_in
    for i in range(n):
        at = t0 + window * i / n
        sched.add_job(job, DateTrigger(datetime.fromtimestamp(at, UTC)), args=[at], misfire_grace_time=None)
    sched.start()
    cpu0 = time.process_time()
    await done.wait()
    cpu = time.process_time() - cpu0
    sched.shutdown(wait=False)
    return {"lateness": lateness, "cpu": cpu}


async def run(n: int, window: float, quiet: float) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        o = await ours(n, 3.0, window, quiet, tmp)
    b = await apscheduler3(n, 3.0, window)
    ms = 1000.0
    rows = []
    for q, goal in (("p50", None), ("p99", 2.5)):
        qq = 0.5 if q == "p50" else 0.99
        ov, bv = pct(o["lateness"], qq) * ms, pct(b["lateness"], qq) * ms
        rows.append(
            {
                "figure": f"cron firing lateness {q} ms ({n} jobs)",
                "ours": round(ov, 2),
                "baseline": round(bv, 2),
                "ratio": round(ov / bv, 2) if bv else None,
                "goal": f"<= {goal} ms" if goal else "(reference only)",
                "met": ov <= goal if goal else True,
            }
        )
    rows.append(
        {
            "figure": f"cron CPU seconds over the {window:.0f} s window",
            "ours": round(o["cpu"], 3),
            "baseline": round(b["cpu"], 3),
            "ratio": round(o["cpu"] / b["cpu"], 2),
            "goal": "<= 1.8x APScheduler 3",
            "met": o["cpu"] <= 1.8 * b["cpu"],
        }
    )
    rows.append(
        {
            "figure": "cron state.db WAL MB, largest seen during the window",
            "ours": round(o["wal_mb"], 1),
            "baseline": None,
            "ratio": None,
            "goal": "<= 64 MB",
            "met": o["wal_mb"] <= 64,
        }
    )
    rows.append(
        {
            "figure": "cron loop wake-ups/s while nothing is due",
            "ours": round(o["idle_wakeups"], 3),
            "baseline": None,
            "ratio": None,
            "goal": "0",
            "met": o["idle_wakeups"] == 0,
        }
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--window", type=float, default=20.0, help="seconds the fires spread over")
    p.add_argument("--quick", action="store_true", help="2,000 jobs over 5 s")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n, window = (2_000, 5.0) if args.quick else (args.jobs, args.window)
    rows = loop.run(run(n, window, quiet=3.0))
    emit_rows(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
