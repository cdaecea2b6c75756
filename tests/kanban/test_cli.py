"""``hermes-sidecar kanban`` through the console program, with no sidecar running."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.fake_llm import FakeLLM, provider_config

DISPATCH_KEYS = {
    "spawned",
    "skipped_unassigned",
    "skipped_per_profile_capped",
    "skipped_global_cap",
    "auto_assigned_default",
}


def kanban(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "kanban", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HERMES_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )


def _create(home: Path, title: str, *extra: str) -> int:
    r = kanban(home, "create", "--title", title, *extra, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "ready"
    return int(doc["id"])


def test_dry_run_prints_the_decisions_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "profiles: {alpha: {}}\nkanban: {default_assignee: alpha, max_in_progress_per_profile: 1}\n"
    )
    first = _create(tmp_path, "first", "--assignee", "alpha", "--priority", "5")
    second = _create(tmp_path, "second")
    before = kanban(tmp_path, "list", "--json").stdout
    r = kanban(tmp_path, "dispatch", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"Auto-assigned to kanban.default_assignee=alpha: #{second} second",
        f"Spawned (alpha): #{first} first",
        f"Deferred (alpha at per-profile cap, 1 running): #{second} second",
    ]
    doc = json.loads(kanban(tmp_path, "dispatch", "--dry-run", "--json").stdout)
    assert set(doc) >= DISPATCH_KEYS
    assert doc["spawned"] == [[first, "alpha"]]
    assert doc["skipped_per_profile_capped"] == [[second, "alpha", 1]]
    assert kanban(tmp_path, "list", "--json").stdout == before


async def test_dispatch_without_a_sidecar_runs_the_task_here(tmp_path: Path, llm: FakeLLM) -> None:
    """A manual task is one agent turn on its profile: title and body are the prompt, the
    answer lands in the task's result."""
    (tmp_path / "config.yaml").write_text(provider_config(llm.base_url))
    task_id = _create(tmp_path, "summarise", "--body", "the news", "--assignee", "default")
    proc = await asyncio.create_subprocess_exec(  # async: the fake provider shares this loop
        sys.executable,
        "-m",
        "gateway",
        "kanban",
        "dispatch",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"HERMES_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert json.loads(out)["spawned"] == [[task_id, "default"]]
    [row] = json.loads(kanban(tmp_path, "list", "--json").stdout)
    assert (row["status"], row["result"]) == ("done", "echo: summarise\n\nthe news")
    assert llm.requests[-1]["messages"] == [{"role": "user", "content": "summarise\n\nthe news"}]


def test_unassigned_without_a_default_is_reported_and_left_ready(tmp_path: Path) -> None:
    task_id = _create(tmp_path, "orphan")
    r = kanban(tmp_path, "dispatch")
    assert r.stdout.splitlines() == [f"Unassigned (no kanban.default_assignee): #{task_id} orphan"]
    [row] = json.loads(kanban(tmp_path, "list", "--json").stdout)
    assert row["status"] == "ready"


def test_reading_an_empty_board_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert json.loads(kanban(home, "list", "--json").stdout) == []
    doc = json.loads(kanban(home, "dispatch", "--dry-run", "--json").stdout)
    assert doc["spawned"] == []
    assert set(doc) >= DISPATCH_KEYS
    assert not home.exists()


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "h"
    for args, needle in (
        (("create", "--title", "t", "--priority", "high"), "priority 'high' is not an integer"),
        (("create", "--title", "  "), "--title must be a non-empty string"),
        (("create", "--title", "t", "--assignee", " "), "--assignee ' ' is blank"),
        (("list", "--status", "doing"), "status 'doing' must be one of todo, ready, running"),
        (("create",), "--title"),
    ):
        r = kanban(home, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert not (home / "state.db").exists()
