"""Cron through the real console program: kill -9 during a run, CLI bad input and round trips."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_llm import FakeLLM, provider_config
from tests.procs import Proc, free_port

pytestmark = pytest.mark.timeout(90)


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env={"HERMES_HOME": str(home), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


async def test_kill9_during_cron_run_marks_it_interrupted_and_next_runs(tmp_path: Path, llm: FakeLLM) -> None:
    """kill -9 while a cron turn waits on the provider; the restart fails that occurrence
    ("interrupted", never retried) and the next occurrence runs."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(provider_config(llm.base_url))
    added = cli(home, "cron", "add", "--schedule", "every 2s", "--prompt", "tick", "--json")
    assert added.returncode == 0, added.stderr
    job_id = json.loads(added.stdout)["id"]
    llm.hold = hold = asyncio.Event()
    port = free_port()
    cmd = [sys.executable, "-m", "gateway", "run", "--port", str(port)]
    proc = await Proc(cmd, env={"HERMES_HOME": str(home)}).start()
    try:
        await llm.wait_requests(1)
        proc.kill9()
        await proc.wait()
    finally:
        await proc.stop()
    llm.hold = None
    hold.set()
    proc2 = await Proc(cmd, env={"HERMES_HOME": str(home)}).start()
    try:
        await proc2.wait_for_line("interrupted run(s) marked failed")
        await proc2.wait_for_line(f"cron job {job_id} succeeded")  # logged after the ledger write
        hist = json.loads(cli(home, "cron", "history", job_id, "--json").stdout)
    finally:
        await proc2.stop()
    statuses = [r["status"] for r in reversed(hist)]
    assert statuses[0] == "failed"
    assert hist[-1]["error"] == "interrupted"
    assert "succeeded" in statuses
    assert statuses.count("running") <= 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["cron", "add", "--schedule", "every banana", "--prompt", "p"], "invalid schedule"),
        (["cron", "add", "--schedule", "0 9 * * *", "--prompt", "p", "--tz", "Mars/Base"], "Mars/Base"),
        (["cron", "add", "--schedule", "@daily", "--prompt", "p", "--misfire-grace", "-5"], "-5"),
        (["cron", "add", "--schedule", "@daily", "--prompt", "p", "--catch-up", "some"], "some"),
        (["cron", "add", "--schedule", "2020-01-01T00:00:00Z", "--prompt", "p"], "in the past"),
        (["cron", "add", "--schedule", "@daily", "--prompt", "p", "--skill", "ghost"], "'ghost'"),
        (["cron", "add", "--schedule", "@daily", "--prompt", "p", "--profile", "ghost"], "'ghost'"),
        (["cron", "show", "nope"], "unknown job id 'nope'"),
        (["cron", "run", "nope"], "unknown job id 'nope'"),
        (["cron", "pause", "nope"], "unknown job id 'nope'"),
    ],
    ids=["schedule", "timezone", "grace", "catch-up", "past", "skill", "profile", "show", "run", "pause"],
)
def test_cron_cli_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    """Each bad value exits 2, says what is wrong in one line, and creates no state."""
    home = tmp_path / "h"
    r = cli(home, *args)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert not (home / "state.db").exists()


def test_cron_cli_round_trip(tmp_path: Path) -> None:
    """add -> list -> update (pin) -> pause -> resume -> remove, each with --json."""
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.yaml").write_text(
        "model: {default: m1, provider: a}\nproviders: {a: {base_url: 'http://127.0.0.1:9/v1'}}\n"
    )
    (home / "skills" / "s1").mkdir(parents=True)  # --skill must name an installed skill
    (home / "skills" / "s1" / "SKILL.md").write_text("be brief")
    job = json.loads(
        cli(
            home,
            "cron",
            "add",
            "--schedule",
            "every 1h",
            "--prompt",
            "p",
            "--name",
            "hourly",
            "--skill",
            "s1",
            "--deliver-to",
            "telegram:7",
            "--json",
        ).stdout
    )
    assert (job["provider_snapshot"], job["model_snapshot"]) == ("a", "m1")
    assert job["skills"] == ["s1"]
    assert job["deliver_to"] == "telegram:7"
    listed = json.loads(cli(home, "cron", "list", "--json").stdout)
    assert [j["id"] for j in listed] == [job["id"]]
    pinned = json.loads(
        cli(home, "cron", "update", job["id"], "--provider", "a", "--model", "m1", "--json").stdout
    )
    assert (pinned["provider"], pinned["model"]) == ("a", "m1")
    assert (pinned["provider_snapshot"], pinned["model_snapshot"]) == (None, None)
    assert json.loads(cli(home, "cron", "pause", job["id"], "--json").stdout)["enabled"] is False
    assert json.loads(cli(home, "cron", "resume", job["id"], "--json").stdout)["enabled"] is True
    text = cli(home, "cron", "list").stdout
    assert "hourly" in text
    assert job["id"] in text
    assert cli(home, "cron", "remove", job["id"]).returncode == 0
    assert json.loads(cli(home, "cron", "list", "--json").stdout) == []
    run = cli(home, "cron", "history", job["id"])
    assert run.returncode == 2
