"""Next-fire math for every schedule form, with DST (table tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from common.errors import ConfigError
from gateway.cron.plan import plan_due
from gateway.cron.schedule import fires_between, next_fire, parse_schedule, timezone

TOR = ZoneInfo("America/Toronto")


def ts(*args: int, tz: ZoneInfo = TOR, fold: int = 0) -> float:
    return datetime(*args, tzinfo=tz, fold=fold).timestamp()  # type: ignore[misc]


def local(t: float, tz: ZoneInfo = TOR) -> str:
    return datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M %z")


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("every 30m", "every"),
        ("every 2h", "every"),
        ("every 1d", "every"),
        ("0 9 * * *", "cron"),
        ("@hourly", "cron"),
        ("@daily", "cron"),
        ("@weekly", "cron"),
        ("@monthly", "cron"),
        ("@yearly", "cron"),
        ("2026-12-01T09:00:00Z", "once"),
        ("in 30m", "once"),
    ],
    ids=[
        "every-30m",
        "every-2h",
        "every-1d",
        "cron-expression",
        "hourly",
        "daily",
        "weekly",
        "monthly",
        "yearly",
        "rfc3339-time",
        "in-30m",
    ],
)
def test_parse_schedule_accepts_every_form(text: str, kind: str) -> None:
    """Each documented form parses to its kind."""
    assert parse_schedule(text, 1_800_000_000.0).kind == kind


@pytest.mark.parametrize(
    "text",
    [
        "every banana",
        "61 * * * *",
        "",
        "tomorrow",
        "every 0m",
        "2026-12-01T09:00:00",
        "@sometimes",
        "* * * *",
    ],
    ids=[
        "every-banana",
        "minute-61",
        "empty",
        "tomorrow",
        "every-0m",
        "time-without-offset",
        "unknown-macro",
        "four-fields",
    ],
)
def test_parse_schedule_error_lists_accepted_forms(text: str) -> None:
    """An invalid schedule names itself and lists the accepted forms."""
    with pytest.raises(ConfigError, match="accepted: every 30m"):
        parse_schedule(text, 0.0)


def test_unknown_timezone_is_config_error() -> None:
    """An unknown IANA name is a clear error."""
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        timezone("Mars/Olympus")


def test_toronto_9am_stays_9am_across_both_dst_days_and_a_year() -> None:
    """0 9 * * * in Toronto fires at 09:00 local every day for 365 days, DST days included."""
    sched = parse_schedule("0 9 * * *", 0)
    t = ts(2026, 1, 1, 0, 0)
    seen = []
    for _ in range(365):
        t = next_fire(sched, anchor=0, after=t, tz=TOR)  # type: ignore[assignment]
        seen.append(datetime.fromtimestamp(t, TOR))
    assert all((d.hour, d.minute) == (9, 0) for d in seen)
    days = {d.date() for d in seen}
    assert len(days) == 365
    assert datetime(2026, 3, 8).date() in days
    assert datetime(2026, 11, 1).date() in days
    spring = [d for d in seen if d.date() == datetime(2026, 3, 8).date()][0]
    fall = [d for d in seen if d.date() == datetime(2026, 11, 1).date()][0]
    assert spring.utcoffset() == timedelta(hours=-4)
    assert fall.utcoffset() == timedelta(hours=-5)


@pytest.mark.parametrize(
    ("expr", "count"),
    [("*/30 * * * *", 4), ("0 * * * *", 2), ("30 1 * * *", 1)],
    ids=["every-30-min", "top-of-hour", "once-a-day-at-1-30"],
)
def test_repeated_1am_hour_on_fall_back(expr: str, count: int) -> None:
    """In Toronto's repeated 01:00 hour (2026-11-01) each expression fires as often as wall time passes."""
    sched = parse_schedule(expr, 0)
    start = ts(2026, 11, 1, 1, 0)  # first 01:00 (EDT)
    end = ts(2026, 11, 1, 1, 59, fold=1)  # second 01:59 (EST)
    fires = fires_between(sched, anchor=0, start=start, end=end, tz=TOR)
    assert len(fires) == count
    assert all(datetime.fromtimestamp(t, TOR).hour == 1 for t in fires)


@pytest.mark.parametrize(
    ("start", "label"),
    [((2026, 3, 7, 22, 0), "spring-forward"), ((2026, 10, 31, 22, 0), "fall-back")],
    ids=["spring-forward", "fall-back"],
)
def test_every_2h_is_exactly_7200s_apart_across_dst(start: tuple[int, ...], label: str) -> None:
    """Interval schedules count elapsed seconds: DST never stretches or shrinks them."""
    sched = parse_schedule("every 2h", 0)
    anchor = ts(*start)
    fires = fires_between(sched, anchor=anchor, start=anchor, end=anchor + 24 * 3600, tz=TOR)
    gaps = {b - a for a, b in zip(fires, fires[1:], strict=False)}
    assert gaps == {7200.0}
    assert len(fires) == 12


def test_every_is_anchored_at_creation_not_run_time() -> None:
    """A late run does not shift the next interval fire."""
    sched = parse_schedule("every 30m", 0)
    anchor = 1000.0
    assert next_fire(sched, anchor=anchor, after=anchor, tz=TOR) == anchor + 1800
    assert next_fire(sched, anchor=anchor, after=anchor + 1800 + 700, tz=TOR) == anchor + 3600


def test_one_shots_fire_once_and_in_resolves_from_now() -> None:
    """A one-shot has one fire; after it, none."""
    at = parse_schedule("2026-12-01T09:00:00Z", 0)
    t = datetime(2026, 12, 1, 9, tzinfo=UTC).timestamp()
    assert next_fire(at, anchor=0, after=t - 1, tz=TOR) == t
    assert next_fire(at, anchor=0, after=t, tz=TOR) is None
    rel = parse_schedule("in 30m", 5000.0)
    assert rel.at == 5000.0 + 1800


def test_spring_forward_gap_time_fires_after_the_gap() -> None:
    """30 2 * * * on the day 02:30 does not exist fires at 03:00 (cronsim's rule)."""
    sched = parse_schedule("30 2 * * *", 0)
    t = next_fire(sched, anchor=0, after=ts(2026, 3, 8, 0, 0), tz=TOR)
    assert t is not None
    assert local(t).startswith("2026-03-08 03:00")


@pytest.mark.parametrize(
    ("catch_up", "grace", "run", "missed"),
    [
        ("latest", None, [500.0], [100.0, 200.0, 300.0, 400.0]),
        ("all", None, [100.0, 200.0, 300.0, 400.0, 500.0], []),
        ("skip", None, [], [100.0, 200.0, 300.0, 400.0, 500.0]),
        ("all", 350.0, [300.0, 400.0, 500.0], [100.0, 200.0]),
        ("latest", 50.0, [], [100.0, 200.0, 300.0, 400.0, 500.0]),
    ],
    ids=["latest", "all", "skip", "all-with-grace", "latest-all-too-late"],
)
def test_plan_due_applies_catch_up_and_grace(
    catch_up: str, grace: float | None, run: list[float], missed: list[float]
) -> None:
    """Five late occurrences at now=600 s split per policy; grace turns older ones into misses."""
    p = plan_due([100.0, 200.0, 300.0, 400.0, 500.0], 600.0, catch_up, grace)
    assert (p.run, p.missed) == (run, missed)


def test_plan_due_on_time_occurrence_runs_even_under_skip() -> None:
    """skip only skips late occurrences: one due now still runs."""
    assert plan_due([600.0], 600.0, "skip", None).run == [600.0]
