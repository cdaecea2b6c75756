"""Cron persistence in state.db: ``jobs``, the ``job_runs`` ledger (one row per occurrence,
unique ``(job_id, scheduled_for)``: the claim), drift episodes and budget alerts. Queued
deliveries are ``DeliveryStore``'s (``gateway/cron/deliveries_store.py``).

Claims are plain inserts against the unique key, so two processes on one state.db never run
an occurrence twice. A ``running`` row carries a lease and its owner (``host:pid``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import aiosqlite

from common.sqlite import read_all, read_one, write_one, write_tx
from common.timefmt import rfc3339_or_none
from gateway.core.lease import OWNER, lapsed
from gateway.cron.deliveries_store import DeliveryStore

RUN_STATUSES = (
    "running",
    "succeeded",
    "failed",
    "blocked_drift",
    "blocked_budget",
    "skipped_overlap",
    "missed",
)


@dataclass
class Job:
    """One cron job; times are Unix seconds (UTC)."""

    id: str
    prompt: str
    schedule: str
    tz: str
    created_at: float
    name: str | None = None
    profile: str | None = None
    model: str | None = None
    provider: str | None = None
    provider_snapshot: str | None = None
    model_snapshot: str | None = None
    skills: list[str] = field(default_factory=list)
    deliver_to: str | None = None
    catch_up: str = "latest"
    misfire_grace_seconds: float | None = None
    enabled: bool = True
    next_run_at: float | None = None
    updated_at: float = 0.0

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("created_at", "next_run_at", "updated_at"):
            d[key] = rfc3339_or_none(d[key])
        return d


_COLS = (
    "id, name, prompt, schedule, tz, profile, model, provider, provider_snapshot, "
    "model_snapshot, skills, deliver_to, catch_up, misfire_grace_seconds, enabled, "
    "created_at, next_run_at, updated_at"
)


def _values(job: Job) -> dict[str, Any]:
    """A job's stored columns by name (skills as JSON, enabled as 0/1)."""
    return {
        "id": job.id,
        "name": job.name,
        "prompt": job.prompt,
        "schedule": job.schedule,
        "tz": job.tz,
        "profile": job.profile,
        "model": job.model,
        "provider": job.provider,
        "provider_snapshot": job.provider_snapshot,
        "model_snapshot": job.model_snapshot,
        "skills": json.dumps(job.skills),
        "deliver_to": job.deliver_to,
        "catch_up": job.catch_up,
        "misfire_grace_seconds": job.misfire_grace_seconds,
        "enabled": int(job.enabled),
        "created_at": job.created_at,
        "next_run_at": job.next_run_at,
        "updated_at": job.updated_at,
    }


DUE_SQL = f"SELECT {_COLS} FROM jobs WHERE enabled = 1 AND next_run_at <= ? ORDER BY next_run_at"
"""Enabled jobs due at or before a time (param: now), earliest first."""
NEXT_DUE_SQL = "SELECT MIN(next_run_at) FROM jobs WHERE enabled = 1 AND next_run_at IS NOT NULL"
ADVANCE_SQL = (
    "UPDATE jobs SET next_run_at = ?, enabled = CASE WHEN ? IS NULL THEN 0 ELSE"
    " enabled END, updated_at = CASE WHEN ? IS NULL THEN ? ELSE updated_at END"
    " WHERE id = ? AND next_run_at IS ?"
)
"""Compare-and-set of a job's next run (params: ``advance_params``)."""
MISSED_SQL = (
    "INSERT INTO job_runs (job_id, scheduled_for, finished_at, status)"
    " VALUES (?, ?, ?, 'missed') ON CONFLICT (job_id, scheduled_for) DO NOTHING"
)
RUNNING_SQL = "SELECT 1 FROM job_runs WHERE job_id = ? AND status = 'running' LIMIT 1"
RECORD_SQL = (
    "INSERT INTO job_runs (job_id, scheduled_for, finished_at, status, error)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_id, scheduled_for) DO NOTHING"
)


def advance_params(
    job_id: str, expected: float | None, next_run_at: float | None, now: float
) -> tuple[Any, ...]:
    """``ADVANCE_SQL``'s parameters: move from ``expected`` to ``next_run_at`` (None retires)."""
    return (next_run_at, next_run_at, next_run_at, now, job_id, expected)


def job_from_row(r: Any) -> Job:
    """A ``Job`` from a row of ``SELECT {_COLS}``."""
    return _job(r)


def _job(r: Any) -> Job:
    return Job(
        id=r[0],
        name=r[1],
        prompt=r[2],
        schedule=r[3],
        tz=r[4],
        profile=r[5],
        model=r[6],
        provider=r[7],
        provider_snapshot=r[8],
        model_snapshot=r[9],
        skills=json.loads(r[10]),
        deliver_to=r[11],
        catch_up=r[12],
        misfire_grace_seconds=r[13],
        enabled=bool(r[14]),
        created_at=r[15],
        next_run_at=r[16],
        updated_at=r[17],
    )


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class CronStore:
    """The cron tables of state.db (the connection is shared with the rest of the sidecar).

    Single writes go through ``write_one`` and multi-statement ones through ``write_tx``: both
    are safe beside another process writing the same file.
    """

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self.deliveries = DeliveryStore(db)
        """The ``deliveries`` table on the same connection (its own store)."""

    async def _write(self, sql: str, params: Any = ()) -> aiosqlite.Cursor:
        return await write_one(self.db, sql, params)

    # --- jobs ------------------------------------------------------------------------------

    async def add(self, job: Job) -> None:
        """Insert a new job (every column)."""
        values = _values(job)
        await self._write(
            f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            tuple(values.values()),
        )

    async def save(self, job: Job) -> None:
        """Overwrite every column of an existing job but its id and creation time."""
        values = _values(job)
        del values["id"], values["created_at"]
        sets = ", ".join(f"{column} = ?" for column in values)
        await self._write(f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), job.id))

    async def get(self, job_id: str) -> Job | None:
        row = await read_one(self.db, f"SELECT {_COLS} FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    async def all(self) -> list[Job]:
        return [_job(r) for r in await read_all(self.db, f"SELECT {_COLS} FROM jobs ORDER BY created_at, id")]

    async def due(self, now: float) -> list[Job]:
        """Enabled jobs whose next run is at or before ``now``, earliest first."""
        return [_job(r) for r in await read_all(self.db, DUE_SQL, (now,))]

    async def next_due(self) -> float | None:
        """The earliest next run of any enabled job (Unix seconds), or None."""
        row = await read_one(self.db, NEXT_DUE_SQL)
        return None if row is None or row[0] is None else float(row[0])

    async def remove(self, job_id: str) -> bool:
        cur = await self._write("DELETE FROM jobs WHERE id = ?", (job_id,))
        await self._write("DELETE FROM drift_episodes WHERE job_id = ?", (job_id,))
        return cur.rowcount == 1

    async def advance(
        self,
        job_id: str,
        *,
        expected: float | None,
        next_run_at: float | None,
        missed: list[float],
        now: float,
    ) -> bool:
        """One transaction: compare-and-set ``next_run_at`` (from ``expected``), record the
        ``missed`` occurrences, and retire the job when there is no next run.

        Returns False (and writes nothing) when another scheduler already moved the job on.
        Without misses the compare-and-set is one autocommit statement (one thread hop instead
        of three: the common case, one occurrence on time).
        """
        update = ADVANCE_SQL
        params = advance_params(job_id, expected, next_run_at, now)
        if not missed:
            return (await self._write(update, params)).rowcount == 1
        async with write_tx(self.db):
            cur = await self.db.execute(update, params)
            if cur.rowcount != 1:
                return False
            await self.db.executemany(MISSED_SQL, [(job_id, t, now) for t in missed])
        return True

    # --- ledger ----------------------------------------------------------------------------

    async def claim(self, job_id: str, scheduled_for: float, now: float, lease_s: float) -> int | None:
        """Claim an occurrence to run; its run id, or None if any process already has a row."""
        cur = await self._write(
            "INSERT INTO job_runs (job_id, scheduled_for, started_at, lease_until, owner, status)"
            " VALUES (?, ?, ?, ?, ?, 'running') ON CONFLICT (job_id, scheduled_for) DO NOTHING",
            (job_id, scheduled_for, now, now + lease_s, OWNER),
        )
        return cur.lastrowid if cur.rowcount == 1 else None

    async def record(
        self, job_id: str, scheduled_for: float, status: str, now: float, error: str | None = None
    ) -> int | None:
        """Record an occurrence that did not run (missed, skipped_overlap, blocked_*)."""
        cur = await self._write(RECORD_SQL, (job_id, scheduled_for, now, status, error))
        return cur.lastrowid if cur.rowcount == 1 else None

    async def finish(self, run_id: int, status: str, now: float, **fields: Any) -> None:
        """Close a claimed run with its status and result columns."""
        allowed = {
            "error",
            "model",
            "provider",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "routing_reason",
            "output",
            "answered_model",
        }
        sets = ["status = ?", "finished_at = ?", "lease_until = NULL"]
        params: list[Any] = [status, now]
        for key, value in fields.items():
            if key not in allowed:
                raise ValueError(f"unknown ledger column {key!r}")
            sets.append(f"{key} = ?")
            params.append(value)
        params.append(run_id)
        await self._write(f"UPDATE job_runs SET {', '.join(sets)} WHERE id = ?", params)

    async def running(self, job_id: str) -> bool:
        return await read_one(self.db, RUNNING_SQL, (job_id,)) is not None

    async def fail_interrupted(self, now: float) -> int:
        """At start-up: running rows whose lease lapsed or whose owner died become failed."""
        rows = await read_all(self.db, "SELECT id, lease_until, owner FROM job_runs WHERE status = 'running'")
        dead = [r[0] for r in rows if lapsed(r[2], r[1], now)]
        for run_id in dead:
            await self.finish(run_id, "failed", now, error="interrupted")
        return len(dead)

    async def history(self, job_id: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = await read_all(
            self.db,
            "SELECT id, job_id, scheduled_for, started_at, finished_at, status, error, model,"
            " provider, input_tokens, output_tokens, cost_usd, routing_reason, output"
            " FROM job_runs WHERE job_id = ? ORDER BY scheduled_for DESC, id DESC LIMIT ?",
            (job_id, limit),
        )
        return [self._run(r) for r in rows]

    async def run_row(self, run_id: int) -> dict[str, Any]:
        row = await read_one(
            self.db,
            "SELECT id, job_id, scheduled_for, started_at, finished_at, status, error, model,"
            " provider, input_tokens, output_tokens, cost_usd, routing_reason, output"
            " FROM job_runs WHERE id = ?",
            (run_id,),
        )
        assert row is not None
        return self._run(row)

    @staticmethod
    def _run(r: Any) -> dict[str, Any]:
        keys = (
            "id",
            "job_id",
            "scheduled_for",
            "started_at",
            "finished_at",
            "status",
            "error",
            "model",
            "provider",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "routing_reason",
            "output",
        )
        d = dict(zip(keys, r, strict=True))
        for k in ("scheduled_for", "started_at", "finished_at"):
            d[k] = rfc3339_or_none(d[k])
        return d

    async def spend_since(self, since: float) -> float:
        """Cron spend (USD) of runs started at or after ``since``."""
        row = await read_one(
            self.db, "SELECT COALESCE(SUM(cost_usd), 0) FROM job_runs WHERE started_at >= ?", (since,)
        )
        return float(row[0]) if row else 0.0

    # --- alerts ------------------------------------------------------------------------

    async def open_drift(self, job_id: str, detail: str, now: float) -> bool:
        """Open a drift episode; True if it is new (so one alert per episode)."""
        cur = await self._write(
            "INSERT INTO drift_episodes (job_id, opened_at, detail) VALUES (?, ?, ?)"
            " ON CONFLICT (job_id) DO NOTHING",
            (job_id, now, detail),
        )
        return cur.rowcount == 1

    async def close_drift(self, job_id: str) -> bool:
        cur = await self._write("DELETE FROM drift_episodes WHERE job_id = ?", (job_id,))
        return cur.rowcount == 1

    async def drift_episodes(self) -> list[dict[str, Any]]:
        rows = await read_all(
            self.db, "SELECT job_id, opened_at, detail FROM drift_episodes ORDER BY opened_at"
        )
        return [{"job_id": r[0], "opened_at": rfc3339_or_none(r[1]), "detail": r[2]} for r in rows]

    async def budget_alert_once(self, day: str, now: float) -> bool:
        cur = await self._write(
            "INSERT INTO budget_alerts (day, at) VALUES (?, ?) ON CONFLICT (day) DO NOTHING",
            (day, now),
        )
        return cur.rowcount == 1
