"""``telemetry ema`` and ``routing report`` through the console program."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env={"HERMES_HOME": str(home), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def test_routing_report_json_lists_24_hours(tmp_path: Path) -> None:
    """The report has 24 rows, 18:00 included, each with its error rate and model."""
    (tmp_path / "config.yaml").write_text("routing: {enabled: true, strong_model: big, strong_provider: b}\n")
    r = cli(tmp_path, "routing", "report", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 24
    assert next(x for x in rows if x["hour"] == "18:00")["model"] == "big"


def test_telemetry_ema_bad_alpha_exits_2(tmp_path: Path) -> None:
    """alpha outside (0, 1) exits 2 with one line and creates nothing."""
    r = cli(tmp_path / "h", "telemetry", "ema", "--alpha", "1.5")
    assert r.returncode == 2
    assert "(0, 1)" in r.stderr
    assert not (tmp_path / "h").exists()


def test_telemetry_ema_json_empty_without_data(tmp_path: Path) -> None:
    """No invocations yet: an empty JSON list."""
    r = cli(tmp_path, "telemetry", "ema", "--window-days", "7", "--json")
    assert (r.returncode, json.loads(r.stdout)) == (0, [])
