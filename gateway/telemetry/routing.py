"""Time-aware model routing for cron turns, pure (SPEC section 6).

Off-hours are 18:00-05:59. An interactive turn always keeps the base model. A cron turn keeps
the base model unless the hour's expected error rate is at least the threshold, then it goes
to the strong model. Expected error rate: the prior table below, or, once telemetry holds at
least ``MIN_LEARNED_SAMPLES`` cron invocations for that hour of day, the observed failure rate
smoothed toward the prior with a Beta prior worth ``PRIOR_WEIGHT`` samples:
``(failures + prior * 20) / (n + 20)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

PRIOR_ERROR_PCT = {18: 9.4, 19: 8.1, 20: 7.5, 21: 6.8, 22: 6.2, 23: 5.9, 0: 5.5, 1: 5.2}
DEFAULT_ERROR_PCT = 4.0
DEFAULT_CHEAP_MODEL = "qwen2.5:7b"
DEFAULT_THRESHOLD_PCT = 6.0
MIN_LEARNED_SAMPLES = 30
PRIOR_WEIGHT = 20


@dataclass(frozen=True)
class RoutingDecision:
    """What a turn runs on and why; ``error_rate`` in percent."""

    model: str
    provider: str
    reason: str
    hour: int
    error_rate: float
    is_off_hours: bool


@dataclass(frozen=True)
class RoutingSettings:
    """Strong/cheap models and the threshold (percent); env ``CRON_*`` wins over config.

    There is no default strong model: with none configured (``""``) no turn is ever routed.
    """

    strong_model: str = ""
    strong_provider: str = ""
    cheap_model: str = DEFAULT_CHEAP_MODEL
    threshold_pct: float = DEFAULT_THRESHOLD_PCT

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        strong_model: str | None = None,
        strong_provider: str | None = None,
        cheap_model: str | None = None,
        threshold_pct: float | None = None,
    ) -> RoutingSettings:
        env = os.environ if env is None else env
        try:
            thr = float(env["CRON_ERROR_THRESHOLD"])
        except (KeyError, ValueError):
            thr = threshold_pct if threshold_pct is not None else DEFAULT_THRESHOLD_PCT
        return cls(
            strong_model=env.get("CRON_STRONG_MODEL") or strong_model or "",
            strong_provider=env.get("CRON_STRONG_PROVIDER") or strong_provider or "",
            cheap_model=env.get("CRON_CHEAP_MODEL") or cheap_model or DEFAULT_CHEAP_MODEL,
            threshold_pct=thr,
        )


def routing_off_reason(enabled: bool, settings: RoutingSettings) -> str | None:
    """Why routing does not apply (None when it does): it needs ``routing.enabled`` and a
    strong model **and** its provider (SPEC section 6)."""
    if not enabled:
        return "routing.enabled is false"
    if not settings.strong_model:
        return "no strong model configured (routing.strong_model or CRON_STRONG_MODEL)"
    if not settings.strong_provider:
        return "no strong provider configured (routing.strong_provider or CRON_STRONG_PROVIDER)"
    return None


def is_off_hours(hour: int) -> bool:
    """18:00-05:59 is off-hours."""
    return hour >= 18 or hour < 6


def get_hour_error_rate(hour: int, learned: Mapping[int, tuple[int, int]] | None = None) -> float:
    """Expected error rate (percent) for ``hour``; ``learned`` maps hour -> (failures, samples)."""
    prior = PRIOR_ERROR_PCT.get(hour % 24, DEFAULT_ERROR_PCT)
    if learned is not None and hour in learned:
        failures, n = learned[hour]
        if n >= MIN_LEARNED_SAMPLES:
            return 100.0 * (failures + prior / 100.0 * PRIOR_WEIGHT) / (n + PRIOR_WEIGHT)
    return prior


def resolve_time_aware_model(
    base_model: str = "",
    base_provider: str = "",
    is_cron: bool = False,
    hour: int | None = None,
    *,
    settings: RoutingSettings | None = None,
    learned: Mapping[int, tuple[int, int]] | None = None,
) -> RoutingDecision:
    """Pick the model for a turn at ``hour`` (0-23, UTC unless the caller says otherwise)."""
    s = settings or RoutingSettings()
    h = 0 if hour is None else hour % 24
    rate = get_hour_error_rate(h, learned)
    off = is_off_hours(h)
    if not is_cron:
        return RoutingDecision(base_model, base_provider, "Interactive turn: base model kept", h, rate, off)
    if not s.strong_model:
        return RoutingDecision(
            base_model, base_provider, "no strong model configured: base model kept", h, rate, off
        )
    if rate >= s.threshold_pct:
        return RoutingDecision(
            s.strong_model,
            s.strong_provider or base_provider,
            f"cron turn at {h:02d}:00: expected error {rate:.1f}% >= {s.threshold_pct:.1f}%, strong model",
            h,
            rate,
            off,
        )
    label = "off-hours" if off else "low-error hour"
    return RoutingDecision(
        base_model,
        base_provider,
        f"cron turn at {h:02d}:00 ({label}): expected error {rate:.1f}% < "
        f"{s.threshold_pct:.1f}%, base model kept",
        h,
        rate,
        off,
    )


def get_routing_report(
    settings: RoutingSettings | None = None,
    learned: Mapping[int, tuple[int, int]] | None = None,
    *,
    enabled: bool = True,
    base_model: str = "<base>",
) -> list[dict[str, object]]:
    """A 24-hour forecast: hour label, error rate, off-hours, learned or prior, the model a
    cron turn of an unpinned job would use, and whether routing is on (``enabled``) with
    which strong model and provider (null when not configured). With routing off
    (``routing_off_reason``) every hour shows ``base_model``."""
    s = settings or RoutingSettings()
    on = routing_off_reason(enabled, s) is None
    out = []
    for h in range(24):
        d = resolve_time_aware_model(base_model, "", True, h, settings=s, learned=learned)
        is_learned = learned is not None and learned.get(h, (0, 0))[1] >= MIN_LEARNED_SAMPLES
        out.append(
            {
                "hour": f"{h:02d}:00",
                "error_rate": round(d.error_rate, 3),
                "off_hours": d.is_off_hours,
                "source": "learned" if is_learned else "prior",
                "model": d.model if on else base_model,
                "enabled": on,
                "strong_model": s.strong_model or None,
                "strong_provider": s.strong_provider or None,
            }
        )
    return out


def routing_header(enabled: bool, settings: RoutingSettings, base_model: str) -> str:
    """The first line of ``routing report``: on (strong model, provider, threshold) or off and why."""
    reason = routing_off_reason(enabled, settings)
    if reason is not None:
        return f"routing is off: {reason}; every cron turn uses its base model ({base_model})"
    return (
        f"routing is on: strong model {settings.strong_model} on provider {settings.strong_provider} "
        f"when the expected error rate is >= {settings.threshold_pct:.1f}%, else the base model "
        f"({base_model}); pinned models are never routed"
    )
