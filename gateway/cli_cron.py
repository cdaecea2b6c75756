"""``hermes-sidecar cron ...``: manage jobs in state.db and run one occurrence now.

Every command has ``--json``. Bad input exits 2 with one line naming the value and what is
allowed, and writes nothing. Changes notify a running sidecar so it re-plans at once.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp

from gateway.config import Config
from gateway.cron.jobs import create_job, resume_next, update_job
from gateway.cron.runner import run_occurrence
from gateway.cron.store import CronStore, Job
from gateway.mgmt import Exit, call_sidecar, emit, notify, offline_cron_context, open_db
from relay.clock import SystemClock
from relay.errors import ConfigError


def _grace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"misfire grace {text!r} is not a number of seconds (>= 0)"
        ) from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"misfire grace {text!r} must be >= 0 seconds")
    return value


def add_parsers(sub: Any, parser_class: Any) -> None:
    cron = sub.add_parser("cron", help="scheduled agent jobs")
    csub = cron.add_subparsers(dest="cron_cmd", required=True, parser_class=parser_class)

    def job_flags(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--schedule", required=required)
        p.add_argument("--prompt", required=required)
        p.add_argument("--name")
        p.add_argument("--profile")
        p.add_argument("--model")
        p.add_argument("--provider")
        p.add_argument("--skill", action="append", dest="skills")
        p.add_argument("--deliver-to", dest="deliver_to", metavar="PLATFORM:CHAT_ID")
        p.add_argument("--tz")
        p.add_argument("--catch-up", dest="catch_up")
        p.add_argument("--misfire-grace", dest="misfire_grace_seconds", type=_grace, metavar="SECONDS")

    for name in ("add", "update"):
        p = csub.add_parser(name)
        if name == "update":
            p.add_argument("id")
        job_flags(p, required=name == "add")
        p.add_argument("--json", action="store_true")
    for name in ("list",):
        p = csub.add_parser(name)
        p.add_argument("--json", action="store_true")
    for name in ("show", "pause", "resume", "remove", "run", "history"):
        p = csub.add_parser(name)
        p.add_argument("id")
        p.add_argument("--json", action="store_true")


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "schedule",
        "prompt",
        "name",
        "profile",
        "model",
        "provider",
        "skills",
        "deliver_to",
        "tz",
        "catch_up",
        "misfire_grace_seconds",
    )
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _job_text(job: Job) -> str:
    state = "enabled" if job.enabled else "paused"
    d = job.as_json()
    return (
        f"{job.id}  {job.name or '-'}  [{state}]  {job.schedule} ({job.tz})  next "
        f"{d['next_run_at'] or '-'}  provider {job.provider or '~' + str(job.provider_snapshot)}"
        f"  model {job.model or '~' + str(job.model_snapshot)}"
    )


async def run(args: argparse.Namespace, config: Config) -> int:
    clock = SystemClock()
    cmd = args.cron_cmd
    new_job: Job | None = None
    if cmd == "add":  # validate before touching state.db: bad input writes nothing
        try:
            new_job = create_job(config, _fields(args), clock.wall())
        except ConfigError as exc:
            raise Exit(2, str(exc)) from None
    elif not config.state_db.exists():
        if cmd == "list":
            emit(args.json, [], "no jobs")
            return 0
        raise Exit(2, f"unknown job id {args.id!r}; see 'hermes-sidecar cron list'")
    db = await open_db(config)
    try:
        store = CronStore(db)
        if new_job is not None:
            job = new_job
            await store.add(job)
            await notify(config)
            emit(args.json, job.as_json(), f"added {_job_text(job)}")
            return 0
        if cmd == "list":
            jobs = await store.all()
            emit(args.json, [j.as_json() for j in jobs], "\n".join(_job_text(j) for j in jobs) or "no jobs")
            return 0
        found = await store.get(args.id)
        if found is None:
            raise Exit(2, f"unknown job id {args.id!r}; see 'hermes-sidecar cron list'")
        job = found
        if cmd == "show":
            emit(args.json, job.as_json(), _job_text(job))
        elif cmd == "update":
            try:
                job = update_job(config, job, _fields(args), clock.wall())
            except ConfigError as exc:
                raise Exit(2, str(exc)) from None
            await store.save(job)
            await notify(config)
            emit(args.json, job.as_json(), f"updated {_job_text(job)}")
        elif cmd in ("pause", "resume"):
            job.enabled = cmd == "resume"
            if job.enabled:
                job.next_run_at = resume_next(job, clock.wall())
            job.updated_at = clock.wall()
            await store.save(job)
            await notify(config)
            emit(args.json, job.as_json(), f"{cmd}d {_job_text(job)}")
        elif cmd == "remove":
            await store.remove(job.id)
            await notify(config)
            emit(args.json, {"id": job.id, "removed": True}, f"removed {job.id}")
        elif cmd == "history":
            rows = await store.history(job.id)
            emit(
                args.json,
                rows,
                "\n".join(
                    f"{r['scheduled_for']}  {r['status']:16} {r['model'] or '-':20} "
                    f"${r['cost_usd'] or 0:.4f}  {r['error'] or ''}"
                    for r in rows
                )
                or "no runs",
            )
        elif cmd == "run":
            return await _run_now(args, config, store, job, clock)
        return 0
    finally:
        await db.close()


async def _run_now(
    args: argparse.Namespace, config: Config, store: CronStore, job: Job, clock: SystemClock
) -> int:
    handed = await call_sidecar(config, "/admin/cron/run", {"job_id": job.id})
    if handed is not None and handed[0] == 200:
        row = handed[1]
    else:
        async with aiohttp.ClientSession() as http:
            ctx = offline_cron_context(config, store, http, clock)
            try:
                run_id = await run_occurrence(ctx, job, clock.wall())
            finally:
                await ctx.telemetry.flush()
        if run_id is None:
            raise Exit(1, "this occurrence was already claimed")
        row = await store.run_row(run_id)
    emit(args.json, row, f"{row['status']}: {row['error'] or row['output'] or ''}")
    return 0 if row["status"] == "succeeded" else 1
