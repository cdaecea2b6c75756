"""Conversation config (SPEC 8.2): ``agent.*`` history, reset and retention keys, a profile's
``system_prompt`` and a provider's ``kind``; a bad value -> its default and one WARNING naming
the dotted key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.core.session_reset import ResetPolicy

FULL = """
model: {default: m1, provider: local}
providers:
  local: {base_url: 'http://llm/v1'}
  agent: {base_url: 'http://agent/v1', kind: hermes}
profiles:
  coach: {system_prompt: "  You are a coach.\\n"}
  plain: {model: m2}
cron: {timezone: Europe/Berlin}
agent:
  history_max_turns: 5
  context_max_tokens: 0
  session_reset: {mode: idle, idle_minutes: 90.5, at_hour: 23}
  history_retention_days: 7
"""


def test_config_agent_defaults(tmp_path: Path) -> None:
    """Without config: 20 turns, 16000 tokens, reset both/1440 min/04:00 UTC, 30 days, openai."""
    (tmp_path / "config.yaml").write_text("providers: {p: {base_url: 'http://x'}}\nprofiles: {a: {}}\n")
    c = load_config(tmp_path, {})
    assert (c.history_max_turns, c.context_max_tokens, c.history_retention_days) == (20, 16000, 30.0)
    assert (c.session_reset_mode, c.session_reset_idle_minutes, c.session_reset_at_hour) == (
        "both",
        1440.0,
        4,
    )
    assert c.session_reset == ResetPolicy("both", 1440.0, 4, "UTC")
    assert c.providers["p"].kind == "openai"
    assert c.profiles["a"].system_prompt is None
    assert c.profiles["default"].system_prompt is None
    assert c.warnings == []


def test_config_agent_reads_every_key(tmp_path: Path) -> None:
    """Valid values are taken; the reset policy's zone is cron.timezone."""
    (tmp_path / "config.yaml").write_text(FULL)
    c = load_config(tmp_path, {})
    assert c.warnings == []
    assert (c.history_max_turns, c.context_max_tokens, c.history_retention_days) == (5, 0, 7.0)
    assert c.session_reset == ResetPolicy("idle", 90.5, 23, "Europe/Berlin")
    assert (c.providers["local"].kind, c.providers["agent"].kind) == ("openai", "hermes")
    assert c.profiles["coach"].system_prompt == "You are a coach."
    assert (c.profiles["plain"].system_prompt, c.profiles["plain"].model) == (None, "m2")


@pytest.mark.parametrize(
    ("yaml_text", "key", "attr", "default"),
    [
        ("agent: {history_max_turns: -1}", "agent.history_max_turns", "history_max_turns", 20),
        ("agent: {history_max_turns: 2.5}", "agent.history_max_turns", "history_max_turns", 20),
        ("agent: {history_max_turns: true}", "agent.history_max_turns", "history_max_turns", 20),
        ("agent: {context_max_tokens: lots}", "agent.context_max_tokens", "context_max_tokens", 16000),
        ("agent: {context_max_tokens: -5}", "agent.context_max_tokens", "context_max_tokens", 16000),
        ("agent: {session_reset: {mode: weekly}}", "agent.session_reset.mode", "session_reset_mode", "both"),
        (
            "agent: {session_reset: {idle_minutes: 0}}",
            "agent.session_reset.idle_minutes",
            "session_reset_idle_minutes",
            1440.0,
        ),
        (
            "agent: {session_reset: {idle_minutes: soon}}",
            "agent.session_reset.idle_minutes",
            "session_reset_idle_minutes",
            1440.0,
        ),
        ("agent: {session_reset: {at_hour: 24}}", "agent.session_reset.at_hour", "session_reset_at_hour", 4),
        ("agent: {session_reset: {at_hour: -1}}", "agent.session_reset.at_hour", "session_reset_at_hour", 4),
        ("agent: {session_reset: {at_hour: '4'}}", "agent.session_reset.at_hour", "session_reset_at_hour", 4),
        (
            "agent: {history_retention_days: 0}",
            "agent.history_retention_days",
            "history_retention_days",
            30.0,
        ),
        (
            "agent: {history_retention_days: .nan}",
            "agent.history_retention_days",
            "history_retention_days",
            30.0,
        ),
    ],
    ids=[
        "turns-negative",
        "turns-float",
        "turns-bool",
        "tokens-text",
        "tokens-negative",
        "mode-unknown",
        "idle-zero",
        "idle-text",
        "hour-24",
        "hour-negative",
        "hour-string",
        "retention-zero",
        "retention-nan",
    ],
)
def test_config_agent_bad_value_falls_back_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, yaml_text: str, key: str, attr: str, default: Any
) -> None:
    """Each bad agent value is its default plus exactly one WARNING naming the dotted key."""
    (tmp_path / "config.yaml").write_text(yaml_text + "\n")
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        c = load_config(tmp_path, {})
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1
    assert f"config {key}=" in lines[0]
    assert getattr(c, attr) == default


@pytest.mark.parametrize(
    ("yaml_text", "key", "check"),
    [
        (
            "providers: {p: {base_url: 'http://x', kind: anthropic}}",
            "providers.p.kind",
            lambda c: c.providers["p"].kind == "openai",
        ),
        (
            "profiles: {a: {system_prompt: [one, two]}}",
            "profiles.a.system_prompt",
            lambda c: c.profiles["a"].system_prompt is None,
        ),
        (
            "profiles: {a: {system_prompt: 42}}",
            "profiles.a.system_prompt",
            lambda c: c.profiles["a"].system_prompt is None,
        ),
    ],
    ids=["provider-kind", "prompt-list", "prompt-number"],
)
def test_config_provider_kind_and_prompt_fall_back_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, yaml_text: str, key: str, check: Any
) -> None:
    """A bad provider kind is openai, a non-string system prompt is none, each with one WARNING."""
    (tmp_path / "config.yaml").write_text(yaml_text + "\n")
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        c = load_config(tmp_path, {})
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1
    assert f"config {key}=" in lines[0]
    assert check(c)


def test_config_blank_system_prompt_is_unset(tmp_path: Path) -> None:
    """A blank system prompt is no prompt (the SOUL.md files then apply), without a warning."""
    (tmp_path / "config.yaml").write_text("profiles: {a: {system_prompt: '  '}}\n")
    c = load_config(tmp_path, {})
    assert c.profiles["a"].system_prompt is None
    assert c.warnings == []
