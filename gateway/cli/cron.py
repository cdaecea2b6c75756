"""``hermes-sidecar cron ...``: manage jobs in state.db and run one occurrence now.

Every command has ``--json``. Bad input exits 2 with one line naming the value and what is
allowed, and writes nothing. Changes notify a running sidecar so it re-plans at once.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp

from common.clock import SystemClock
from common.errors import ConfigError
from gateway.config import Config
from gateway.cron.jobs import FIELDS, check_skills, create_job, resume_next, update_job
from gateway.cron.runner import run_occurrence
from gateway.cron.store import CronStore, Job
from gateway.mgmt import Exit, call_sidecar, emit, notify, offline_cron_context, open_db

JSON_HELP = "print one JSON document instead of text"


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
    csub = cron.add_subparsers(
        dest="cron_cmd", required=True, parser_class=parser_class, help="what to do with the jobs"
    )

    def job_flags(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument(
            "--schedule",
            required=required,
            help="every 30m|2h|1d, a 5-field cron expression, @hourly|@daily|..., "
            "a future RFC 3339 time or 'in 30m'",
        )
        p.add_argument("--prompt", required=required, help="the text the agent acts on")
        p.add_argument("--name", help="a label shown in 'cron list'")
        p.add_argument("--profile", help="profile to run as (a key of profiles: in config; default: default)")
        p.add_argument("--model", help="pin the model (default: the profile's, guarded against drift)")
        p.add_argument("--provider", help="pin the provider (default: the profile's, guarded against drift)")
        p.add_argument(
            "--skill",
            action="append",
            dest="skills",
            metavar="NAME",
            help="send $HERMES_HOME/skills/NAME/SKILL.md as a system message (repeatable)",
        )
        p.add_argument(
            "--deliver-to", dest="deliver_to", metavar="PLATFORM:CHAT_ID", help="where the answer is sent"
        )
        p.add_argument(
            "--tz", metavar="ZONE", help="IANA timezone of cron schedules (default: cron.timezone)"
        )
        p.add_argument("--catch-up", dest="catch_up", help="missed runs: latest (default), all or skip")
        p.add_argument(
            "--misfire-grace",
            dest="misfire_grace_seconds",
            type=_grace,
            metavar="SECONDS",
            help="an occurrence later than this is recorded as missed (default: never too late)",
        )

    for name, help_ in (("add", "create a job"), ("update", "change a job's fields")):
        p = csub.add_parser(name, help=help_)
        if name == "update":
            p.add_argument("id", help="the job id (see 'cron list')")
        job_flags(p, required=name == "add")
        p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = csub.add_parser("list", help="all jobs")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    for name, help_ in (
        ("show", "one job"),
        ("pause", "stop a job from firing until it is resumed"),
        ("resume", "let a paused job fire again (from its next time after now)"),
        ("remove", "delete a job"),
        ("run", "fire one occurrence now (exit 0 if it succeeded, 1 otherwise)"),
        ("history", "a job's runs, newest first"),
    ):
        p = csub.add_parser(name, help=help_)
        p.add_argument("id", help="the job id (see 'cron list')")
        p.add_argument("--json", action="store_true", help=JSON_HELP)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """The job fields the command line gave (``jobs.FIELDS``; unset flags left out)."""
    return {k: getattr(args, k) for k in FIELDS if getattr(args, k, None) is not None}


def job_state(job: Job) -> str:
    """``enabled``, ``paused`` (by the user) or ``finished`` (a one-shot with no next run)."""
    if job.enabled:
        return "enabled"
    return "finished" if job.next_run_at is None else "paused"


def job_doc(job: Job) -> dict[str, Any]:
    """A job as printed by ``--json``: its stored fields plus ``state`` and ``paused``; a
    job that is not enabled has ``next_run_at: null`` (it will not fire: ``resume`` computes a
    new next run from the time it is resumed, so the stored value is never used again)."""
    d = job.as_json()
    state = job_state(job)
    d["state"] = state
    d["paused"] = state == "paused"
    if not job.enabled:
        d["next_run_at"] = None
    return d


def _job_text(job: Job) -> str:
    state = job_state(job)
    d = job_doc(job)
    nxt = d["next_run_at"] or ("-" if state == "enabled" else state)
    return (
        f"{job.id}  {job.name or '-'}  [{state}]  {job.schedule} ({job.tz})  next "
        f"{nxt}  provider {job.provider or '~' + str(job.provider_snapshot)}"
        f"  model {job.model or '~' + str(job.model_snapshot)}"
    )


def _cost(value: float | None) -> str:
    """A run's cost: ``-`` when unknown (NULL), never ``$0.0000`` for it."""
    return "-" if value is None else f"${value:.4f}"


async def run(args: argparse.Namespace, config: Config) -> int:
    clock = SystemClock()
    cmd = args.cron_cmd
    new_job: Job | None = None
    if cmd == "add":  # validate before touching state.db: bad input writes nothing
        try:
            new_job = create_job(config, _fields(args), clock.wall())
            check_skills(config, args.skills)
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
            emit(args.json, job_doc(job), f"added {_job_text(job)}")
            return 0
        if cmd == "list":
            jobs = await store.all()
            emit(args.json, [job_doc(j) for j in jobs], "\n".join(_job_text(j) for j in jobs) or "no jobs")
            return 0
        found = await store.get(args.id)
        if found is None:
            raise Exit(2, f"unknown job id {args.id!r}; see 'hermes-sidecar cron list'")
        job = found
        if cmd == "show":
            emit(args.json, job_doc(job), _job_text(job))
        elif cmd == "update":
            try:
                job = update_job(config, job, _fields(args), clock.wall())
                check_skills(config, args.skills)
            except ConfigError as exc:
                raise Exit(2, str(exc)) from None
            await store.save(job)
            await notify(config)
            emit(args.json, job_doc(job), f"updated {_job_text(job)}")
        elif cmd in ("pause", "resume"):
            if cmd == "resume":
                # A retired one-shot (it ran, or was missed) or one whose time passed while
                # it was paused has no next run: resuming it could never fire.
                nxt = None if job_state(job) == "finished" else resume_next(job, clock.wall())
                if nxt is None:
                    raise Exit(2, await _spent_one_shot(store, job))
                job.next_run_at = nxt
            job.enabled = cmd == "resume"
            job.updated_at = clock.wall()
            await store.save(job)
            await notify(config)
            emit(args.json, job_doc(job), f"{cmd}d {_job_text(job)}")
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
                    f"{_cost(r['cost_usd']):9}  {r['error'] or ''}"
                    for r in rows
                )
                or "no runs",
            )
        elif cmd == "run":
            return await _run_now(args, config, store, job, clock)
        return 0
    finally:
        await db.close()


async def _spent_one_shot(store: CronStore, job: Job) -> str:
    """Why a job with no next run cannot be resumed (a one-shot whose time has passed)."""
    when = job.schedule  # stored as an absolute RFC 3339 time
    statuses = {r["status"] for r in await store.history(job.id)}
    if statuses - {"missed"}:
        what = "already ran"
    elif statuses:
        what = "was missed"
    else:
        what = "came due while it was paused"
    return (
        f"job {job.id} is a one-shot that {what} ({when}), so it cannot be resumed; give it a "
        f"new time with 'hermes-sidecar cron update {job.id} --schedule ...' or add a new job"
    )


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
