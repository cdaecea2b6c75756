"""Creating and updating jobs from user input: validation, next run, drift snapshots.

Every error is a ``ConfigError`` naming the bad value and what is allowed; nothing is written
before validation passed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.config import Config
from gateway.cron.drift import Axes, current_axes, snapshot_for
from gateway.cron.plan import CATCH_UP
from gateway.cron.schedule import next_fire, parse_schedule, timezone
from gateway.cron.scheduler import first_run_at
from gateway.cron.store import Job, new_job_id
from relay.errors import ConfigError

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
        parse_schedule(fields["schedule"], now)
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
        raise ConfigError(
            f"unknown profile {profile!r}; known profiles: " + ", ".join(sorted(config.profiles))
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
    if job.schedule.lower().startswith("in "):
        # "in 30m" is relative to now: store the absolute one-shot time.
        at = parse_schedule(job.schedule, now).at
        assert at is not None
        from relay.protocol.frames import rfc3339

        job.schedule = rfc3339(at)
    job.next_run_at = first_run_at(job)
    snap = snapshot_for(Axes(job.provider, job.model), current_axes(config, job.profile))
    job.provider_snapshot, job.model_snapshot = snap.provider, snap.model
    return job


def update_job(config: Config, job: Job, fields: dict[str, Any], now: float) -> Job:
    """Apply changed fields; a new schedule or timezone re-plans the next run.

    Pinning an axis (``--provider``/``--model``) clears that axis's snapshot: a pinned axis is
    never guarded.
    """
    validate(config, fields, now)
    changes = {k: v for k, v in fields.items() if k in FIELDS and v is not None}
    if "skills" in changes:
        changes["skills"] = list(changes["skills"])
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
