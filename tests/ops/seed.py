"""Seeded state for the operator page tests and screenshot: a state.db with a day of history,
two cron jobs with ledgers, open alerts, spend, skills and a board (times relative to ``NOW``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.clock import FakeClock
from common.sqlite import write_tx
from gateway.config import Config, load_config
from gateway.statedb import open_state_db

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC, FakeClock's default wall
H = 3600.0

CONFIG_YAML = """\
model: {default: gpt-4o-mini, provider: openai}
providers: {openai: {base_url: "http://127.0.0.1:9/v1"}}
agent: {max_daily_usd: 5}
cron: {max_daily_usd: 2}
routing: {enabled: true, strong_model: gpt-4o, strong_provider: openai}
"""

# (hours before NOW, from, to, reason): the last row before the window gives the first band.
WATCHER_ROWS = [
    (30.0, "live", "dormant", "going_idle_ack received"),
    (20.0, "dormant", "live", "woken by poke; cooldown 60 s"),
    (12.0, "live", "draining", "idle for 300.0 s >= 300 s"),
    (11.9, "draining", "dormant", "going_idle_ack received; relay closed 1000 dormant"),
    (6.0, "dormant", "live", "woken by due job; cooldown 60 s"),
    (1.0, "live", "stopped", "shutdown"),
]
SEEDED_BANDS = ["dormant", "live", "draining", "dormant", "live", "stopped"]
"""The bands the seeded rows draw, in order; the sidecar's own start adds one ``live`` band."""

WAKES = [(20.0, "poke", 42.5, "first replayed inbound acked"), (6.0, "due job", 180.0, "relay connected")]
JOB_A = ("a1b2c3d4", "daily-report", "@daily")
JOB_B = ("e5f6a7b8", "inbox-sweep", "every 30m")
JOB_A_STATUSES = ["succeeded", "failed", "blocked_drift", "missed", "succeeded", "skipped_overlap"]
JOB_B_STATUSES = ["succeeded", "blocked_budget"]


@dataclass(frozen=True)
class Seeded:
    home: Path
    config: Config
    env: dict[str, str]

    def clock(self) -> FakeClock:
        return FakeClock(wall=NOW)


def _write_config(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(CONFIG_YAML)


async def seed(home: Path) -> Seeded:
    """Write config.yaml and a seeded state.db under ``home``."""
    _write_config(home)
    env: dict[str, str] = {}
    config = load_config(home, env)
    db = await open_state_db(config.state_db)
    try:
        async with write_tx(db):
            for ago, a, b, why in WATCHER_ROWS:
                await db.execute(
                    "INSERT INTO state_history (at, kind, from_state, to_state, reason)"
                    " VALUES (?, 'watcher', ?, ?, ?)",
                    (NOW - ago * H, a, b, why),
                )
            await db.execute(
                "INSERT INTO state_history (at, kind, from_state, to_state, reason)"
                " VALUES (?, 'relay', 'connected', 'backoff', 'close 1006 abnormal')",
                (NOW - 15 * H,),
            )
            for ago, trigger, ms, ended in WAKES:
                await db.execute(
                    "INSERT INTO wake_history (at, trigger, latency_ms, ended_by) VALUES (?, ?, ?, ?)",
                    (NOW - ago * H, trigger, ms, ended),
                )
            for (job_id, name, schedule), statuses, created in (
                (JOB_A, JOB_A_STATUSES, NOW - 10 * 86400),
                (JOB_B, JOB_B_STATUSES, NOW - 86400),
            ):
                await db.execute(
                    "INSERT INTO jobs (id, name, prompt, schedule, tz, created_at, next_run_at, updated_at,"
                    " provider_snapshot, model_snapshot) VALUES (?, ?, 'p', ?, 'UTC', ?, ?, ?, 'openai',"
                    " 'gpt-4o-mini')",
                    (job_id, name, schedule, created, NOW + 4 * H, created),
                )
                for i, status in enumerate(statuses):
                    at = NOW - (len(statuses) - i) * 86400.0 + 60
                    await db.execute(
                        "INSERT INTO job_runs (job_id, scheduled_for, started_at, finished_at, status, model,"
                        " cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            job_id,
                            at,
                            at + 2,
                            at + 5,
                            status,
                            "gpt-4o",
                            0.5 if status == "succeeded" else None,
                        ),
                    )
            # Today's cron spend: one run of job B, $0.25 on gpt-4o.
            await db.execute(
                "INSERT INTO job_runs (job_id, scheduled_for, started_at, finished_at, status, model,"
                " cost_usd) VALUES (?, ?, ?, ?, 'succeeded', 'gpt-4o', 0.25)",
                (JOB_B[0], NOW - 2 * H, NOW - 2 * H + 1, NOW - 2 * H + 3),
            )
            await db.execute(
                "INSERT INTO drift_episodes (job_id, opened_at, detail) VALUES (?, ?, ?)",
                (JOB_A[0], NOW - 3 * H, "model drifted: approved openai/gpt-4o-mini, now openai/gpt-4.1"),
            )
            await db.execute(
                "INSERT INTO substitution_episodes (asked, answered, provider, opened_at, last_at, turns)"
                " VALUES ('gpt-4o-mini', 'llama-3-70b', 'openai', ?, ?, 3)",
                (NOW - 5 * H, NOW - H),
            )
            await db.execute("INSERT INTO budget_alerts (day, at) VALUES ('2027-01-15', ?)", (NOW - H,))
            # Today's inbound spend: two turns on gpt-4o-mini, $0.0125 each.
            for i in range(2):
                await db.execute(
                    "INSERT INTO inbox (buffer_id, platform, chat_id, message_id, event, received_at, status,"
                    " turn_state, answered_at, model, cost_usd) VALUES (?, 'relay', 'c1', ?, '{}', ?, 'done',"
                    " 'delivered', ?, 'gpt-4o-mini', 0.0125)",
                    (f"b{i}", f"m{i}", NOW - 3 * H, NOW - 3 * H + 2),
                )
            for i, ok in enumerate((1, 1, 1, 0)):
                await db.execute(
                    "INSERT INTO skill_invocations (run_id, cron_id, skill_name, invoked_at, completed_at,"
                    " model, provider, duration_seconds, estimated_cost_usd, success, end_reason)"
                    " VALUES (?, ?, 'summarize', ?, ?, 'gpt-4o', 'openai', 2.0, 0.05, ?, 'succeeded')",
                    (i, JOB_A[0], NOW - 4 * H + i, NOW - 4 * H + i + 2, ok),
                )
            for title, status, ago in (
                ("triage inbox", "todo", 50.0),
                ("write digest", "todo", 2.0),
                ("old one", "done", 70.0),
                ("older one", "done", 80.0),
                ("broken", "failed", 10.0),
            ):
                await db.execute(
                    "INSERT INTO tasks (title, assignee, status, created_at) VALUES (?, 'default', ?, ?)",
                    (title, status, NOW - ago * 60),
                )
    finally:
        await db.close()
    return Seeded(home, config, env)
