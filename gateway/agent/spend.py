"""Spend and substitution across every agent turn (SPEC 8.2).

- ``is_substitution(asked, answered)`` (pure): the provider answered with a model other than
  the one asked: neither equal nor the asked name followed by ``-`` and a version
  (``gpt-4o-mini`` answered as ``gpt-4o-mini-2024-07-18`` is the same model; ``gpt-4o-mini``
  answered as ``gpt-4o`` or ``llama-3`` is not). OpenRouter and LiteLLM fallbacks do this
  silently, so the bill is for a model nobody chose.
- ``SpendLedger`` over state.db: the UTC day's spend of all turns (inbound rows and cron runs),
  one ``agent.max_daily_usd`` alert a day, and substitution episodes (one alert when an episode
  opens; it closes when the asked model answers again).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, NamedTuple

import aiosqlite

from common.sqlite import read_all, read_one, write_one, write_tx
from common.timefmt import rfc3339

_VERSION = re.compile(r"^(v?\d[\w.:-]*|latest|preview)$", re.IGNORECASE)


class TurnReport(NamedTuple):
    """What one finished turn did, for metrics: ``source`` (inbound, cron), ``profile``,
    ``outcome``, the model asked (None: no model call), its cost in USD and latency in seconds
    (None when unknown), and the answering model when it was a substitution (else None)."""

    source: str
    profile: str
    outcome: str
    model: str | None = None
    cost_usd: float | None = None
    latency_s: float | None = None
    substituted_by: str | None = None


def is_substitution(asked: str, answered: str | None) -> bool:
    """True when ``answered`` names another model than ``asked``. None (the provider did not
    say) is not a substitution; case is ignored; ``<asked>-<version>`` (a dated or numbered
    release: starts with a digit, ``v`` and a digit, ``latest`` or ``preview``) is the same."""
    if answered is None:
        return False
    a, b = asked.strip().lower(), answered.strip().lower()
    if a == b:
        return False
    if b.startswith(a + "-") and _VERSION.match(b[len(a) + 1 :]):
        return False
    return True


def utc_day_start(now: float) -> float:
    """Unix seconds of 00:00 UTC of the day holding ``now``."""
    return float(int(now // 86400) * 86400)


def utc_day(now: float) -> str:
    """``YYYY-MM-DD`` (UTC) of ``now``."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


class SpendLedger:
    """What turns cost and which model answered them, over state.db (times Unix seconds,
    money USD)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def spent_today(self, now: float) -> float:
        """USD of every turn answered since 00:00 UTC of ``now``'s day: inbound turns plus cron
        runs (unknown costs count as 0)."""
        since = utc_day_start(now)
        row = await read_one(
            self.db,
            "SELECT (SELECT COALESCE(SUM(cost_usd), 0) FROM inbox WHERE answered_at >= ?)"
            " + (SELECT COALESCE(SUM(cost_usd), 0) FROM job_runs WHERE started_at >= ?)",
            (since, since),
        )
        return float(row[0]) if row else 0.0

    async def budget_alert_once(self, now: float) -> bool:
        """True the first time a day's ``agent.max_daily_usd`` alert is asked for (then never
        again that UTC day, across restarts)."""
        cur = await write_one(
            self.db,
            "INSERT INTO agent_budget_alerts (day, at) VALUES (?, ?) ON CONFLICT (day) DO NOTHING",
            (utc_day(now), now),
        )
        return cur.rowcount == 1

    async def note_answer(self, asked: str, answered: str | None, provider: str, now: float) -> bool:
        """Record which model answered a call for ``asked``. Returns True when this opens a
        substitution episode (alert once); an answer by the asked model closes its episode."""
        if answered is None:
            return False
        if not is_substitution(asked, answered):
            await write_one(self.db, "DELETE FROM substitution_episodes WHERE asked = ?", (asked,))
            return False
        async with write_tx(self.db):
            await self.db.execute(
                "INSERT INTO substitution_episodes (asked, answered, provider, opened_at, last_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (asked) DO UPDATE SET last_at = excluded.last_at,"
                " answered = excluded.answered, turns = turns + 1",
                (asked, answered, provider, now, now),
            )
            row = await read_one(self.db, "SELECT turns FROM substitution_episodes WHERE asked = ?", (asked,))
        return row is not None and row[0] == 1

    async def substitutions(self) -> list[dict[str, Any]]:
        """Open substitution episodes, oldest first: ``asked``, ``answered``, ``provider``,
        ``opened_at``/``last_at`` (RFC 3339 UTC) and ``turns``."""
        rows = await read_all(
            self.db,
            "SELECT asked, answered, provider, opened_at, last_at, turns FROM substitution_episodes"
            " ORDER BY opened_at",
        )
        return [
            {
                "asked": r[0],
                "answered": r[1],
                "provider": r[2],
                "opened_at": rfc3339(r[3]),
                "last_at": rfc3339(r[4]),
                "turns": r[5],
            }
            for r in rows
        ]
