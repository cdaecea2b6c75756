"""Config: YAML + env, a bad value -> its default and exactly one WARNING naming the dotted key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.core.policy import coerce_idle_timeout, env_flag

BAD = """
model: {default: m1, provider: p1}
providers: {p1: {base_url: 'not a url'}, p2: {base_url: 'http://x/v1/', api_key_env: K}}
gateway:
  relay_url: 'https://relay.example.com/?q=1'
  relay_max_frame_bytes: -5
  scale_to_zero:
    idle_timeout_minutes: -3
    cooldown_seconds: soon
    ack_timeout_seconds: -1
    suspend: hibernate
    external_waker: maybe
cron: {timezone: Mars/Olympus, drift_policy: yolo, max_concurrent: 0, max_daily_usd: -2}
kanban: {max_in_progress: abc}
routing: {enabled: 'yes', error_threshold_pct: -1}
"""

BAD_KEYS = [
    "providers.p1.base_url",
    "gateway.relay_url",
    "gateway.relay_max_frame_bytes",
    "gateway.scale_to_zero.idle_timeout_minutes",
    "gateway.scale_to_zero.cooldown_seconds",
    "gateway.scale_to_zero.ack_timeout_seconds",
    "gateway.scale_to_zero.suspend",
    "gateway.scale_to_zero.external_waker",
    "cron.timezone",
    "cron.drift_policy",
    "cron.max_concurrent",
    "cron.max_daily_usd",
    "kanban.max_in_progress",
    "routing.enabled",
    "routing.error_threshold_pct",
]


def test_config_bad_values_fall_back_with_one_warning_per_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every bad value is named once in a WARNING line and replaced by its default."""
    (tmp_path / "config.yaml").write_text(BAD)
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        c = load_config(tmp_path, {})
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for key in BAD_KEYS:
        assert sum(f"config {key}=" in line for line in lines) == 1, key
    assert len(lines) == len(BAD_KEYS)
    z = c.scale_to_zero
    assert (z.idle_timeout_s, z.cooldown_s, z.ack_timeout_s, z.suspend, z.external_waker) == (
        300.0,
        60.0,
        10.0,
        "autostop",
        False,
    )
    assert c.relay_url is None
    assert c.relay_max_frame_bytes == 1_048_576
    assert (c.cron_timezone, c.drift_policy, c.cron_max_concurrent) == ("UTC", "fail_closed", 4)
    assert c.cron_max_daily_usd is None
    assert c.kanban_max_in_progress == 8
    assert "p1" not in c.providers
    assert c.providers["p2"].base_url == "http://x/v1"
    assert "default" in c.profiles
    assert c.model_default == "m1"


def test_config_env_wins_over_yaml(tmp_path: Path) -> None:
    """GATEWAY_RELAY_URL overrides gateway.relay_url and is normalised."""
    (tmp_path / "config.yaml").write_text("gateway: {relay_url: 'http://a.example'}\n")
    c = load_config(tmp_path, {"GATEWAY_RELAY_URL": " https://b.example/ ", "HERMES_SCALE_TO_ZERO": " YES "})
    assert c.relay_url == "wss://b.example/relay"
    assert c.scale_to_zero.enabled is True


def test_config_env_relay_url_that_does_not_parse_warns_and_keeps_the_yaml_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``GATEWAY_RELAY_URL=http://[::1`` crashed ``load_config`` with urllib's ValueError; it is
    one WARNING and ``gateway.relay_url`` stays (found by ``python -m sim --fuzz``, issue #13)."""
    (tmp_path / "config.yaml").write_text("gateway: {relay_url: 'http://a.example'}\n")
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        c = load_config(tmp_path, {"GATEWAY_RELAY_URL": "http://[::1"})
    assert c.relay_url == "ws://a.example/relay"
    assert [r.getMessage() for r in caplog.records if "GATEWAY_RELAY_URL" in r.getMessage()] != []


@pytest.mark.parametrize(
    "url", ["http://", "https:///v1", "http://[::1"], ids=["no-host", "empty-host", "bad-ipv6"]
)
def test_config_provider_url_without_a_host_is_invalid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, url: str
) -> None:
    """A base URL with no host was taken (``http://`` even became ``http:``), so every turn
    failed later; it is one WARNING and no provider, in config.yaml and in
    ``OPENAI_BASE_URL`` alike (found by ``python -m sim --fuzz``, issue #13)."""
    (tmp_path / "config.yaml").write_text(f"providers: {{p1: {{base_url: '{url}'}}}}\n")
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        c = load_config(tmp_path, {})
        assert c.providers == {}
        (tmp_path / "config.yaml").unlink()
        c = load_config(tmp_path, {"OPENAI_BASE_URL": url})
        assert c.providers == {}
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("providers.p1.base_url" in line for line in lines) == 1
    assert sum("OPENAI_BASE_URL" in line for line in lines) == 1


def test_config_missing_file_is_all_defaults(tmp_path: Path) -> None:
    """Zero config works: the default profile exists, no relay (cron-only)."""
    c = load_config(tmp_path / "nowhere", {})
    assert c.relay_url is None
    assert "default" in c.profiles
    assert c.warnings == []


def test_config_unparseable_yaml_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broken YAML file is one warning and defaults, never a crash."""
    (tmp_path / "config.yaml").write_text("model: [unclosed\n")
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        c = load_config(tmp_path, {})
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert c.scale_to_zero.idle_timeout_s == 300.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        (" Yes ", True),
        ("ON", True),
        ("0", False),
        ("", False),
        (None, False),
        ("enabled", False),
    ],
    ids=["one", "true", "yes-padded", "on-upper", "zero", "empty", "none", "enabled-word"],
)
def test_scale_to_zero_env_flag(value: str | None, expected: bool) -> None:
    """Truthy is 1, true, yes, on (trimmed, case-insensitive)."""
    assert env_flag(value) is expected


@pytest.mark.parametrize(
    ("minutes", "seconds"),
    [
        (5, 300.0),
        (0.5, 30.0),
        (0, 300.0),
        (-1, 300.0),
        ("abc", 300.0),
        (None, 300.0),
        (True, 300.0),
        ("2", 120.0),
    ],
    ids=["int-5", "half-minute", "zero", "negative", "non-numeric", "none", "bool", "str-2"],
)
def test_idle_timeout_coercion(minutes: object, seconds: float) -> None:
    """<= 0 or non-numeric idle timeouts fall back to 5 minutes."""
    assert coerce_idle_timeout(minutes) == seconds
