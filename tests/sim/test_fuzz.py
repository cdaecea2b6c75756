"""``sim/fuzz/`` (issue #13): every parser target holds on a few hundred examples, and each
target reports a failure (with its falsifying input and exception) when its parser is broken."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import pytest

import gateway.cli as gateway_cli
import gateway.config as gateway_config
import relay.cli as relay_cli
from relay.connector import ingress, telegram
from relay.protocol import frames as F
from relay.protocol import framing
from sim import fuzz
from sim.fuzz import TargetResult

EXAMPLES = 200
"""Per target in CI (``python -m sim --fuzz`` runs 10,000)."""
BROKEN_EXAMPLES = 100
"""Enough for each deliberately broken parser to be found (the seeds are fixed)."""


@pytest.mark.parametrize("target", fuzz.TARGETS, ids=lambda t: t.__name__)
def test_target_holds(target: Callable[[int], TargetResult]) -> None:
    """The parser meets its documented contract on every generated input."""
    result = target(EXAMPLES)
    assert result.ok, f"{result.name}: {result.falsifying} -> {result.error}"
    assert result.examples == EXAMPLES


def assert_caught(result: TargetResult, error: str) -> None:
    """The harness failed the target and names the input and the exception."""
    assert not result.ok
    assert result.falsifying not in (None, "(none recorded)")
    assert (result.error or "").startswith(error), result.error


def test_frame_decoder_target_catches_an_undocumented_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that raises KeyError on a frame with a ``type`` fails the target."""
    real = framing.decode_line

    def broken(line: str) -> dict[str, Any]:
        frame = real(line)
        if frame["type"] == "":
            raise KeyError("type")
        return frame

    monkeypatch.setattr(framing, "decode_line", broken)
    assert_caught(fuzz.fuzz_frame_decoder(BROKEN_EXAMPLES), "KeyError")


def test_frame_decoder_target_catches_a_bad_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A descriptor check that lets ``max_message_length`` 0 through fails the target."""
    real = F.parse_descriptor

    def broken(frame: dict[str, Any]) -> F.Descriptor:
        d = real(frame)
        return F.Descriptor(**{**d.__dict__, "max_message_length": 0})

    monkeypatch.setattr(F, "parse_descriptor", broken)
    assert_caught(fuzz.fuzz_frame_decoder(BROKEN_EXAMPLES), "PropertyFailed")


def test_ingress_target_catches_an_undocumented_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """``build_event`` raising KeyError for a body with a ``caption`` fails the target."""
    real = ingress.build_event

    def broken(platform: str, body: Any) -> dict[str, Any]:
        if isinstance(body, dict) and "caption" in body:
            raise KeyError("caption")
        return real(platform, body)

    monkeypatch.setattr(ingress, "build_event", broken)
    assert_caught(fuzz.fuzz_ingress_body(BROKEN_EXAMPLES), "KeyError")


def test_ingress_target_catches_a_5xx(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's mistake answered with a 500 fails the target (SPEC 8.3: always a 4xx)."""
    real = ingress.build_event

    def broken(platform: str, body: Any) -> dict[str, Any]:
        try:
            return real(platform, body)
        except ingress.IngressError as exc:
            raise ingress.IngressError(500, str(exc)) from None

    monkeypatch.setattr(ingress, "build_event", broken)
    assert_caught(fuzz.fuzz_ingress_body(BROKEN_EXAMPLES), "PropertyFailed: status 500")


def test_telegram_target_catches_an_undocumented_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ingress_body`` raising TypeError on a message update fails the target."""
    real = telegram.ingress_body

    def broken(update: Any) -> tuple[int, dict[str, Any] | None]:
        if isinstance(update, dict) and isinstance(update.get("message"), dict):
            raise TypeError("message")
        return real(update)

    monkeypatch.setattr(telegram, "ingress_body", broken)
    assert_caught(fuzz.fuzz_telegram_update(BROKEN_EXAMPLES), "TypeError")


def test_config_target_catches_an_undocumented_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """An env override that raises KeyError for a relay id fails the target."""
    real = gateway_config._apply_env

    def broken(c: gateway_config.Config, env: Any, r: Any) -> None:
        if env.get("GATEWAY_RELAY_ID"):
            raise KeyError("GATEWAY_RELAY_ID")
        real(c, env, r)

    monkeypatch.setattr(gateway_config, "_apply_env", broken)
    assert_caught(fuzz.fuzz_config(BROKEN_EXAMPLES), "KeyError")


def test_config_target_catches_a_bad_value_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that lets any integer through (``cron.max_concurrent: 0``) fails the target."""
    monkeypatch.setattr(gateway_config, "check_int", lambda *_: lambda v: v)
    assert_caught(fuzz.fuzz_config(BROKEN_EXAMPLES), "PropertyFailed")


def test_cli_target_catches_a_usage_error_that_is_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``hermes-sidecar`` parser whose usage error is a ValueError (not the one-line
    ``UsageError``) fails the target."""

    def error(self: argparse.ArgumentParser, message: str) -> None:
        raise ValueError(message)

    monkeypatch.setattr(gateway_cli._Parser, "error", error)
    assert_caught(fuzz.fuzz_cli(BROKEN_EXAMPLES), "ValueError")


def test_cli_target_catches_an_undocumented_exception_in_the_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--telegram``/``RELAY_TELEGRAM`` parsing that raises UnicodeError instead of
    ConfigError fails the target."""
    real = relay_cli.parse_telegram

    def broken(flags: Any, env_value: str | None) -> dict[str, str]:
        if flags or env_value:
            raise UnicodeError("telegram")
        return real(flags, env_value)

    monkeypatch.setattr(relay_cli, "parse_telegram", broken)
    assert_caught(fuzz.fuzz_cli(BROKEN_EXAMPLES), "UnicodeError")


def test_fuzz_all_prints_json_and_exits_1_on_a_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--json`` prints one document naming each target; any failed target makes the exit 1."""
    held = TargetResult("a", 3, 0.1, True)
    failed = TargetResult("b", 2, 0.2, False, "('x',)", "KeyError: 'x'")
    monkeypatch.setattr(fuzz, "TARGETS", (lambda n: held, lambda n: failed))
    assert fuzz.fuzz_all(3, as_json=True) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in doc["targets"]] == ["a", "b"]
    assert doc["failed"] == ["b"]
    assert doc["targets"][1]["falsifying"] == "('x',)"
    monkeypatch.setattr(fuzz, "TARGETS", (lambda n: held,))
    assert fuzz.fuzz_all(3, as_json=False) == 0
    out = capsys.readouterr().out
    assert "a: 3 examples in 0.1 s: held" in out


def test_show_names_a_huge_int_by_size() -> None:
    """A falsifying input holding an int past the 4300-digit limit is still printable."""
    assert fuzz.show({"a": [10**5000]}) == "{'a': [<int of 16610 bits>]}"
