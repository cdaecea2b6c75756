"""``hermes-sidecar kanban create|list|show|dispatch``: the dispatch board from the shell.

``create`` makes a ``ready`` task and notifies a running sidecar (which dispatches at once).
``dispatch --dry-run`` reads the board and prints what a tick would do, writing nothing.
A real ``dispatch`` is handed to the running sidecar (its tasks run there, replies go out over
its relay); with none running it runs one tick in this process and waits for the spawned
tasks (inbound replies and cron deliveries are then queued in state.db for the next start).
Bad input exits 2 with one line and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import aiohttp

from common.clock import SystemClock
from common.timefmt import rfc3339
from gateway.config import Config
from gateway.conversation.chat import Conversation
from gateway.conversation.store import SessionStore
from gateway.core.activity import Activity
from gateway.cron.jobs import unknown_profile
from gateway.cron.store import CronStore
from gateway.inbox.store import InboxItem, InboxStore
from gateway.kanban.board import Board
from gateway.kanban.dispatch import DispatchResult, as_assignee
from gateway.kanban.execute import TaskExecutor
from gateway.kanban.store import STATUSES, Task, TaskStore
from gateway.mgmt import Exit, call_sidecar, emit, notify, offline_cron_context, open_db
from gateway.runtime.inbox_worker import InboxWorker, Sent


def _priority(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"priority {text!r} is not an integer (higher runs first)") from None


def _status(text: str) -> str:
    if text not in STATUSES:
        raise argparse.ArgumentTypeError(f"status {text!r} must be one of {', '.join(STATUSES)}")
    return text


def _task_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"task id {text!r} is not a positive integer (see 'kanban list')"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"task id {text!r} must be a positive integer (see 'kanban list')")
    return value


JSON_HELP = "print one JSON document instead of text"


def add_parsers(sub: Any, parser_class: Any) -> None:
    k = sub.add_parser("kanban", help="the dispatch board: tasks per profile")
    ksub = k.add_subparsers(
        dest="kanban_cmd", required=True, parser_class=parser_class, help="what to do on the board"
    )
    c = ksub.add_parser("create", help="create a ready task")
    c.add_argument("--title", required=True, help="the task's title (non-empty; part of the prompt)")
    c.add_argument("--body", default="", help="the task's text (the rest of the prompt)")
    c.add_argument(
        "--assignee",
        help="profile name, a key of profiles: in config or default (default: kanban.default_assignee)",
    )
    c.add_argument("--priority", type=_priority, default=0, help="integer, higher first")
    c.add_argument("--json", action="store_true", help=JSON_HELP)
    ls = ksub.add_parser("list", help="tasks, newest first")
    ls.add_argument("--status", type=_status, help="only tasks in this status: " + ", ".join(STATUSES))
    ls.add_argument("--json", action="store_true", help=JSON_HELP)
    sh = ksub.add_parser("show", help="one task with its events")
    sh.add_argument("id", type=_task_id, help="the task id (see 'kanban list')")
    sh.add_argument("--json", action="store_true", help=JSON_HELP)
    d = ksub.add_parser("dispatch", help="one dispatcher tick")
    d.add_argument("--dry-run", action="store_true", help="report the decisions, write nothing")
    d.add_argument("--json", action="store_true", help=JSON_HELP)


def _task_line(t: Task) -> str:
    return f"#{t.id}  [{t.status}]  {t.assignee or '-'}  p{t.priority}  {t.source}  {t.title}" + (
        f"  ({t.error})" if t.error else ""
    )


def _unknown_task(task_id: int) -> str:
    return f"unknown task id {task_id}; see 'hermes-sidecar kanban list'"


def _when(ts: float | None) -> str:
    return "-" if ts is None else rfc3339(ts)


def _show_text(t: Task, events: list[dict[str, Any]]) -> str:
    lines = [
        _task_line(t),
        f"created {_when(t.created_at)}  started {_when(t.started_at)}  finished {_when(t.finished_at)}",
    ]
    if t.ref:
        lines.append(f"ref {t.ref}")
    if t.body:
        lines += ["", t.body]
    if t.result:
        lines += ["", "result:", t.result]
    lines += ["", "events:"]
    lines += [
        f"  {_when(e['at'])}  {e['kind']:10} {json.dumps(e['payload'], sort_keys=True)}" for e in events
    ] or ["  none"]
    return "\n".join(lines)


def result_lines(result: DispatchResult, titles: dict[int, str], default: str) -> list[str]:
    """The readable report of a tick, one line per decision (``default``: the default
    assignee the auto-assigned tasks got)."""

    def name(task_id: int) -> str:
        return f"#{task_id} {titles.get(task_id, '')}".rstrip()

    lines = [
        f"Auto-assigned to kanban.default_assignee={default}: {name(i)}" for i in result.auto_assigned_default
    ]
    lines += [f"Spawned ({a}): {name(i)}" for i, a in result.spawned]
    lines += [
        f"Deferred ({a} at per-profile cap, {n} running): {name(i)}"
        for i, a, n in result.skipped_per_profile_capped
    ]
    lines += [
        f"Deferred (global cap kanban.max_in_progress reached): {name(i)}" for i in result.skipped_global_cap
    ]
    lines += [f"Unassigned (no kanban.default_assignee): {name(i)}" for i in result.skipped_unassigned]
    lines += [f"Blocked: {name(i)}: {err}" for i, _, err in result.blocked]
    return lines or ["Nothing to dispatch"]


def _from_json(doc: dict[str, Any]) -> DispatchResult:
    return DispatchResult(
        spawned=[(int(i), str(a)) for i, a in doc.get("spawned", [])],
        skipped_unassigned=[int(i) for i in doc.get("skipped_unassigned", [])],
        skipped_per_profile_capped=[
            (int(i), str(a), int(n)) for i, a, n in doc.get("skipped_per_profile_capped", [])
        ],
        skipped_global_cap=[int(i) for i in doc.get("skipped_global_cap", [])],
        auto_assigned_default=[int(i) for i in doc.get("auto_assigned_default", [])],
        blocked=[(int(i), str(a), str(e)) for i, a, e in doc.get("blocked", [])],
    )


async def run(args: argparse.Namespace, config: Config) -> int:
    clock = SystemClock()
    cmd = args.kanban_cmd
    if cmd == "create":  # validate before touching state.db: bad input writes nothing
        if not args.title.strip():
            raise Exit(2, "--title must be a non-empty string")
        if args.assignee is not None and not args.assignee.strip():
            raise Exit(
                2,
                f"--assignee {args.assignee!r} is blank; give a profile name or "
                "omit it (kanban.default_assignee then applies)",
            )
        if args.assignee is not None and args.assignee.strip() not in config.profiles:
            raise Exit(2, unknown_profile(config, args.assignee.strip()))
    elif not config.state_db.exists():  # reading an empty board creates nothing
        if cmd == "show":
            raise Exit(2, _unknown_task(args.id))
        if cmd == "list":
            emit(args.json, [], "no tasks")
        else:
            emit(args.json, DispatchResult().to_json(), "Nothing to dispatch")
        return 0
    db = await open_db(config)
    try:
        store = TaskStore(db)
        if cmd == "create":
            task = await store.create(
                title=args.title.strip(),
                body=args.body,
                assignee=args.assignee.strip() if args.assignee else None,
                priority=args.priority,
                now=clock.wall(),
            )
            assert task is not None  # manual tasks have no ref, so never a duplicate
            await notify(config)
            emit(args.json, task.to_json(), f"created {_task_line(task)}")
            return 0
        if cmd == "list":
            tasks = await store.all(args.status)
            emit(
                args.json, [t.to_json() for t in tasks], "\n".join(_task_line(t) for t in tasks) or "no tasks"
            )
            return 0
        if cmd == "show":
            found = await store.get(args.id)
            if found is None:
                raise Exit(2, _unknown_task(args.id))
            events = await store.events(found.id)
            emit(args.json, {**found.to_json(), "events": events}, _show_text(found, events))
            return 0
        result = await _dispatch(args, config, store, clock)
        named = {
            *(i for i, _ in result.spawned),
            *result.skipped_unassigned,
            *(i for i, _, _ in result.skipped_per_profile_capped),
            *result.skipped_global_cap,
            *(i for i, _, _ in result.blocked),
        }
        titles = {i: t.title for i in named if (t := await store.get(i)) is not None}
        default = as_assignee(config.kanban_default_assignee) or ""
        emit(args.json, result.to_json(), "\n".join(result_lines(result, titles, default)))
        return 0
    finally:
        await db.close()


async def _dispatch(
    args: argparse.Namespace, config: Config, store: TaskStore, clock: SystemClock
) -> DispatchResult:
    if not args.dry_run:
        handed = await call_sidecar(config, "/admin/kanban/dispatch", {"dry_run": False})
        if handed is not None and handed[0] == 200:
            return _from_json(handed[1])
    async with aiohttp.ClientSession() as http:
        ctx = offline_cron_context(config, CronStore(store.db), http, clock)
        inbox = InboxStore(store.db)

        async def queue_reply(
            item: InboxItem, chunk: str, _key: str, _answered_at: float
        ) -> tuple[Sent, str | None]:
            # No sidecar: the chunk waits in state.db's deliveries for the next start.
            await ctx.deliver(item.platform, item.chat_id, chunk)
            return Sent.CONFIRMED, None

        worker = InboxWorker(
            inbox=inbox,
            config=config,
            http=http,
            env=os.environ,
            clock=clock,
            send=queue_reply,
            conversation=Conversation(SessionStore(store.db), config),
        )
        board = Board(
            store,
            config=config,
            clock=clock,
            activity=Activity(clock),
            execute=TaskExecutor(ctx, inbox, worker.turn),
        )
        try:
            result = await board.tick(dry_run=args.dry_run)
            await board.wait_idle()  # one tick: the spawned tasks run here, to the end
        finally:
            await ctx.telemetry.flush()
    return result
