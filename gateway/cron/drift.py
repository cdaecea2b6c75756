"""The provider/model drift guard, pure (SPEC section 5).

A job snapshots, at creation, the provider and model that resolution picked for each axis it
does not pin. At run time, under ``fail_closed``, an unpinned axis whose current resolution
differs from its snapshot blocks the run before any provider call; ``use_snapshot`` runs on the
snapshot; ``follow_default`` turns the guard off. Pinned axes and missing snapshots are never
guarded.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Config


@dataclass(frozen=True)
class Axes:
    """A (provider, model) pair; either may be None (unresolvable)."""

    provider: str | None
    model: str | None


def current_axes(config: Config, profile: str | None) -> Axes:
    """What resolution picks now for ``profile`` (None where nothing is configured)."""
    p = config.profiles.get(profile or "default")
    if p is None:
        return Axes(None, None)
    return Axes(p.provider or config.model_provider, p.model or config.model_default)


def snapshot_for(pinned: Axes, current: Axes) -> Axes:
    """Snapshot at creation: the current value of every axis the job does not pin."""
    return Axes(None if pinned.provider else current.provider, None if pinned.model else current.model)


@dataclass(frozen=True)
class DriftDecision:
    """``blocked`` with an alert ``message``, or the provider and model to run on."""

    blocked: bool
    provider: str | None
    model: str | None
    message: str | None = None
    detail: str | None = None


def check_drift(*, job_id: str, pinned: Axes, snapshot: Axes, current: Axes, policy: str) -> DriftDecision:
    """Decide the run's provider and model, or block it (see the module docstring)."""
    provider = pinned.provider or current.provider
    model = pinned.model or current.model
    if policy == "follow_default":
        return DriftDecision(False, provider, model)
    drifted = []
    if not pinned.provider and snapshot.provider is not None and current.provider != snapshot.provider:
        drifted.append("provider")
    if not pinned.model and snapshot.model is not None and current.model != snapshot.model:
        drifted.append("model")
    if not drifted:
        return DriftDecision(False, provider, model)
    approved_p = pinned.provider or snapshot.provider or current.provider
    approved_m = pinned.model or snapshot.model or current.model
    if policy == "use_snapshot":
        return DriftDecision(False, approved_p, approved_m)
    was = f"{snapshot.provider or approved_p}/{snapshot.model or approved_m}"
    now = f"{current.provider}/{current.model}"
    detail = f"{' and '.join(drifted)} drifted: approved {was}, now {now}"
    message = (
        f"Cron job {job_id} was blocked: its {' and '.join(drifted)} changed since it was "
        f"created (approved {was}, now {now}). No provider call was made, so no unexpected "
        f"spend. To run it on the approved model, pin it: "
        f"hermes-sidecar cron update {job_id} --provider {approved_p} --model {approved_m}"
    )
    return DriftDecision(True, None, None, message, detail)
