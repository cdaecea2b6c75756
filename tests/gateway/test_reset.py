"""When a session ends before the next message (SPEC 8.2 ``agent.session_reset``): idle, daily
at ``at_hour`` local to the zone (DST-correct), both, or never."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.core.session_reset import ResetPolicy, needs_reset

MIN = 60.0
HOUR = 3600.0


def ts(text: str, tz: str = "UTC") -> float:
    """Unix seconds of a local wall time ``YYYY-MM-DD HH:MM`` in ``tz`` (fold 0)."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def check(
    last_at: float | None, now: float, mode: str, *, idle: float = 1440, hour: int = 4, tz: str = "UTC"
) -> bool:
    return needs_reset(last_at, now, mode=mode, idle_minutes=idle, at_hour=hour, tz=tz)


@pytest.mark.parametrize(
    ("mode", "last", "now", "expected"),
    [
        ("idle", "2024-05-01 10:00", "2024-05-01 10:29", False),
        ("idle", "2024-05-01 10:00", "2024-05-01 10:30", True),  # exactly idle_minutes: over
        ("idle", "2024-05-01 03:50", "2024-05-01 04:10", False),  # passing 04:00 is not idleness
        ("daily", "2024-05-01 03:59", "2024-05-01 04:00", True),  # 04:00 itself is in (last, now]
        ("daily", "2024-05-01 04:00", "2024-05-01 04:01", False),  # last exactly at 04:00: passed
        ("daily", "2024-05-01 04:01", "2024-05-02 03:59", False),
        ("daily", "2024-05-01 10:00", "2024-05-02 04:00", True),
        ("daily", "2024-05-01 10:00", "2024-06-01 10:00", True),  # many days later
        ("daily", "2024-05-01 10:00", "2024-05-01 10:10", False),
        ("both", "2024-05-01 10:00", "2024-05-01 10:30", True),  # idle
        ("both", "2024-05-01 03:50", "2024-05-01 04:05", True),  # daily
        ("both", "2024-05-01 04:10", "2024-05-01 04:20", False),
        ("none", "2024-05-01 10:00", "2025-05-01 10:00", False),
    ],
    ids=[
        "idle-under",
        "idle-exactly",
        "idle-ignores-hour",
        "daily-at-hour",
        "daily-last-at-hour",
        "daily-just-under-a-day",
        "daily-next-morning",
        "daily-weeks",
        "daily-same-morning",
        "both-idle",
        "both-daily",
        "both-neither",
        "none-never",
    ],
)
def test_needs_reset_modes(mode: str, last: str, now: str, expected: bool) -> None:
    """Idle after idle_minutes (30 here), daily when 04:00 lies in (last, now], both, none."""
    assert check(ts(last), ts(now), mode, idle=30) is expected


@pytest.mark.parametrize("mode", ["idle", "daily", "both", "none"], ids=["idle", "daily", "both", "none"])
def test_needs_reset_without_session_is_false(mode: str) -> None:
    """No previous message: nothing to reset."""
    assert check(None, ts("2024-05-01 10:00"), mode) is False


@pytest.mark.parametrize("mode", ["idle", "daily", "both"], ids=["idle", "daily", "both"])
def test_needs_reset_clock_step_back_is_false(mode: str) -> None:
    """``now`` before ``last_at`` (a wall clock stepped back) never resets."""
    assert check(ts("2024-05-02 10:00"), ts("2024-05-01 10:00"), mode) is False


@pytest.mark.parametrize(
    ("last", "now", "hour", "expected"),
    [
        # 2024-03-10, New York springs forward at 02:00 EST (07:00 UTC) to 03:00 EDT: 02:00 is
        # skipped and that day's reset point is the jump itself.
        ("2024-03-10 01:59", "2024-03-10 03:00", 2, True),
        ("2024-03-10 01:30", "2024-03-10 01:59", 2, False),
        ("2024-03-10 03:00", "2024-03-10 03:30", 2, False),
        # 4 a.m. on the spring-forward day is 08:00 UTC (EDT), not 09:00.
        ("2024-03-10 03:59", "2024-03-10 04:00", 4, True),
        # 2024-11-03, New York falls back: 01:00-01:59 happens twice; only the first 01:00
        # (EDT, 05:00 UTC) is a reset point.
        ("2024-11-03 00:59", "2024-11-03 01:00", 1, True),
        ("2024-11-03 03:59", "2024-11-03 04:00", 4, True),  # 4 a.m. EST = 09:00 UTC
    ],
    ids=["gap-hour-jump", "gap-before", "gap-after", "spring-day-4am", "fold-first", "fall-day-4am"],
)
def test_needs_reset_daily_follows_dst(last: str, now: str, hour: int, expected: bool) -> None:
    """The daily point is the local wall clock's at_hour:00 in the zone, across DST changes."""
    tz = "America/New_York"
    assert check(ts(last, tz), ts(now, tz), "daily", hour=hour, tz=tz) is expected


def test_needs_reset_daily_repeated_hour_resets_once() -> None:
    """After the first 01:00 of a fall-back night, the repeated 01:00 (EST) is no new point."""
    tz = "America/New_York"
    first_one_am = ts("2024-11-03 01:00", tz)  # fold 0: EDT, 05:00 UTC
    second_one_am = first_one_am + HOUR  # 01:00 EST, 06:00 UTC
    assert check(first_one_am + 30 * MIN, second_one_am + 5 * MIN, "daily", hour=1, tz=tz) is False


def test_needs_reset_daily_hour_is_local_to_zone() -> None:
    """04:00 in Asia/Tokyo is 19:00 UTC the day before."""
    tz = "Asia/Tokyo"
    assert check(ts("2024-05-01 18:59"), ts("2024-05-01 19:00"), "daily", tz=tz) is True
    assert check(ts("2024-05-01 03:59"), ts("2024-05-01 04:00"), "daily", tz=tz) is False


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"mode": "weekly"}, "mode 'weekly'"),
        ({"idle_minutes": 0}, "idle_minutes 0"),
        ({"at_hour": 24}, "at_hour 24"),
        ({"at_hour": True}, "at_hour True"),
    ],
    ids=["mode", "idle", "hour-range", "hour-bool"],
)
def test_reset_policy_rejects_bad_values(kwargs: dict[str, object], needle: str) -> None:
    """A bad mode, idle_minutes or at_hour is a ValueError naming it (policy and function)."""
    with pytest.raises(ValueError, match=needle):
        ResetPolicy(**kwargs)  # type: ignore[arg-type]
    args: dict[str, object] = {"mode": "both", "idle_minutes": 1440, "at_hour": 4, "tz": "UTC", **kwargs}
    with pytest.raises(ValueError, match=needle):
        needs_reset(0.0, 1.0, **args)  # type: ignore[arg-type]


def test_reset_policy_defaults() -> None:
    """Defaults: both, 1440 idle minutes, 04:00, UTC."""
    assert ResetPolicy() == ResetPolicy("both", 1440.0, 4, "UTC")
