"""When a chat's session ends before the next message (SPEC 8.2 ``agent.session_reset``; pure).

``idle``: the session's last message is ``idle_minutes`` or more old. ``daily``: the local wall
clock of ``tz`` (``cron.timezone``) passed ``at_hour:00`` since the last message. ``both``:
either one. ``none``: never (only ``/new``, ``/reset`` and ``sessions reset`` start a session).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

MODES = ("idle", "daily", "both", "none")


@dataclass(frozen=True)
class ResetPolicy:
    """``agent.session_reset`` with ``tz`` = ``cron.timezone``.

    ``mode``: one of ``MODES``; ``idle_minutes``: minutes (> 0); ``at_hour``: 0-23 local to
    ``tz`` (an IANA zone name). A bad value raises ``ValueError`` (an unknown zone:
    ``zoneinfo.ZoneInfoNotFoundError``, a ``KeyError``, when it is used).
    """

    mode: str = "both"
    idle_minutes: float = 1440.0
    at_hour: int = 4
    tz: str = "UTC"

    def __post_init__(self) -> None:
        _check(self.mode, self.idle_minutes, self.at_hour)


def _check(mode: str, idle_minutes: float, at_hour: int) -> None:
    if mode not in MODES:
        raise ValueError(f"session reset mode {mode!r} must be one of {', '.join(MODES)}")
    if not idle_minutes > 0:
        raise ValueError(f"session reset idle_minutes {idle_minutes!r} must be a number > 0")
    if isinstance(at_hour, bool) or not isinstance(at_hour, int) or not 0 <= at_hour <= 23:
        raise ValueError(f"session reset at_hour {at_hour!r} must be an integer 0-23")


def needs_reset(
    last_at: float | None, now: float, *, mode: str, idle_minutes: float, at_hour: int, tz: str
) -> bool:
    """Whether a message at ``now`` starts a new session after one last active at ``last_at``.

    Times are Unix seconds. ``last_at`` None (no session yet) is False: there is nothing to
    reset. ``idle``: ``now - last_at >= idle_minutes * 60``. ``daily``: a daily reset point lies
    in ``(last_at, now]``; each local calendar day of ``tz`` has exactly one, the first instant
    its wall clock reads ``at_hour:00`` (on a DST fall-back day the first of the two, on a
    spring-forward day whose ``at_hour:00`` is skipped the instant the clock jumps past it).
    ``both``: either; ``none``: never. ``now`` before ``last_at`` (a clock step back) is False.
    Raises ``ValueError`` for a bad mode, ``idle_minutes`` or ``at_hour`` and
    ``zoneinfo.ZoneInfoNotFoundError`` for an unknown ``tz``.
    """
    _check(mode, idle_minutes, at_hour)
    if last_at is None or mode == "none":
        return False
    if mode in ("idle", "both") and now - last_at >= idle_minutes * 60:
        return True
    return mode in ("daily", "both") and _daily_point_between(last_at, now, at_hour, ZoneInfo(tz))


def _daily_point_between(last_at: float, now: float, at_hour: int, zone: ZoneInfo) -> bool:
    if now <= last_at:
        return False
    first = _local_date(last_at, zone)
    last = _local_date(now, zone)
    days = (last - first).days
    if days >= 2:
        return True  # the whole local day after last_at's lies inside, reset point included
    return any(
        last_at < _reset_point(first + timedelta(days=i), at_hour, zone) <= now for i in range(days + 1)
    )


def _local_date(ts: float, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(ts, zone).date()


def _reset_point(day: date, at_hour: int, zone: ZoneInfo) -> float:
    """Unix time of ``day``'s reset point. ``fold=0`` picks the earlier of a repeated wall time
    and, for a skipped one, applies the offset before the jump, which lands on the jump itself
    (PEP 495)."""
    return datetime.combine(day, time(at_hour), zone).timestamp()
