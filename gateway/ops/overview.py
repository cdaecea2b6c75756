"""The operator overview (SPEC 8.5): one JSON document, ``GET /api/overview``; the page renders it.

``build_overview(db, config, env, state, now)`` reads state.db only (every query through an
index: the page costs the same with 10 or 10,000 transitions outside the window). Times are
RFC 3339 UTC strings, money USD, durations seconds unless the key says ``_ms``.

Keys:
- ``state``: the sidecar's state (``/status.state``); ``generated_at``; ``window``
  (``start``/``end`` of the 24 hours shown).
- ``transitions``: the last 24 hours, time order, newest last, each ``{at, from, to, reason,
  kind}`` (``kind`` ``watcher`` or ``relay``, see ``gateway/ops/recorder.py``);
  ``state_before``: the watcher state at the window's start (the ``to`` of the last watcher
  row before it; None without one).
- ``wakes``: the last 24 hours, ``{at, trigger, latency_ms, ended_by}`` (``gateway/ops/wakes.py``).
- ``jobs``: every job, ``{id, name, schedule, tz, enabled, next_run_at, recent}``; ``recent``
  is the last five ledger rows, oldest first, ``{scheduled_for, status}``.
- ``alerts``: ``drift`` (open episodes with the exact ``pin_command``), ``substitution``
  (``SpendLedger.substitutions()``), ``budget`` (today's cron and agent cap alerts).
- ``spend``: ``today`` (total, per model, per skill), ``days`` (14 UTC days, oldest first,
  total and per model), ``models_14d``, ``skills`` (``query_skill_ema``: success rate, cost
  per call, duration), ``caps`` (``agent.max_daily_usd`` for all turns and ``cron.max_daily_usd``
  for cron runs, each with spent and left; None when uncapped). Inbound turns count on
  ``inbox.answered_at``, cron runs on ``job_runs.started_at`` (as ``SpendLedger.spent_today``);
  per model uses ``inbox.model`` / ``job_runs.model`` (the model asked and billed).
- ``routing``: ``enabled``, ``header`` (``routing report``'s first line), ``current_hour``
  and ``hours`` (the 24-hour forecast of ``get_routing_report``, ``strong`` true for hours a
  cron turn goes to the strong model).
- ``tasks``: ``counts`` by status and ``oldest_waiting`` (the oldest ``todo``/``ready`` task,
  with ``waiting_s``; None when nothing waits).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite

from common.sqlite import read_all, read_one
from common.timefmt import rfc3339, rfc3339_or_none
from gateway.agent.spend import SpendLedger, utc_day, utc_day_start
from gateway.config import Config
from gateway.cron.drift import current_axes
from gateway.kanban.store import STATUSES
from gateway.telemetry.ema import query_skill_ema
from gateway.telemetry.learned import learned_hour_rates
from gateway.telemetry.routing import RoutingSettings, get_routing_report, routing_header

WINDOW_S = 86400.0
SPEND_DAYS = 14
RECENT_RUNS = 5


async def build_overview(
    db: aiosqlite.Connection, config: Config, env: Mapping[str, str], state: str, now: float
) -> dict[str, Any]:
    """The overview document at ``now`` (Unix seconds)."""
    start = now - WINDOW_S
    transitions, before = await _transitions(db, start)
    return {
        "generated_at": rfc3339(now),
        "state": state,
        "window": {"start": rfc3339(start), "end": rfc3339(now)},
        "state_before": before,
        "transitions": transitions,
        "wakes": await _wakes(db, start),
        "jobs": await _jobs(db),
        "alerts": await _alerts(db, now),
        "spend": await _spend(db, config, now),
        "routing": await _routing(db, config, env, now),
        "tasks": await _tasks(db, now),
    }


async def _transitions(db: aiosqlite.Connection, start: float) -> tuple[list[dict[str, Any]], str | None]:
    rows = await read_all(
        db,
        "SELECT at, from_state, to_state, reason, kind FROM state_history WHERE at >= ? ORDER BY at, id",
        (start,),
    )
    prior = await read_one(
        db,
        "SELECT to_state FROM state_history WHERE kind = 'watcher' AND at < ? ORDER BY at DESC, id DESC"
        " LIMIT 1",
        (start,),
    )
    out = [{"at": rfc3339(r[0]), "from": r[1], "to": r[2], "reason": r[3], "kind": r[4]} for r in rows]
    return out, None if prior is None else str(prior[0])


async def _wakes(db: aiosqlite.Connection, start: float) -> list[dict[str, Any]]:
    rows = await read_all(
        db,
        "SELECT at, trigger, latency_ms, ended_by FROM wake_history WHERE at >= ? ORDER BY at, id",
        (start,),
    )
    return [{"at": rfc3339(r[0]), "trigger": r[1], "latency_ms": r[2], "ended_by": r[3]} for r in rows]


async def _jobs(db: aiosqlite.Connection) -> list[dict[str, Any]]:
    jobs = await read_all(
        db, "SELECT id, name, schedule, tz, enabled, next_run_at FROM jobs ORDER BY created_at, id"
    )
    # The last five rows of each job through the (job_id, scheduled_for) unique index.
    runs = await read_all(
        db,
        "SELECT j.id, r.scheduled_for, r.status FROM jobs j JOIN job_runs r ON r.id IN"
        " (SELECT id FROM job_runs WHERE job_id = j.id ORDER BY scheduled_for DESC LIMIT ?)"
        " ORDER BY j.id, r.scheduled_for",
        (RECENT_RUNS,),
    )
    recent: dict[str, list[dict[str, Any]]] = {}
    for job_id, at, status in runs:
        recent.setdefault(job_id, []).append({"scheduled_for": rfc3339(at), "status": status})
    return [
        {
            "id": r[0],
            "name": r[1],
            "schedule": r[2],
            "tz": r[3],
            "enabled": bool(r[4]),
            "next_run_at": rfc3339_or_none(r[5]),
            "recent": recent.get(r[0], []),
        }
        for r in jobs
    ]


async def _alerts(db: aiosqlite.Connection, now: float) -> dict[str, Any]:
    drift = await read_all(
        db,
        "SELECT d.job_id, d.opened_at, d.detail, j.provider, j.provider_snapshot, j.model,"
        " j.model_snapshot FROM drift_episodes d LEFT JOIN jobs j ON j.id = d.job_id ORDER BY d.opened_at",
    )
    day = utc_day(now)
    budget = []
    cron = await read_one(db, "SELECT at FROM budget_alerts WHERE day = ?", (day,))
    if cron is not None:
        budget.append(
            {
                "kind": "cron",
                "day": day,
                "at": rfc3339(cron[0]),
                "message": "cron.max_daily_usd reached: cron runs are blocked for the rest of the UTC day",
            }
        )
    agent = await read_one(db, "SELECT at FROM agent_budget_alerts WHERE day = ?", (day,))
    if agent is not None:
        budget.append(
            {
                "kind": "agent",
                "day": day,
                "at": rfc3339(agent[0]),
                "message": "agent.max_daily_usd reached: inbound turns are refused for the rest of the"
                " UTC day",
            }
        )
    return {
        "drift": [
            {
                "job_id": job_id,
                "opened_at": rfc3339(opened),
                "detail": detail,
                "pin_command": f"hermes-sidecar cron update {job_id} --provider {p or ps or '<provider>'}"
                f" --model {m or ms or '<model>'}",
            }
            for job_id, opened, detail, p, ps, m, ms in drift
        ],
        "substitution": await SpendLedger(db).substitutions(),
        "budget": budget,
    }


async def _spend(db: aiosqlite.Connection, config: Config, now: float) -> dict[str, Any]:
    today_start = utc_day_start(now)
    since = today_start - (SPEND_DAYS - 1) * 86400.0
    rows = await read_all(
        db,
        "SELECT date(answered_at, 'unixepoch'), COALESCE(model, ''), 'inbound', COUNT(*),"
        " COALESCE(SUM(cost_usd), 0) FROM inbox WHERE answered_at >= ? GROUP BY 1, 2"
        " UNION ALL SELECT date(started_at, 'unixepoch'), COALESCE(model, ''), 'cron', COUNT(*),"
        " COALESCE(SUM(cost_usd), 0) FROM job_runs WHERE started_at >= ? GROUP BY 1, 2",
        (since, since),
    )
    first = datetime.fromtimestamp(since, UTC).date()
    days: dict[str, dict[str, Any]] = {}
    for i in range(SPEND_DAYS):
        d = (first + timedelta(days=i)).isoformat()
        days[d] = {"day": d, "total_usd": 0.0, "inbound_usd": 0.0, "cron_usd": 0.0, "by_model": {}}
    models: dict[str, dict[str, Any]] = {}
    for day, model, source, turns, usd in rows:
        entry = days.get(day)
        if entry is None:
            continue
        usd = float(usd)
        entry["total_usd"] += usd
        entry[f"{source}_usd"] += usd
        entry["by_model"][model] = entry["by_model"].get(model, 0.0) + usd
        m = models.setdefault(
            model, {"model": model, "usd": 0.0, "turns": 0, "today_usd": 0.0, "today_turns": 0}
        )
        m["usd"] += usd
        m["turns"] += turns
        if day == utc_day(now):
            m["today_usd"] += usd
            m["today_turns"] += turns
    skills_today = await read_all(
        db,
        "SELECT skill_name, SUM(invocations), SUM(total_cost_usd) FROM skill_stats_rollup WHERE day = ?"
        " GROUP BY skill_name ORDER BY 3 DESC, 1",
        (utc_day(now),),
    )
    ema = await query_skill_ema(db, SPEND_DAYS, 0.3, now=now)
    today = days[utc_day(now)]
    spent_all = await SpendLedger(db).spent_today(now)
    cron_today = await read_one(
        db, "SELECT COALESCE(SUM(cost_usd), 0) FROM job_runs WHERE started_at >= ?", (today_start,)
    )
    by_model = sorted(models.values(), key=lambda m: (-m["usd"], m["model"]))
    return {
        "today": {
            "day": today["day"],
            "total_usd": round(today["total_usd"], 6),
            "by_model": [
                {"model": m["model"], "usd": round(m["today_usd"], 6), "turns": m["today_turns"]}
                for m in by_model
                if m["today_turns"]
            ],
            "by_skill": [
                {"skill": s, "invocations": int(n), "usd": round(float(c), 6)} for s, n, c in skills_today
            ],
        },
        "days": [
            {
                **d,
                "total_usd": round(d["total_usd"], 6),
                "by_model": {k: round(v, 6) for k, v in d["by_model"].items()},
            }
            for d in days.values()
        ],
        "models_14d": [
            {"model": m["model"], "usd": round(m["usd"], 6), "turns": m["turns"]} for m in by_model
        ],
        "skills": [
            {
                "skill": r["skill_name"],
                "model": r["model"],
                "calls": r["sample_count"],
                "success_rate": r["ema_success_rate"],
                "cost_per_call_usd": r["ema_cost_per_call"],
                "duration_s": r["ema_duration_s"],
                "total_usd": r["total_cost_usd"],
            }
            for r in ema
        ],
        "caps": {
            "agent": _cap(config.agent_max_daily_usd, spent_all),
            "cron": _cap(config.cron_max_daily_usd, float(cron_today[0]) if cron_today else 0.0),
        },
    }


def _cap(limit: float | None, spent: float) -> dict[str, Any]:
    return {
        "limit_usd": limit,
        "spent_usd": round(spent, 6),
        "left_usd": None if limit is None else round(max(0.0, limit - spent), 6),
    }


async def _routing(
    db: aiosqlite.Connection, config: Config, env: Mapping[str, str], now: float
) -> dict[str, Any]:
    settings = RoutingSettings.from_env(
        env,
        strong_model=config.routing_strong_model,
        strong_provider=config.routing_strong_provider,
        cheap_model=config.routing_cheap_model,
        threshold_pct=config.routing_error_threshold_pct,
    )
    base = current_axes(config, None).model or "<base>"
    learned = await learned_hour_rates(db, now)
    hours = get_routing_report(settings, learned, enabled=config.routing_enabled, base_model=base)
    for h in hours:
        h["strong"] = bool(h["enabled"]) and h["model"] == settings.strong_model and h["model"] != base
    return {
        "enabled": bool(hours[0]["enabled"]),
        "header": routing_header(config.routing_enabled, settings, base),
        "base_model": base,
        "strong_model": settings.strong_model or None,
        "current_hour": datetime.fromtimestamp(now, UTC).hour,
        "hours": hours,
    }


async def _tasks(db: aiosqlite.Connection, now: float) -> dict[str, Any]:
    rows = await read_all(db, "SELECT status, COUNT(*) FROM tasks GROUP BY status")
    found = dict(rows)
    oldest = await read_one(
        db,
        "SELECT id, title, status, assignee, created_at FROM tasks WHERE status IN ('todo', 'ready')"
        " ORDER BY created_at, id LIMIT 1",
    )
    return {
        "counts": {s: int(found.get(s, 0)) for s in STATUSES},
        "oldest_waiting": None
        if oldest is None
        else {
            "id": oldest[0],
            "title": oldest[1],
            "status": oldest[2],
            "assignee": oldest[3],
            "created_at": rfc3339(oldest[4]),
            "waiting_s": round(max(0.0, now - oldest[4]), 3),
        },
    }
