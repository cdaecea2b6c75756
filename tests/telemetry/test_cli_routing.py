"""``routing report`` says whether routing is on, in-process through ``gateway.cli.main``
(SPEC 6: routing only with ``routing.enabled`` and a strong model and its provider; there is
no built-in strong model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import cli
from gateway.telemetry.routing import RoutingSettings, get_routing_report, resolve_time_aware_model

ROW_KEYS = {
    "hour",
    "error_rate",
    "off_hours",
    "source",
    "model",
    "enabled",
    "strong_model",
    "strong_provider",
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HERMES_HOME", str(h))
    for key in ("CRON_STRONG_MODEL", "CRON_STRONG_PROVIDER", "CRON_ERROR_THRESHOLD"):
        monkeypatch.delenv(key, raising=False)
    return h


def report(capsys: pytest.CaptureFixture[str], as_json: bool) -> tuple[int, str]:
    code = cli.main(["routing", "report", *(["--json"] if as_json else [])])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ("model: {default: base-m}\n", "routing.enabled is false"),
        (
            "model: {default: base-m}\nrouting: {strong_model: big, strong_provider: b}\n",
            "routing.enabled is false",
        ),
        ("model: {default: base-m}\nrouting: {enabled: true, strong_provider: b}\n", "no strong model"),
        ("model: {default: base-m}\nrouting: {enabled: true, strong_model: big}\n", "no strong provider"),
    ],
    ids=["no-routing", "routing-not-enabled", "no-strong-model", "no-strong-provider"],
)
def test_cli_routing_report_off_shows_the_base_model_everywhere(
    home: Path, capsys: pytest.CaptureFixture[str], config: str, why: str
) -> None:
    (home / "config.yaml").write_text(config)
    code, out = report(capsys, as_json=False)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.startswith("routing is off: ")
    assert why in header
    assert "base-m" in header
    assert len(rows) == 24
    assert all(r.endswith("  base-m") for r in rows)
    assert "mimo" not in out
    code, out = report(capsys, as_json=True)
    doc = json.loads(out)
    assert len(doc) == 24
    assert all(set(r) == ROW_KEYS for r in doc)
    assert {r["model"] for r in doc} == {"base-m"}
    assert {r["enabled"] for r in doc} == {False}


def test_cli_routing_report_on_names_the_strong_model_and_provider(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "config.yaml").write_text(
        "model: {default: base-m}\nrouting: {enabled: true, strong_model: big, strong_provider: b}\n"
    )
    code, out = report(capsys, as_json=False)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.startswith("routing is on: ")
    assert "big" in header
    assert "provider b" in header
    assert rows[18].startswith("18:00")
    assert rows[18].endswith("  big")
    assert rows[12].startswith("12:00")
    assert rows[12].endswith("  base-m")
    doc = json.loads(report(capsys, as_json=True)[1])
    assert (doc[18]["model"], doc[12]["model"]) == ("big", "base-m")
    assert {(r["enabled"], r["strong_model"], r["strong_provider"]) for r in doc} == {(True, "big", "b")}


def test_no_built_in_strong_model() -> None:
    """With no strong model configured none is used, even in the worst hour."""
    s = RoutingSettings.from_env({})
    assert s.strong_model == ""
    d = resolve_time_aware_model("base", "bp", True, 18, settings=s)
    assert (d.model, d.provider) == ("base", "bp")
    assert {r["model"] for r in get_routing_report(s)} == {"<base>"}
    assert {r["strong_model"] for r in get_routing_report(s)} == {None}
