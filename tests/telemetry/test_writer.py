"""The batched telemetry writer: flush by time and by count, failures logged not raised, and
per-skill counters and cost on the sidecar's /metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiosqlite
import pytest

from common.clock import FakeClock
from gateway.config import load_config
from gateway.cron.jobs import create_job
from gateway.runtime.sidecar import Sidecar
from gateway.statedb import open_state_db
from gateway.telemetry.writer import TelemetryWriter
from tests.fake_llm import FakeLLM, provider_config


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await open_state_db(tmp_path / "state.db")
    yield conn
    await conn.close()


async def _count(db: aiosqlite.Connection) -> int:
    async with db.execute("SELECT COUNT(*) FROM skill_invocations") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def _record(w: TelemetryWriter, n: int, *, skill: str = "digest") -> None:
    for i in range(n):
        w.record_skill_invocation(
            skill_name=skill,
            invoked_at=1_800_000_000.0 + i,
            completed_at=1_800_000_002.0 + i,
            model="m1",
            provider="a",
            estimated_cost_usd=0.01,
            success=1,
            end_reason="succeeded",
        )


async def test_rows_are_written_250ms_after_the_first_queued_one(
    db: aiosqlite.Connection,
) -> None:
    """record() returns at once; the batch lands in one write when 250 ms have passed."""
    clock = FakeClock()
    w = TelemetryWriter(db, clock=clock)
    w.start()
    try:
        _record(w, 3)
        await clock.advance(0.2)
        assert (await _count(db), w.queued) == (0, 3)
        await clock.advance(0.05)
        assert w.queued == 0  # the timer fired and the flusher took the batch
        assert await w.flush() == 0  # waits for that write to commit; nothing was left over
        assert await _count(db) == 3
        assert clock.pending == []  # nothing queued: the flusher sleeps without a timer
    finally:
        await w.aclose()


async def test_a_full_batch_is_written_without_waiting_for_the_timer(
    db: aiosqlite.Connection,
) -> None:
    clock = FakeClock()
    w = TelemetryWriter(db, clock=clock, max_batch=10)
    w.start()
    try:
        _record(w, 10)
        await clock.settle()
        assert w.queued == 0  # the flusher took the batch with the clock standing still
        assert await w.flush() == 0  # waits for that write; nothing was left over
        assert await _count(db) == 10
    finally:
        await w.aclose()


async def test_duration_defaults_to_the_run_and_close_flushes(db: aiosqlite.Connection) -> None:
    w = TelemetryWriter(db, clock=FakeClock())
    w.start()
    _record(w, 2)
    await w.aclose()  # shutdown writes what is queued
    async with db.execute("SELECT duration_seconds, success FROM skill_invocations") as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [(2.0, 1), (2.0, 1)]


async def test_a_failed_write_logs_a_warning_and_never_raises(
    db: aiosqlite.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken table: the batch is dropped with one WARNING naming the cause; later rows go in
    once the table is back."""
    dropped: list[int] = []
    w = TelemetryWriter(db, clock=FakeClock(), on_dropped=dropped.append)
    await db.execute("ALTER TABLE skill_invocations RENAME TO broken")
    _record(w, 4)
    with caplog.at_level(logging.WARNING, logger="gateway.telemetry"):
        assert await w.flush() == 0
    [rec] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "4 row(s) dropped" in rec.getMessage()
    assert "no such table: skill_invocations" in rec.getMessage()
    assert (w.dropped, dropped) == (4, [4])
    await db.execute("ALTER TABLE broken RENAME TO skill_invocations")
    _record(w, 1)
    assert await w.flush() == 1
    assert await _count(db) == 1


def test_bad_settings_name_the_value(db: aiosqlite.Connection) -> None:
    with pytest.raises(ValueError, match="max_batch must be a positive int, got 0"):
        TelemetryWriter(db, max_batch=0)


async def test_metrics_export_per_skill_counters_and_cost(tmp_path: Path, llm: FakeLLM) -> None:
    """A 2-skill cron run at $0.001 shows one success per skill and $0.0005 each on /metrics; a
    missing skill counts as scaffolding, never as a model failure."""
    home = tmp_path / "home"
    for name in ("s1", "s2"):
        (home / "skills" / name).mkdir(parents=True)
        (home / "skills" / name / "SKILL.md").write_text("be brief")
    (home / "config.yaml").write_text(provider_config(llm.base_url))
    clock = FakeClock()
    sc = Sidecar(load_config(home, {}), port=0, clock=clock, env={}, metrics_port=0)
    await sc.start()
    try:
        ok = create_job(
            sc.config, {"schedule": "@daily", "prompt": "p", "skills": ["s1", "s2"]}, clock.wall()
        )
        broken = create_job(
            sc.config, {"schedule": "@daily", "prompt": "p", "skills": ["gone"]}, clock.wall()
        )
        for job in (ok, broken):
            await sc.cron_store.add(job)
        assert (await sc.run_job_now(ok.id) or {})["status"] == "succeeded"
        assert (await sc.run_job_now(broken.id) or {})["status"] == "failed"
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{sc.metrics_port}/metrics") as r:
            text = await r.text()
        for skill in ("s1", "s2"):
            assert (
                f'hermes_skill_invocations_total{{model="test-model",outcome="success",skill="{skill}"}} 1.0'
            ) in text
            assert f'hermes_skill_cost_usd_total{{model="test-model",skill="{skill}"}} 0.0005' in text
        assert 'hermes_skill_invocations_total{model="",outcome="scaffolding",skill="gone"} 1.0' in text
        assert 'outcome="failure"' not in text
        await sc.telemetry.flush()
        assert await _count(sc.db) == 3
    finally:
        await sc.shutdown()
