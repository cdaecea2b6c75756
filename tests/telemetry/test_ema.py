"""Skill telemetry: the rollup trigger, the daily view and the EMA (exact figures)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import pytest

from gateway.statedb import open_state_db
from gateway.telemetry.ema import half_life_days, query_skill_ema
from gateway.telemetry.record import insert_invocations, split_run

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await open_state_db(tmp_path / "state.db")
    yield conn
    await conn.close()


async def _calls(
    db: aiosqlite.Connection,
    days_ago: int,
    reason: str,
    n: int = 1,
    cost: float | None = None,
    skill: str = "digest",
) -> None:
    for _ in range(n):
        t = NOW - days_ago * DAY
        await insert_invocations(
            db,
            split_run(
                run_id=None,
                cron_id="j",
                skills=[skill],
                invoked_at=t,
                completed_at=t + 2,
                model="m1",
                provider="a",
                cost_usd=cost,
                input_tokens=10,
                output_tokens=5,
                end_reason=reason,
            ),
        )


@pytest.mark.parametrize(
    ("days", "expected"),
    [((0, 1, 7), 0.953795), ((0, 1, 2), 0.776256)],
    ids=["days-0-1-7", "days-0-1-2"],
)
async def test_ema_success_rate_matches_reference(
    db: aiosqlite.Connection, days: tuple[int, ...], expected: float
) -> None:
    """Equal volume per day, success 1, 1, 0: the calendar-day EMA gives the reference value."""
    for d, reason in zip(days, ("succeeded", "succeeded", "provider_error"), strict=True):
        await _calls(db, d, reason)
    [entry] = await query_skill_ema(db, now=NOW)
    assert entry["ema_success_rate"] == pytest.approx(expected, abs=1e-6)
    assert (entry["success_count"], entry["failure_count"]) == (2, 1)


async def test_ema_cost_per_call_is_volume_weighted(db: aiosqlite.Connection) -> None:
    """Day 0: 10 calls for $1.00; day 1: 1 call for $0.50 -> 0.126168 per call."""
    await _calls(db, 0, "succeeded", n=10, cost=0.10)
    await _calls(db, 1, "succeeded", n=1, cost=0.50)
    [entry] = await query_skill_ema(db, now=NOW)
    assert entry["ema_cost_per_call"] == pytest.approx(0.126168, abs=1e-6)
    assert entry["total_cost_usd"] == pytest.approx(1.5)


async def test_ema_excludes_null_success_and_cuts_the_window_by_day(
    db: aiosqlite.Connection,
) -> None:
    """Scaffolding failures (NULL) are not model failures; day 14 is outside a 14-day window."""
    await _calls(db, 0, "succeeded")
    await _calls(db, 0, "blocked_drift")
    await _calls(db, 0, "skill_not_found")
    await _calls(db, 14, "provider_error")
    [entry] = await query_skill_ema(db, window_days=14, now=NOW)
    assert entry["ema_success_rate"] == 1.0
    assert entry["sample_count"] == 3
    assert entry["days_with_data"] == 1
    [wider] = await query_skill_ema(db, window_days=15, now=NOW)
    assert wider["failure_count"] == 1


@pytest.mark.parametrize(
    ("window", "alpha"),
    [(0, 0.3), (-1, 0.3), (14, 0.0), (14, 1.0), (14, 1.5)],
    ids=["window-0", "window-negative", "alpha-0", "alpha-1", "alpha-over-1"],
)
async def test_ema_rejects_bad_window_and_alpha(db: aiosqlite.Connection, window: int, alpha: float) -> None:
    """window_days <= 0 or alpha outside (0, 1) is a ValueError naming the range."""
    with pytest.raises(ValueError, match=r">= 1|\(0, 1\)"):
        await query_skill_ema(db, window_days=window, alpha=alpha, now=NOW)


def test_half_life_formula() -> None:
    """alpha 0.3 -> 1.943 days; alpha 0.1294 -> about 5 days."""
    assert half_life_days(0.3) == pytest.approx(1.943, abs=1e-3)
    assert half_life_days(0.1294) == pytest.approx(5.0, abs=0.01)


async def test_two_skill_run_splits_cost_and_the_daily_view_sums_it(
    db: aiosqlite.Connection,
) -> None:
    """A 2-skill run costing $0.10 records $0.05 per row; skill_stats_daily sums to $0.10."""
    rows = split_run(
        run_id=7,
        cron_id="j",
        skills=["a", "b"],
        invoked_at=NOW,
        completed_at=NOW + 4,
        model="m1",
        provider="p",
        cost_usd=0.10,
        input_tokens=100,
        output_tokens=40,
        end_reason="succeeded",
    )
    await insert_invocations(db, rows)
    async with db.execute(
        "SELECT skill_name, estimated_cost_usd, duration_seconds FROM skill_invocations ORDER BY skill_name"
    ) as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [("a", 0.05, 4.0), ("b", 0.05, 4.0)]
    async with db.execute("SELECT SUM(total_cost_usd), SUM(invocations) FROM skill_stats_daily") as cur:
        total, count = await cur.fetchone()  # type: ignore[misc]
    assert total == pytest.approx(0.10)
    assert count == 2


async def test_rollup_counts_rows_from_any_writer(db: aiosqlite.Connection) -> None:
    """A manual INSERT reaches the daily view through the trigger; an all-NULL day sums to 0."""
    await db.execute("INSERT INTO skill_invocations (skill_name, invoked_at) VALUES ('x', ?)", (NOW,))
    async with db.execute(
        "SELECT invocations, total_cost_usd, total_duration_s, successes, "
        "failures FROM skill_stats_daily WHERE skill_name = 'x'"
    ) as cur:
        assert tuple(await cur.fetchone()) == (1, 0.0, 0.0, 0, 0)  # type: ignore[arg-type]
