"""Catch-up and misfire planning, pure (SPEC section 5).

Given the occurrences that came due since the last plan, decide which run and which are
``missed``. An occurrence more than ``ON_TIME_S`` late was missed (the sidecar was asleep,
suspended or down); ``misfire_grace_seconds`` (when set) turns anything later than it into
``missed`` first; then ``catch_up`` decides among the late ones:

- ``latest``: run the newest occurrence once, the rest are missed;
- ``all``: run each, in order;
- ``skip``: run none of the late ones (an on-time occurrence still runs).
"""

from __future__ import annotations

from dataclasses import dataclass

CATCH_UP = ("latest", "all", "skip")
ON_TIME_S = 2.0


@dataclass(frozen=True)
class Plan:
    run: list[float]
    missed: list[float]


def plan_due(due: list[float], now: float, catch_up: str, misfire_grace_s: float | None) -> Plan:
    """Split ``due`` (fire times <= ``now``, ascending) into runs and misses."""
    if catch_up not in CATCH_UP:
        raise ValueError(f"catch_up {catch_up!r}; allowed: {', '.join(CATCH_UP)}")
    missed: list[float] = []
    eligible: list[float] = []
    for t in due:
        if misfire_grace_s is not None and now - t > misfire_grace_s:
            missed.append(t)
        else:
            eligible.append(t)
    late = [t for t in eligible if now - t > ON_TIME_S]
    on_time = [t for t in eligible if now - t <= ON_TIME_S]
    if catch_up == "all":
        run = eligible
    elif catch_up == "skip":
        run = on_time
        missed += late
    else:  # latest
        run = eligible[-1:]
        missed += eligible[:-1]
    return Plan(run=run, missed=sorted(missed))
