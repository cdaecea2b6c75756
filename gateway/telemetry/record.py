"""Skill invocation rows for one cron run: one row per skill, cost and tokens split evenly,
duration the whole run's (SPEC section 6). ``success``: 1 succeeded; 0 a model failure
(provider error, empty answer, timeout); NULL a scaffolding failure (skill not found, blocked
by drift or budget, config error), so infrastructure breakage never counts against a model.
"""

from __future__ import annotations

from typing import NamedTuple

import aiosqlite

from common.sqlite import write_tx

SCAFFOLDING = frozenset({"skill_not_found", "blocked_drift", "blocked_budget", "config_error"})

_COLS = (
    "run_id, cron_id, skill_name, skill_version, invoked_at, completed_at, model, provider,"
    " duration_seconds, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
    " estimated_cost_usd, success, end_reason, quality_score"
)


class Invocation(NamedTuple):
    """One ``skill_invocations`` row in column order; times are Unix seconds (REAL), money
    USD. A tuple, so a batch goes to ``executemany`` without a copy."""

    run_id: int | None
    cron_id: str | None
    skill_name: str
    skill_version: str | None
    invoked_at: float
    completed_at: float | None
    model: str | None
    provider: str | None
    duration_seconds: float | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    estimated_cost_usd: float | None
    success: int | None
    end_reason: str | None
    quality_score: float | None = None


def split_run(
    *,
    run_id: int | None,
    cron_id: str | None,
    skills: list[str],
    invoked_at: float,
    completed_at: float,
    model: str | None,
    provider: str | None,
    cost_usd: float | None,
    input_tokens: int | None,
    output_tokens: int | None,
    end_reason: str,
) -> list[Invocation]:
    """Rows for a run's skills. ``end_reason`` ``succeeded`` -> success 1, a scaffolding reason
    -> NULL, anything else -> 0."""
    if not skills:
        return []
    k = len(skills)
    success = 1 if end_reason == "succeeded" else (None if end_reason in SCAFFOLDING else 0)

    def share(v: float | int | None) -> float | None:
        return None if v is None else v / k

    return [
        Invocation(
            run_id,
            cron_id,
            name,
            None,
            invoked_at,
            completed_at,
            model,
            provider,
            completed_at - invoked_at,
            None if input_tokens is None else input_tokens // k,
            None if output_tokens is None else output_tokens // k,
            None,
            None,
            share(cost_usd),
            success,
            end_reason,
        )
        for name in skills
    ]


_INSERT = f"INSERT INTO skill_invocations ({_COLS}) VALUES ({', '.join('?' * 17)})"


async def insert_invocations(db: aiosqlite.Connection, rows: list[Invocation]) -> None:
    """Insert rows now, in one transaction; the rollup trigger keeps the daily stats
    (``TelemetryWriter`` batches calls to this). Raises what SQLite raises (rolled back)."""
    if not rows:
        return
    async with write_tx(db):
        await db.executemany(_INSERT, rows)
