"""One cron occurrence as an agent turn: drift guard, budget, skills, provider call, delivery,
ledger (SPEC sections 3 and 5). Every path ends in exactly one ledger status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from common.clock import Clock
from gateway.agent.provider import ProviderError, complete
from gateway.agent.resolve import Resolved
from gateway.agent.spend import SpendLedger, utc_day, utc_day_start
from gateway.config import Config
from gateway.cron.drift import Axes, check_drift, current_axes
from gateway.cron.store import CronStore, Job
from gateway.telemetry.learned import learned_hour_rates
from gateway.telemetry.record import split_run
from gateway.telemetry.routing import (
    RoutingDecision,
    RoutingSettings,
    resolve_time_aware_model,
)
from gateway.telemetry.writer import TelemetryWriter

log = logging.getLogger("gateway.cron")

Deliver = Callable[[str, str, str], Awaitable[None]]
"""``deliver(platform, chat_id, text)``: send now or queue for after the next wake."""

RUN_LEASE_S = 600.0


@dataclass
class CronContext:
    """What cron turns need from the sidecar."""

    config: Config
    store: CronStore
    clock: Clock
    http: aiohttp.ClientSession
    env: Mapping[str, str]
    deliver: Deliver
    telemetry: TelemetryWriter
    """Batched ``skill_invocations`` writer (started by whoever builds the context)."""
    on_start: Callable[[Job, float, float], None] | None = None
    """Called with ``(job, scheduled_for, started_at)`` once an occurrence is claimed and starts
    (the sidecar observes ``hermes_cron_lateness_seconds`` there). Its errors are logged, never
    raised into the run."""


def parse_target(deliver_to: str | None) -> tuple[str, str] | None:
    """``PLATFORM:CHAT_ID`` -> (platform, chat_id); None when unset."""
    if not deliver_to:
        return None
    platform, _, chat = deliver_to.partition(":")
    return platform, chat


async def _alert(ctx: CronContext, job: Job, text: str) -> None:
    target = parse_target(job.deliver_to)
    if target is None:
        log.warning("cron alert for job %s (no delivery target): %s", job.id, text)
        return
    await ctx.deliver(target[0], target[1], text)


def _load_skills(home: Path, names: list[str]) -> tuple[list[str], str | None]:
    texts = []
    for name in names:
        path = home / "skills" / name / "SKILL.md"
        try:
            texts.append(path.read_text())
        except OSError:
            return [], f"skill not found: {name} (expected {path})"
    return texts, None


async def run_occurrence(ctx: CronContext, job: Job, scheduled_for: float) -> int | None:
    """Claim and run one occurrence; return its run id (None if another process has it)."""
    store, clock = ctx.store, ctx.clock
    now = clock.wall()
    run_id = await store.claim(job.id, scheduled_for, now, RUN_LEASE_S)
    if run_id is None:
        return None
    if ctx.on_start is not None:
        try:
            ctx.on_start(job, scheduled_for, now)
        except Exception as exc:  # an observer's bug must not fail the run
            log.warning("cron on_start hook failed: %s", exc)
    try:
        await _run_claimed(ctx, job, scheduled_for, run_id, now)
    except BaseException as exc:
        # Never leave a claimed row "running" behind a crash or a cancellation.
        await store.finish(run_id, "failed", clock.wall(), error=f"interrupted: {exc!r}")
        raise
    return run_id


async def _run_claimed(ctx: CronContext, job: Job, scheduled_for: float, run_id: int, now: float) -> None:
    store, clock = ctx.store, ctx.clock

    async def telemetry(
        end_reason: str,
        model: str | None = None,
        provider: str | None = None,
        cost: float | None = None,
        tokens: tuple[int | None, int | None] | None = None,
    ) -> None:
        """One skill_invocations row per skill of this run (scaffolding reasons -> NULL),
        queued on the batched writer: a failed write is logged there and never fails a run."""
        ctx.telemetry.record_many(
            split_run(
                run_id=run_id,
                cron_id=job.id,
                skills=job.skills,
                invoked_at=now,
                completed_at=clock.wall(),
                model=model,
                provider=provider,
                cost_usd=cost,
                input_tokens=tokens[0] if tokens else None,
                output_tokens=tokens[1] if tokens else None,
                end_reason=end_reason,
            )
        )

    pinned = Axes(job.provider, job.model)
    decision = check_drift(
        job_id=job.id,
        pinned=pinned,
        snapshot=Axes(job.provider_snapshot, job.model_snapshot),
        current=current_axes(ctx.config, job.profile),
        policy=ctx.config.drift_policy,
    )
    if decision.blocked:
        assert decision.message is not None
        assert decision.detail is not None
        await store.finish(run_id, "blocked_drift", clock.wall(), error=decision.detail)
        await telemetry("blocked_drift")
        if await store.open_drift(job.id, decision.detail, clock.wall()):
            await _alert(ctx, job, decision.message)
        log.warning("cron job %s blocked: %s", job.id, decision.detail)
        return
    if await store.close_drift(job.id):
        log.info("cron job %s: drift healed", job.id)
    limit = ctx.config.cron_max_daily_usd
    if limit is not None:
        spent = await store.spend_since(utc_day_start(now))
        if spent >= limit:
            err = f"daily cron budget reached: ${spent:.4f} of ${limit:.4f} (UTC day)"
            await store.finish(run_id, "blocked_budget", clock.wall(), error=err)
            await telemetry("blocked_budget")
            if await store.budget_alert_once(utc_day(now), clock.wall()):
                await _alert(
                    ctx,
                    job,
                    f"Cron jobs are paused for today: {err}. Raise cron.max_daily_usd to allow more spend.",
                )
            log.warning("cron job %s blocked: %s", job.id, err)
            return
    skills, missing = _load_skills(ctx.config.home, job.skills)
    if missing:
        await store.finish(run_id, "failed", clock.wall(), error=missing)
        await telemetry("skill_not_found")
        log.warning("cron job %s failed: %s", job.id, missing)
        return
    model, provider_name = decision.model, decision.provider
    routing_reason = None
    route = await _route(ctx, job, model, provider_name, now)
    if route is not None:
        model, provider_name, routing_reason = route.model, route.provider, route.reason
    provider = ctx.config.providers.get(provider_name or "")
    if provider is None or not model:
        err = (
            f"no provider configured for cron job {job.id}: set model.provider, "
            "model.default and providers.<name>.base_url"
        )
        await store.finish(run_id, "failed", clock.wall(), error=err, routing_reason=routing_reason)
        await telemetry("config_error")
        log.warning("cron job %s failed: %s", job.id, err)
        return
    messages = [{"role": "system", "content": t} for t in skills]
    messages.append({"role": "user", "content": job.prompt})
    target = Resolved(job.profile or "default", model, provider)
    log.info(
        "cron job %s fired for %s on %s/%s",
        job.id,
        datetime.fromtimestamp(scheduled_for, UTC).isoformat(),
        provider.name,
        model,
    )
    try:
        result = await complete(ctx.http, target, messages, env=ctx.env)
    except ProviderError as exc:
        await store.finish(
            run_id,
            "failed",
            clock.wall(),
            error=str(exc),
            model=model,
            provider=provider.name,
            routing_reason=routing_reason,
        )
        await telemetry(exc.end_reason, model, provider.name)
        log.warning("cron job %s failed: %s", job.id, exc)
        return
    await store.finish(
        run_id,
        "succeeded",
        clock.wall(),
        model=result.model,
        provider=provider.name,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        cost_usd=result.cost_usd,
        output=result.text,
        routing_reason=routing_reason,
        answered_model=result.answered_model,
    )
    if await SpendLedger(store.db).note_answer(model, result.answered_model, provider.name, clock.wall()):
        log.warning(
            "model substitution: cron job %s asked %s/%s and %r answered; the spend is for "
            "a model nobody chose (alert once per episode)",
            job.id,
            provider.name,
            model,
            result.answered_model,
        )
    await telemetry(
        "succeeded", result.model, provider.name, result.cost_usd, (result.input_tokens, result.output_tokens)
    )
    log.info("cron job %s succeeded on %s/%s", job.id, provider.name, result.model)
    dest = parse_target(job.deliver_to)
    if dest is not None:
        await ctx.deliver(dest[0], dest[1], result.text)


async def _route(
    ctx: CronContext, job: Job, model: str | None, provider: str | None, now: float
) -> RoutingDecision | None:
    """Time-aware routing after the drift guard: only when ``routing.enabled`` with a strong
    model and its provider, and only for jobs whose model is not pinned. Logged either way."""
    c = ctx.config
    settings = RoutingSettings.from_env(
        ctx.env,
        strong_model=c.routing_strong_model,
        strong_provider=c.routing_strong_provider,
        cheap_model=c.routing_cheap_model,
        threshold_pct=c.routing_error_threshold_pct,
    )
    if (
        not c.routing_enabled
        or job.model
        or not settings.strong_provider
        or not (c.routing_strong_model or ctx.env.get("CRON_STRONG_MODEL"))
    ):
        return None
    # UTC hour, like the learned per-hour stats: provider error rates follow global load.
    hour = datetime.fromtimestamp(now, UTC).hour
    learned = await learned_hour_rates(ctx.store.db, now)
    d = resolve_time_aware_model(model or "", provider or "", True, hour, settings=settings, learned=learned)
    log.info(
        "cron job %s routing: %s/%s (%s; hour %02d, error %.1f%%)",
        job.id,
        d.provider,
        d.model,
        d.reason,
        d.hour,
        d.error_rate,
    )
    return d
