"""Exponentially weighted skill statistics by calendar day (SPEC section 6).

Weight of a day ``d`` days ago: ``w = alpha * (1 - alpha) ** d``. Success rate
``sum(w*S) / sum(w*(S+F))`` (NULL-success rows count in neither); duration and cost per call
volume-weighted: ``sum(w*total) / sum(w*count)``. Half-life in days: ``ln(0.5)/ln(1-alpha)``
(alpha 0.3 -> 1.943 days; a 5-day half-life needs alpha 0.1294). Reads the daily rollup only.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiosqlite

from common.sqlite import read_all


def half_life_days(alpha: float) -> float:
    """Days for a weight to halve: ``ln(0.5) / ln(1 - alpha)``."""
    import math

    return math.log(0.5) / math.log(1 - alpha)


def _check(window_days: int, alpha: float) -> None:
    if not isinstance(window_days, int) or isinstance(window_days, bool) or window_days <= 0:
        raise ValueError(f"window_days {window_days!r} must be an integer >= 1")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha!r} must be in (0, 1) (exclusive)")


async def query_skill_ema(
    db: aiosqlite.Connection,
    window_days: int = 14,
    alpha: float = 0.3,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """One entry per (skill, model) over the last ``window_days`` calendar days (UTC, today
    included), newest ``last_invoked_at`` first.

    Keys: skill_name, model, provider (latest), sample_count, success_count, failure_count,
    ema_success_rate (None without successes or failures), ema_duration_s, ema_cost_per_call,
    total_cost_usd, days_with_data, last_invoked_at (Unix seconds).
    Raises ``ValueError`` naming the allowed range for a bad window or alpha.
    """
    _check(window_days, alpha)
    today = datetime.fromtimestamp(now if now is not None else datetime.now(UTC).timestamp(), UTC).date()
    first = today - timedelta(days=window_days - 1)
    rows = await read_all(
        db,
        "SELECT day, skill_name, model, provider, invocations, successes, failures,"
        " total_duration_s, total_cost_usd, last_invoked_at FROM skill_stats_rollup"
        " WHERE day >= ? AND day <= ?",
        (first.isoformat(), today.isoformat()),
    )
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for day, skill, model, provider, n, s, f, dur, cost, last in rows:
        ago = (today - date.fromisoformat(day)).days
        w = alpha * (1 - alpha) ** ago
        a = acc.setdefault(
            (skill, model),
            {
                "skill_name": skill,
                "model": model,
                "provider": provider,
                "sample_count": 0,
                "success_count": 0,
                "failure_count": 0,
                "_ws": 0.0,
                "_wsf": 0.0,
                "_wdur": 0.0,
                "_wcost": 0.0,
                "_wn": 0.0,
                "total_cost_usd": 0.0,
                "_days": set(),
                "last_invoked_at": None,
            },
        )
        a["sample_count"] += n
        a["success_count"] += s
        a["failure_count"] += f
        a["_ws"] += w * s
        a["_wsf"] += w * (s + f)
        a["_wdur"] += w * dur
        a["_wcost"] += w * cost
        a["_wn"] += w * n
        a["total_cost_usd"] += cost
        a["_days"].add(day)
        if last is not None and (a["last_invoked_at"] is None or last > a["last_invoked_at"]):
            a["last_invoked_at"], a["provider"] = last, provider
    out = []
    for a in acc.values():
        out.append(
            {
                "skill_name": a["skill_name"],
                "model": a["model"],
                "provider": a["provider"],
                "sample_count": a["sample_count"],
                "success_count": a["success_count"],
                "failure_count": a["failure_count"],
                "ema_success_rate": a["_ws"] / a["_wsf"] if a["_wsf"] else None,
                "ema_duration_s": a["_wdur"] / a["_wn"] if a["_wn"] else None,
                "ema_cost_per_call": a["_wcost"] / a["_wn"] if a["_wn"] else None,
                "total_cost_usd": a["total_cost_usd"],
                "days_with_data": len(a["_days"]),
                "last_invoked_at": a["last_invoked_at"],
            }
        )
    out.sort(key=lambda e: e["last_invoked_at"] or 0, reverse=True)
    return out
