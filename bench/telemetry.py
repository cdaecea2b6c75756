"""Telemetry write and read speed at 1,000,000 ``skill_invocations`` rows, in one run.

Writes, each into a fresh state.db with the real schema (indexes and the rollup trigger
included) and the same pragmas (WAL, synchronous FULL as in production):
- ours: ``TelemetryWriter.record_skill_invocation`` for every row from a running event loop
  (the loop yields every 1,000 rows, as a burst of runs would), then ``aclose()``;
- baseline: plain ``sqlite3`` ``executemany`` of the same rows in one transaction;
- reference: per-row awaited inserts (one ``write_tx`` each) over a sample, reported as rows/s.

Reads, over the 1M-row database: ``query_skill_ema`` (reads the daily rollup) beside the same
per-day aggregation done by a GROUP BY over the raw rows (what the rollup saves).

Goals (issue "Skill telemetry"): the writer >= 0.8x of ``executemany``; EMA <= 10 ms at 1M.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit_rows
from gateway.statedb import open_state_db
from gateway.telemetry.ema import query_skill_ema
from gateway.telemetry.record import _INSERT, Invocation, insert_invocations
from gateway.telemetry.writer import TelemetryWriter

NOW = 1_800_000_000.0
DAY = 86_400.0
SKILLS = [f"skill-{i}" for i in range(20)]
MODELS = [("m-small", "a"), ("m-large", "b"), ("m-local", "c")]

GROUP_BY_RAW = """
SELECT date(invoked_at, 'unixepoch') AS day, skill_name, model, COUNT(*),
       SUM(success = 1), SUM(success = 0), COALESCE(SUM(duration_seconds), 0),
       COALESCE(SUM(estimated_cost_usd), 0), MAX(invoked_at)
FROM skill_invocations WHERE invoked_at >= ? GROUP BY day, skill_name, model
"""


def make_rows(n: int, seed: int = 7) -> list[Invocation]:
    """``n`` rows spread over the last 21 days: 20 skills x 3 models, 5 % failures."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        t = NOW - rnd.random() * 21 * DAY
        model, provider = MODELS[i % 3]
        ok = rnd.random() > 0.05
        rows.append(
            Invocation(
                i,
                f"job-{i % 50}",
                SKILLS[i % 20],
                None,
                t,
                t + 3.0,
                model,
                provider,
                3.0,
                100,
                50,
                None,
                None,
                0.002,
                int(ok),
                "succeeded" if ok else "provider_error",
            )
        )
    return rows


async def _fresh(path: Path) -> None:
    db = await open_state_db(path)
    await db.close()


async def ours(path: Path, rows: list[Invocation]) -> float:
    db = await open_state_db(path)
    w = TelemetryWriter(db)
    w.start()
    t0 = time.perf_counter()
    for i, r in enumerate(rows):
        w.record_skill_invocation(
            skill_name=r.skill_name,
            invoked_at=r.invoked_at,
            completed_at=r.completed_at,
            run_id=r.run_id,
            cron_id=r.cron_id,
            model=r.model,
            provider=r.provider,
            duration_seconds=r.duration_seconds,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            estimated_cost_usd=r.estimated_cost_usd,
            success=r.success,
            end_reason=r.end_reason,
        )
        if i % 1000 == 999:
            await asyncio.sleep(0)
    await w.aclose()
    took = time.perf_counter() - t0
    assert w.written == len(rows), (w.written, len(rows))
    await db.close()
    return took


def baseline(path: Path, rows: list[Invocation]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    t0 = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_INSERT, rows)
    conn.execute("COMMIT")
    took = time.perf_counter() - t0
    conn.close()
    return took


async def per_row(path: Path, rows: list[Invocation]) -> float:
    db = await open_state_db(path)
    t0 = time.perf_counter()
    for r in rows:
        await insert_invocations(db, [r])
    took = time.perf_counter() - t0
    await db.close()
    return took


async def reads(path: Path, repeats: int) -> tuple[float, float, int]:
    db = await open_state_db(path)
    ema_t, raw_t = [], []
    entries = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        entries = len(await query_skill_ema(db, now=NOW))
        ema_t.append(time.perf_counter() - t0)
    for _ in range(max(1, repeats // 5)):
        t0 = time.perf_counter()
        async with db.execute(GROUP_BY_RAW, (NOW - 14 * DAY,)) as cur:
            await cur.fetchall()
        raw_t.append(time.perf_counter() - t0)
    await db.close()
    return statistics.median(ema_t), statistics.median(raw_t), entries


async def run(n: int, sample: int) -> list[dict[str, Any]]:
    rows = make_rows(n)
    with tempfile.TemporaryDirectory() as tmp:
        base_db, ours_db, row_db = (Path(tmp) / f"{k}.db" for k in ("base", "ours", "row"))
        for p in (base_db, row_db):
            await _fresh(p)
        b = baseline(base_db, rows)
        o = await ours(ours_db, rows)
        r = await per_row(row_db, rows[:sample])
        ema_s, raw_s, entries = await reads(ours_db, repeats=25)
    o_rate, b_rate, r_rate = n / o, n / b, sample / r
    assert entries == len(SKILLS) * len(MODELS)
    return [
        {
            "figure": f"telemetry writer rows/s ({n:,} rows)",
            "ours": round(o_rate),
            "baseline": round(b_rate),
            "ratio": round(o_rate / b_rate, 2),
            "goal": ">= 0.8x sqlite3 executemany",
            "met": o_rate >= 0.8 * b_rate,
        },
        {
            "figure": f"per-row awaited inserts rows/s ({sample:,} rows)",
            "ours": round(r_rate),
            "baseline": round(b_rate),
            "ratio": round(r_rate / b_rate, 3),
            "goal": "(reference only)",
            "met": True,
        },
        {
            "figure": f"query_skill_ema ms at {n:,} rows",
            "ours": round(ema_s * 1000, 2),
            "baseline": round(raw_s * 1000, 1),
            "ratio": round(ema_s / raw_s, 4),
            "goal": "<= 10 ms (vs raw GROUP BY)",
            "met": ema_s <= 0.010,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--quick", action="store_true", help="100,000 rows")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n = 100_000 if args.quick else args.rows
    rows = asyncio.run(run(n, sample=min(n, 20_000 if not args.quick else 5_000)))
    emit_rows(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
