"""Creating and updating jobs from user input: validation, next run, drift snapshots.

Every error is a ``ConfigError`` naming the bad value and what is allowed; nothing is written
before validation passed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.timefmt import rfc3339
from gateway.config import Config
from gateway.cron.drift import Axes, current_axes, snapshot_for
from gateway.cron.plan import CATCH_UP
from gateway.cron.schedule import next_fire, parse_schedule, timezone
from gateway.cron.scheduler import first_run_at
from gateway.cron.store import Job, new_job_id

FIELDS = (
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


def validate(config: Config, fields: dict[str, Any], now: float) -> None:
    """Check user-supplied job fields; raises ``ConfigError`` naming the first bad one."""
    if "schedule" in fields:
        sched = parse_schedule(fields["schedule"], now)
        if sched.kind == "once" and sched.at is not None and sched.at <= now:
            raise ConfigError(
                f"schedule {sched.text!r} is {rfc3339(sched.at)}, which is in the past (now "
                f"{rfc3339(now)}); give a future RFC 3339 time or a delay like 'in 30m'"
            )
    if fields.get("tz") is not None:
        timezone(fields["tz"])
    if fields.get("catch_up") is not None and fields["catch_up"] not in CATCH_UP:
        raise ConfigError(
            f"catch-up {fields['catch_up']!r} is not allowed; use one of " + ", ".join(CATCH_UP)
        )
    grace = fields.get("misfire_grace_seconds")
    if grace is not None and (not isinstance(grace, int | float) or grace < 0):
        raise ConfigError(f"misfire grace {grace!r} must be a number of seconds >= 0")
    if "prompt" in fields and not str(fields["prompt"] or "").strip():
        raise ConfigError("prompt is empty; give the text the agent should act on")
    target = fields.get("deliver_to")
    if target is not None and (":" not in target or not target.split(":", 1)[0]):
        raise ConfigError(f"deliver-to {target!r} must be PLATFORM:CHAT_ID")
    profile = fields.get("profile")
    if profile is not None and profile not in config.profiles:
        raise ConfigError(unknown_profile(config, profile))


def unknown_profile(config: Config, name: str) -> str:
    """The one-line error for a profile that is not configured, naming the known ones."""
    return (
        f"unknown profile {name!r}; known profiles: {', '.join(sorted(config.profiles)) or 'default'}"
        f" (add it under profiles: in {config.home / 'config.yaml'})"
    )


def known_skills(home: Path) -> list[str]:
    """Names of the skills installed under ``home/skills/<name>/SKILL.md``, sorted."""
    try:
        return sorted(d.name for d in (home / "skills").iterdir() if (d / "SKILL.md").is_file())
    except OSError:
        return []


def check_skills(config: Config, names: list[str] | None) -> None:
    """Raise ``ConfigError`` for the first skill without ``$HERMES_HOME/skills/NAME/SKILL.md``,
    listing the installed ones (or saying where skills go when there are none).

    Only user input is checked this way: a skill removed after the job was created fails that
    run (``skill not found``), it does not make the job unloadable.
    """
    for name in names or []:
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(
                f"skill {name!r} is not a skill name (a directory under {config.home / 'skills'})"
            )
        if (config.home / "skills" / name / "SKILL.md").is_file():
            continue
        known = known_skills(config.home)
        where = config.home / "skills" / "<name>" / "SKILL.md"
        hint = (
            f"known skills: {', '.join(known)}"
            if known
            else f"no skills are installed (each goes in {where})"
        )
        raise ConfigError(
            f"unknown skill {name!r}: {config.home / 'skills' / name / 'SKILL.md'} not found; {hint}"
        )


def create_job(config: Config, fields: dict[str, Any], now: float) -> Job:
    """A new job from CLI fields, with its first run time and drift snapshots (never fails on
    resolution: an unresolvable axis snapshots None)."""
    validate(config, fields, now)
    job = Job(
        id=new_job_id(),
        prompt=fields["prompt"],
        schedule=fields["schedule"].strip(),
        tz=fields.get("tz") or config.cron_timezone,
        created_at=now,
        updated_at=now,
        name=fields.get("name"),
        profile=fields.get("profile"),
        model=fields.get("model"),
        provider=fields.get("provider"),
        skills=list(fields.get("skills") or []),
        deliver_to=fields.get("deliver_to"),
        catch_up=fields.get("catch_up") or "latest",
        misfire_grace_seconds=fields.get("misfire_grace_seconds"),
    )
    job.schedule = _absolute(job.schedule, now)
    job.next_run_at = first_run_at(job)
    snap = snapshot_for(Axes(job.provider, job.model), current_axes(config, job.profile))
    job.provider_snapshot, job.model_snapshot = snap.provider, snap.model
    return job


def _absolute(schedule: str, now: float) -> str:
    """``in 30m`` is relative to ``now``: the absolute one-shot time to store (other forms
    unchanged), so later re-plans never measure it from another instant."""
    if not schedule.lower().startswith("in "):
        return schedule
    at = parse_schedule(schedule, now).at
    assert at is not None
    return rfc3339(at)


def update_job(config: Config, job: Job, fields: dict[str, Any], now: float) -> Job:
    """Apply changed fields; a new schedule or timezone re-plans the next run.

    Pinning an axis (``--provider``/``--model``) clears that axis's snapshot: a pinned axis is
    never guarded.
    """
    validate(config, fields, now)
    changes = {k: v for k, v in fields.items() if k in FIELDS and v is not None}
    if "skills" in changes:
        changes["skills"] = list(changes["skills"])
    if "schedule" in changes:
        changes["schedule"] = _absolute(changes["schedule"].strip(), now)
    new = replace(job, **changes, updated_at=now)
    if "provider" in changes:
        new.provider_snapshot = None
    if "model" in changes:
        new.model_snapshot = None
    if "schedule" in changes or "tz" in changes:
        sched = parse_schedule(new.schedule, now)
        new.next_run_at = next_fire(sched, anchor=new.created_at, after=now, tz=timezone(new.tz))
        new.enabled = job.enabled and new.next_run_at is not None
    return new


def resume_next(job: Job, now: float) -> float | None:
    """Next run for a resumed job: the first fire after now (paused time is not caught up)."""
    sched = parse_schedule(job.schedule, job.created_at)
    return next_fire(sched, anchor=job.created_at, after=now, tz=timezone(job.tz))
