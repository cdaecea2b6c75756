"""How work from elsewhere becomes board tasks: the ``ref`` formats that link a task to its
inbox row (``inbox:<id>``) or cron occurrence (``cron:<job id>@<scheduled_for>``), and the
creation of inbound tasks. ``(source, ref)`` is unique in ``tasks``, so creating a task for
something that has one already does nothing."""

from __future__ import annotations

import sqlite3

from gateway.inbox.store import InboxItem
from gateway.kanban.store import TaskRow, insert_tasks


def inbox_ref(item_id: int) -> str:
    """The ref of an inbox item's task."""
    return f"inbox:{item_id}"


def parse_inbox_ref(ref: str | None) -> int | None:
    """``inbox:<id>`` -> the inbox id; None for any other shape."""
    if ref and ref.startswith("inbox:") and ref[len("inbox:") :].isdigit():
        return int(ref[len("inbox:") :])
    return None


def cron_ref(job_id: str, scheduled_for: float) -> str:
    """The ref of a cron occurrence's task (``repr`` keeps the float exact)."""
    return f"cron:{job_id}@{scheduled_for!r}"


def parse_cron_ref(ref: str) -> tuple[str, float]:
    """``cron:<job>@<t>`` -> (job id, scheduled_for). Raises ``ValueError`` on another shape."""
    if not ref.startswith("cron:") or "@" not in ref:
        raise ValueError(f"not a cron task ref: {ref!r} (expected cron:<job id>@<time>)")
    job_id, _, at = ref[len("cron:") :].rpartition("@")
    return job_id, float(at)


def add_inbound_tasks(conn: sqlite3.Connection, items: list[InboxItem], now: float) -> None:
    """One ready task per inbox item, assigned to its ``source.profile`` (else the default
    profile), on the database thread inside the caller's transaction (the inbox admission's
    ``run_tx``, so the row and its task commit together). ``now``: Unix seconds. Idempotent
    per item."""
    rows: list[TaskRow] = [
        (
            f"inbound {item.platform}:{item.chat_id} message {item.message_id}",
            "",
            item.profile or "default",
            0,
            "inbound",
            inbox_ref(item.id),
            "ready",
        )
        for item in items
    ]
    insert_tasks(conn, rows, now)
