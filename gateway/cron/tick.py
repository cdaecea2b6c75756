"""One scheduler tick as one transaction on the database thread (issue #16).

``plan_tick(conn, now)`` runs inside ``common.sqlite.run_tx`` (BEGIN IMMEDIATE ... COMMIT, one
thread hop): it reads the due jobs, plans each (``plan_due``), moves it on with a compare-and-set
(a job another scheduler moved already is left alone), records its misses, records
``skipped_overlap`` for a job whose previous run is still running, pauses a job whose schedule
or timezone no longer parses, and reads the next due time. What the shell must do next (start
runs, log) comes back as a ``TickPlan``. Before, each of those was its own statement and hop
(11.8 hops per occurrence in the cron bench).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from common.errors import ConfigError
from gateway.cron.plan import plan_due
from gateway.cron.schedule import fires_between, next_fire, parse_schedule, timezone
from gateway.cron.store import (
    ADVANCE_SQL,
    DUE_SQL,
    MISSED_SQL,
    NEXT_DUE_SQL,
    RECORD_SQL,
    RUNNING_SQL,
    Job,
    advance_params,
    job_from_row,
)

OVERLAP_ERROR = "previous run still running"


@dataclass
class TickPlan:
    """What a tick decided (times: Unix seconds).

    ``start``: jobs to run now with their occurrences, in order; ``missed``: (job id, how many
    occurrences were recorded missed, its ``catch_up``); ``skipped``: job ids whose occurrences
    were recorded ``skipped_overlap``; ``paused``: (job id, why) for jobs paused for a bad
    schedule or timezone; ``next_due``: the earliest next run of any enabled job, or None.
    """

    start: list[tuple[Job, list[float]]] = field(default_factory=list)
    missed: list[tuple[str, int, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    paused: list[tuple[str, str]] = field(default_factory=list)
    next_due: float | None = None


def plan_tick(conn: sqlite3.Connection, now: float) -> TickPlan:
    """Plan every job due at ``now`` and find the next due time, on the database thread inside
    the caller's transaction. Raises ``sqlite3.Error`` on a storage error and ``ValueError``
    for a stored ``catch_up`` outside ``CATCH_UP`` (the caller rolls the tick back)."""
    out = TickPlan()
    for row in conn.execute(DUE_SQL, (now,)).fetchall():
        job = job_from_row(row)
        try:
            _plan_job(conn, job, now, out)
        except ConfigError as exc:
            # A schedule or timezone that no longer parses would be due forever: pause it.
            conn.execute("UPDATE jobs SET enabled = 0, updated_at = ? WHERE id = ?", (now, job.id))
            out.paused.append((job.id, str(exc)))
    found = conn.execute(NEXT_DUE_SQL).fetchone()
    out.next_due = None if found is None or found[0] is None else float(found[0])
    return out


def _plan_job(conn: sqlite3.Connection, job: Job, now: float, out: TickPlan) -> None:
    assert job.next_run_at is not None
    tz = timezone(job.tz)
    sched = parse_schedule(job.schedule, job.created_at)
    due = fires_between(sched, anchor=job.created_at, start=job.next_run_at, end=now, tz=tz)
    new_next = next_fire(sched, anchor=job.created_at, after=now, tz=tz)
    plan = plan_due(due, now, job.catch_up, job.misfire_grace_seconds)
    # Move the job on (a spent one-shot retires) and record its misses.
    if conn.execute(ADVANCE_SQL, advance_params(job.id, job.next_run_at, new_next, now)).rowcount != 1:
        return  # another scheduler planned these occurrences
    if plan.missed:
        conn.executemany(MISSED_SQL, [(job.id, t, now) for t in plan.missed])
        out.missed.append((job.id, len(plan.missed), job.catch_up))
    if not plan.run:
        return
    if conn.execute(RUNNING_SQL, (job.id,)).fetchone() is not None:
        conn.executemany(RECORD_SQL, [(job.id, t, now, "skipped_overlap", OVERLAP_ERROR) for t in plan.run])
        out.skipped.append(job.id)
        return
    out.start.append((job, plan.run))
