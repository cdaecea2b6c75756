"""The ``tasks`` and ``task_events`` tables of state.db (migration 5).

Statuses: ``todo`` (not ready yet), ``ready`` (the dispatcher may claim it), ``running``
(claimed: ``claim_lock`` holds the owner ``host:pid``), ``done``, ``failed``, ``blocked`` (the
dispatcher cannot run it, e.g. an unknown profile; ``error`` says why). Times are Unix seconds.
Every write goes through ``write_tx`` (BEGIN IMMEDIATE), so other processes' writers wait.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, TypeVar, cast

import aiosqlite

from common.sqlite import insert_rows, read_all, read_one, write_tx
from gateway.core.lease import lapsed

STATUSES = ("todo", "ready", "running", "done", "failed", "blocked")
SOURCES = ("inbound", "cron", "manual")
_COLS = (
    "id, title, body, assignee, status, priority, created_at, started_at, finished_at,"
    " claim_lock, claim_expires_at, source, ref, result, error"
)


class ClaimPlan(Protocol):
    """What ``TaskStore.claim`` applies: a dispatcher tick's decisions (``DispatchResult``)."""

    @property
    def auto_assigned_default(self) -> list[int]:
        """Task ids that take the default assignee."""

    @property
    def blocked(self) -> list[tuple[int, str, str]]:
        """(task id, assignee, error) to block."""

    @property
    def spawned(self) -> list[tuple[int, str]]:
        """(task id, assignee) to claim."""


P = TypeVar("P", bound=ClaimPlan)


@dataclass(frozen=True)
class Task:
    """One row of ``tasks``. ``ref`` links an inbound task to ``inbox:<id>`` and a cron task
    to ``cron:<job id>@<scheduled_for>``; manual tasks have none."""

    id: int
    title: str
    body: str
    assignee: str | None
    status: str
    priority: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    claim_lock: str | None
    claim_expires_at: float | None
    source: str
    ref: str | None
    result: str | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


TaskRow = tuple[str, str, str | None, int, str, str | None, str]
"""A new task: (title, body, assignee, priority, source, ref, status)."""


def insert_task(conn: sqlite3.Connection, row: TaskRow, now: float) -> int | None:
    """Insert one task and its ``created`` event on the database thread, inside the caller's
    transaction (``run_tx``). ``now``: Unix seconds. Returns the new id, or None for a
    duplicate ``(source, ref)``. Raises ``ValueError`` naming a bad ``source`` or ``status``."""
    return insert_tasks(conn, [row], now)[0]


def insert_tasks(conn: sqlite3.Connection, rows: list[TaskRow], now: float) -> list[int | None]:
    """``insert_task`` for many rows in a few multi-row statements (an inbox admission's
    batch): per row, in order, its new id or None for a duplicate ``(source, ref)`` (a later
    row of ``rows`` repeating an earlier one's is a duplicate too; rows without a ``ref``
    never are). Raises ``ValueError`` naming a bad ``source`` or ``status`` before anything is written."""
    for _, _, _, _, source, _, status in rows:
        if source not in SOURCES:
            raise ValueError(f"source {source!r} must be one of {', '.join(SOURCES)}")
        if status not in ("todo", "ready"):
            raise ValueError(f"a new task's status {status!r} must be todo or ready")
    values = [
        (title, body, assignee, status, priority, now, source, ref)
        for title, body, assignee, priority, source, ref, status in rows
    ]
    ids = insert_rows(conn, "tasks", _TASK_COLUMNS, values, skip_conflicts=True)
    events = [
        (tid, "created", _created_payload(row[4], row[2]), now)
        for tid, row in zip(ids, rows, strict=True)
        if tid is not None
    ]
    insert_rows(conn, "task_events", ("task_id", "kind", "payload", "at"), events)
    return ids


_TASK_COLUMNS = ("title", "body", "assignee", "status", "priority", "created_at", "source", "ref")


@functools.lru_cache(maxsize=64)
def _created_payload(source: str, assignee: str | None) -> str:
    """A ``created`` event's payload (JSON text; cached: a batch repeats a handful of them)."""
    return json.dumps({"source": source, "assignee": assignee}, sort_keys=True)


class TaskStore:
    """Task rows and their event log on one state.db connection."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    # --- reads -----------------------------------------------------------------------------

    async def get(self, task_id: int) -> Task | None:
        row = await read_one(self.db, f"SELECT {_COLS} FROM tasks WHERE id = ?", (task_id,))
        return None if row is None else Task(*row)

    async def all(self, status: str | None = None, limit: int = 1000) -> list[Task]:
        """Tasks, newest first (``status`` filters)."""
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = await read_all(
            self.db, f"SELECT {_COLS} FROM tasks {where} ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return [Task(*r) for r in rows]

    async def ready(self) -> list[Task]:
        """Ready tasks in dispatch order: priority high first, then creation time, then id."""
        rows = await read_all(
            self.db,
            f"SELECT {_COLS} FROM tasks WHERE status = 'ready' ORDER BY priority DESC, created_at, id",
        )
        return [Task(*r) for r in rows]

    async def running_counts(self) -> dict[str, int]:
        """Running tasks per assignee (None/blank assignees under ``""``)."""
        rows = await read_all(
            self.db,
            "SELECT COALESCE(assignee, ''), COUNT(*) FROM tasks WHERE status = 'running'"
            " GROUP BY COALESCE(assignee, '')",
        )
        return {a: n for a, n in rows}

    async def events(self, task_id: int) -> list[dict[str, Any]]:
        rows = await read_all(
            self.db, "SELECT kind, payload, at FROM task_events WHERE task_id = ? ORDER BY id", (task_id,)
        )
        return [{"kind": k, "payload": json.loads(p), "at": at} for k, p, at in rows]

    async def counts(self) -> dict[str, int]:
        """Tasks per status (every status present, 0 when none)."""
        rows = await read_all(self.db, "SELECT status, COUNT(*) FROM tasks GROUP BY status")
        found = {s: n for s, n in rows}
        return {s: found.get(s, 0) for s in STATUSES}

    # --- writes ----------------------------------------------------------------------------

    async def event(self, task_id: int, kind: str, payload: dict[str, Any], now: float) -> None:
        """Append one event (call inside a ``write_tx``)."""
        await self.db.execute(
            "INSERT INTO task_events (task_id, kind, payload, at) VALUES (?, ?, ?, ?)",
            (task_id, kind, json.dumps(payload, sort_keys=True), now),
        )

    async def _change(
        self, task_id: int, sql: str, params: tuple[Any, ...], kind: str, payload: dict[str, Any], now: float
    ) -> None:
        """One change to a task (``sql`` with ``params``) and the ``kind`` event recording it
        (call inside a ``write_tx``)."""
        await self.db.execute(sql, params)
        await self.event(task_id, kind, payload, now)

    async def create(
        self,
        *,
        title: str,
        now: float,
        body: str = "",
        assignee: str | None = None,
        priority: int = 0,
        source: str = "manual",
        ref: str | None = None,
        status: str = "ready",
    ) -> Task | None:
        """Insert a task (and its ``created`` event) in one transaction.

        Returns the task, or None when a task with the same ``(source, ref)`` exists already.
        Raises ``ValueError`` naming a bad ``source`` or ``status``.
        """
        async with write_tx(self.db):
            task_id = await self.insert(
                title=title,
                now=now,
                body=body,
                assignee=assignee,
                priority=priority,
                source=source,
                ref=ref,
                status=status,
            )
        return None if task_id is None else await self.get(task_id)

    async def insert(
        self,
        *,
        title: str,
        now: float,
        body: str = "",
        assignee: str | None = None,
        priority: int = 0,
        source: str = "manual",
        ref: str | None = None,
        status: str = "ready",
    ) -> int | None:
        """``create`` inside the caller's ``write_tx``: the new id, or None for a duplicate
        ``(source, ref)``. Raises ``ValueError`` naming a bad ``source`` or ``status``."""
        row = (title, body, assignee, priority, source, ref, status)
        insert = cast(Callable[..., Awaitable[int | None]], self.db._execute)
        return await insert(insert_task, self.db._conn, row, now)

    async def finish(
        self, task_id: int, status: str, now: float, *, result: str | None = None, error: str | None = None
    ) -> None:
        """Close a running task as ``done`` or ``failed`` (a ``finished`` event with both)."""
        if status not in ("done", "failed"):
            raise ValueError(f"finish status {status!r} must be done or failed")
        async with write_tx(self.db):
            await self._change(
                task_id,
                "UPDATE tasks SET status = ?, finished_at = ?, result = ?, error = ?,"
                " claim_lock = NULL, claim_expires_at = NULL WHERE id = ?",
                (status, now, result, error, task_id),
                "finished",
                {"status": status, "error": error},
                now,
            )

    async def requeue_lapsed(self, now: float) -> list[int]:
        """At start-up: ``running`` tasks whose claim lapsed (lease over or owner gone) go back
        to ``ready`` with a ``requeued`` event naming the old claim. Returns their ids."""
        async with write_tx(self.db):
            rows = await read_all(
                self.db, "SELECT id, claim_lock, claim_expires_at FROM tasks WHERE status = 'running'"
            )
            ids = [r[0] for r in rows if lapsed(r[1], r[2], now)]
            for task_id, lock, _ in (r for r in rows if r[0] in ids):
                await self._change(
                    task_id,
                    "UPDATE tasks SET status = 'ready', started_at = NULL, claim_lock = NULL,"
                    " claim_expires_at = NULL WHERE id = ?",
                    (task_id,),
                    "requeued",
                    {"lapsed_claim": lock},
                    now,
                )
        return ids

    async def claim(
        self,
        plan: Callable[[list[Task], dict[str, int]], P],
        *,
        default_assignee: str | None,
        now: float,
        owner: str,
        lease_s: float,
    ) -> tuple[P, list[Task]]:
        """One dispatcher tick in one ``BEGIN IMMEDIATE`` transaction: read the ready tasks (in
        dispatch order) and the running counts, ``plan(ready, running)``, then apply the plan:
        set ``default_assignee`` on ``auto_assigned_default`` (an ``assigned`` event, source
        ``kanban.default_assignee``), block ``blocked`` (a ``blocked`` event), and claim
        ``spawned`` for ``owner`` until ``now + lease_s`` (a ``claimed`` event).

        Returns the plan and the claimed tasks as they now are (``running``, assignee set). Two
        processes on one state.db never claim one task: the second waits for the first's commit
        and then sees its claims as running. Raises what SQLite raises (rolled back).
        """
        async with write_tx(self.db):
            ready = await self.ready()
            result = plan(ready, await self.running_counts())
            by_id = {t.id: t for t in ready}
            for task_id in result.auto_assigned_default:
                await self._change(
                    task_id,
                    "UPDATE tasks SET assignee = ? WHERE id = ?",
                    (default_assignee, task_id),
                    "assigned",
                    {"assignee": default_assignee, "source": "kanban.default_assignee"},
                    now,
                )
            for task_id, assignee, error in result.blocked:
                await self._change(
                    task_id,
                    "UPDATE tasks SET status = 'blocked', error = ?, finished_at = ? WHERE id = ?",
                    (error, now, task_id),
                    "blocked",
                    {"assignee": assignee, "error": error},
                    now,
                )
            claimed: list[Task] = []
            for task_id, assignee in result.spawned:
                await self._change(
                    task_id,
                    "UPDATE tasks SET status = 'running', started_at = ?, claim_lock = ?,"
                    " claim_expires_at = ? WHERE id = ? AND status = 'ready'",
                    (now, owner, now + lease_s, task_id),
                    "claimed",
                    {"assignee": assignee, "owner": owner},
                    now,
                )
                claimed.append(
                    replace(
                        by_id[task_id],
                        assignee=assignee,
                        status="running",
                        started_at=now,
                        claim_lock=owner,
                        claim_expires_at=now + lease_s,
                    )
                )
        return result, claimed
