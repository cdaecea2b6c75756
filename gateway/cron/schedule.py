"""Schedule parsing and next-fire math, pure (SPEC section 5).

Forms: ``every 30m|2h|1d`` (also ``s``; fixed elapsed seconds anchored at the job's creation, the
same in every timezone and across DST); 5-field cron and ``@hourly|@daily|@weekly|@monthly|
@yearly`` (cronsim, wall clock in the job's IANA timezone, DST-correct); one-shot RFC 3339 time
or ``in 30m``. Times are Unix seconds (UTC).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from common.errors import ConfigError
from common.timefmt import parse_rfc3339

ACCEPTED_FORMS = (
    "every 30m|2h|1d, a 5-field cron expression, @hourly|@daily|@weekly|@monthly|"
    "@yearly, an RFC 3339 time (2026-01-31T09:00:00Z) or in 30m"
)
ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule. ``kind`` is ``every``, ``cron`` or ``once``."""

    text: str
    kind: str
    interval_s: float | None = None  # every
    cron: str | None = None  # cron (aliases expanded)
    at: float | None = None  # once (Unix seconds)


def timezone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; raises ``ConfigError`` naming it when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown timezone {name!r}; expected an IANA name like Europe/Paris or UTC"
        ) from None


def parse_duration(text: str) -> float:
    """``30m`` -> 1800.0; raises ``ValueError`` for anything else."""
    m = _DURATION.match(text.strip().lower())
    if not m or int(m.group(1)) <= 0:
        raise ValueError(text)
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_schedule(text: str, now: float) -> Schedule:
    """Parse a schedule string; ``now`` (Unix seconds) resolves ``in 30m``.

    Raises ``ConfigError`` quoting the text and listing the accepted forms.
    """
    raw = (text or "").strip()
    low = raw.lower()
    try:
        if low.startswith("every "):
            return Schedule(raw, "every", interval_s=parse_duration(low[6:]))
        if low.startswith("in "):
            return Schedule(raw, "once", at=now + parse_duration(low[3:]))
        if low in ALIASES:
            return Schedule(raw, "cron", cron=ALIASES[low])
        if len(raw.split()) == 5:
            CronSim(raw, datetime.fromtimestamp(now, ZoneInfo("UTC")))
            return Schedule(raw, "cron", cron=raw)
        if raw and raw[0].isdigit():
            return Schedule(raw, "once", at=parse_rfc3339(raw))
    except (ValueError, CronSimError):
        pass
    raise ConfigError(f"invalid schedule {raw!r}; accepted: {ACCEPTED_FORMS}")


def next_fire(schedule: Schedule, *, anchor: float, after: float, tz: ZoneInfo) -> float | None:
    """The first fire time strictly after ``after``, or None when there is none (a spent one-shot).

    ``anchor`` is the job's creation time (interval schedules count from it, so run time never
    shifts them).
    """
    if schedule.kind == "every":
        assert schedule.interval_s is not None
        k = math.floor((after - anchor) / schedule.interval_s) + 1
        t = anchor + max(k, 1) * schedule.interval_s
        while t <= after:  # float safety
            t += schedule.interval_s
        return t
    if schedule.kind == "once":
        assert schedule.at is not None
        return schedule.at if schedule.at > after else None
    assert schedule.cron is not None
    start = datetime.fromtimestamp(after, tz)
    for dt in CronSim(schedule.cron, start):
        t = dt.timestamp()
        if t > after:
            return t
    return None  # pragma: no cover - cronsim iterates forever


def fires_between(
    schedule: Schedule, *, anchor: float, start: float, end: float, tz: ZoneInfo, limit: int = 10_000
) -> list[float]:
    """Fire times ``t`` with ``start <= t <= end``, in order, at most ``limit`` of them."""
    out: list[float] = []
    t = next_fire(schedule, anchor=anchor, after=start - 1e-6, tz=tz)
    while t is not None and t <= end and len(out) < limit:
        out.append(t)
        t = next_fire(schedule, anchor=anchor, after=t, tz=tz)
    return out
