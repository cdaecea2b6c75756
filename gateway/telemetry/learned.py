"""Observed cron failure counts per hour of day, for routing that learns (SPEC section 6)."""

from __future__ import annotations

import aiosqlite

from common.sqlite import read_all

LEARN_WINDOW_S = 14 * 86400.0


async def learned_hour_rates(db: aiosqlite.Connection, now: float) -> dict[int, tuple[int, int]]:
    """hour (0-23, UTC) -> (model failures, samples with a success verdict) over 14 days.

    Scaffolding rows (success NULL) count in neither, like in the EMA.
    """
    rows = await read_all(
        db,
        "SELECT CAST(strftime('%H', invoked_at, 'unixepoch') AS INTEGER),"
        " SUM(CASE WHEN success = 0 THEN 1 ELSE 0 END), COUNT(success)"
        " FROM skill_invocations WHERE cron_id IS NOT NULL AND invoked_at >= ?"
        " GROUP BY 1",
        (now - LEARN_WINDOW_S,),
    )
    return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}
