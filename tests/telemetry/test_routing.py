"""Time-aware routing: prior table, thresholds, interactive turns, learned hours."""

from __future__ import annotations

import pytest

from gateway.telemetry.routing import (
    RoutingSettings,
    get_hour_error_rate,
    get_routing_report,
    is_off_hours,
    resolve_time_aware_model,
)

S = RoutingSettings(strong_model="strong", strong_provider="sp", threshold_pct=6.0)


def test_cron_at_18_upgrades_to_the_strong_model() -> None:
    """18:00 has a 9.4 % prior: a cron turn goes to the strong model and provider."""
    d = resolve_time_aware_model("base", "bp", True, 18, settings=S)
    assert (d.model, d.provider, d.error_rate, d.is_off_hours) == ("strong", "sp", 9.4, True)


def test_cron_at_10_keeps_the_base_model() -> None:
    """10:00 (4.0 %) keeps the base model."""
    d = resolve_time_aware_model("base", "bp", True, 10, settings=S)
    assert (d.model, d.provider, d.error_rate) == ("base", "bp", 4.0)


def test_interactive_at_18_keeps_the_base_model() -> None:
    """Interactive turns never route; the reason says so."""
    d = resolve_time_aware_model("base", "bp", False, 18, settings=S)
    assert d.model == "base"
    assert "Interactive" in d.reason


@pytest.mark.parametrize(
    ("hour", "pct"),
    [
        (18, 9.4),
        (19, 8.1),
        (20, 7.5),
        (21, 6.8),
        (22, 6.2),
        (23, 5.9),
        (0, 5.5),
        (1, 5.2),
        (2, 4.0),
        (9, 4.0),
        (17, 4.0),
    ],
    ids=[f"hour-{h:02d}" for h in (18, 19, 20, 21, 22, 23, 0, 1, 2, 9, 17)],
)
def test_prior_table(hour: int, pct: float) -> None:
    """The prior error-rate table of SPEC section 6; unlisted hours 4.0 %."""
    assert get_hour_error_rate(hour) == pct


def test_off_hours_are_18_to_0559() -> None:
    """18:00 to 05:59 is off-hours."""
    assert [h for h in range(24) if is_off_hours(h)] == [0, 1, 2, 3, 4, 5, 18, 19, 20, 21, 22, 23]


def test_off_hours_below_threshold_keep_the_base_model() -> None:
    """23:00 (5.9 %) is off-hours but below 6 %: base model."""
    assert resolve_time_aware_model("base", "bp", True, 23, settings=S).model == "base"


def test_report_lists_24_hours() -> None:
    """The forecast covers every hour, 18:00 included, marked prior until learned."""
    report = get_routing_report(S)
    assert len(report) == 24
    row = next(r for r in report if r["hour"] == "18:00")
    assert (row["model"], row["source"]) == ("strong", "prior")


def test_learned_hours_override_the_prior_only_with_enough_samples() -> None:
    """1,000 clean samples at 18:00 pull the rate far below 6 %; 10 samples change nothing."""
    big = {18: (0, 1000)}
    assert get_hour_error_rate(18, big) == pytest.approx(100 * (0.094 * 20) / 1020)
    assert resolve_time_aware_model("base", "bp", True, 18, settings=S, learned=big).model == "base"
    small = {18: (0, 10)}
    assert get_hour_error_rate(18, small) == 9.4
    report = get_routing_report(S, big)
    assert next(r for r in report if r["hour"] == "18:00")["source"] == "learned"
    bad = {10: (300, 1000)}  # a bad 10:00 learned from telemetry upgrades it
    assert resolve_time_aware_model("base", "bp", True, 10, settings=S, learned=bad).model == "strong"


def test_env_overrides_config() -> None:
    """CRON_* env wins over routing.* config."""
    s = RoutingSettings.from_env(
        {"CRON_STRONG_MODEL": "envm", "CRON_ERROR_THRESHOLD": "9.5"}, strong_model="cfgm", threshold_pct=6.0
    )
    assert (s.strong_model, s.threshold_pct, s.cheap_model) == ("envm", 9.5, "qwen2.5:7b")
