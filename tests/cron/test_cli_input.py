"""``hermes-sidecar cron ...`` input checks and readable output, in-process through
``gateway.cli.main`` (SPEC 2 and 5): bad input exits 2 with one line naming the value and what
is allowed, and writes nothing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from gateway import cli
from gateway.cron.store import CronStore
from gateway.statedb import open_state_db


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("HERMES_HOME", str(h))
    return h


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["cron", *args])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(home: Path) -> tuple[list[str], list[str]]:
    """Every file under ``home`` and the logical content of state.db (WAL-independent)."""
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()) if home.exists() else []
    dump: list[str] = []
    if (home / "state.db").exists():
        con = sqlite3.connect(home / "state.db")
        try:
            dump = list(con.iterdump())
        finally:
            con.close()
    return [f for f in files if not f.startswith("state.db-")], dump


def one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def add(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code, out, err = run(capsys, "add", "--prompt", "p", *args, "--json")
    assert code == 0, err
    doc: dict[str, object] = json.loads(out)
    return doc


# --- 1. a one-shot in the past ------------------------------------------------------------


def test_cli_cron_add_one_shot_in_the_past_exits_2_and_writes_nothing(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "add", "--schedule", "2020-01-01T00:00:00Z", "--prompt", "p")
    assert (code, out) == (2, "")
    one_error_line(err, "2020-01-01T00:00:00Z", "in the past", "in 30m")
    assert not home.exists()  # nothing created, not even $HERMES_HOME
    add(capsys, "--schedule", "@daily")  # now state.db exists: still nothing written
    before = snapshot(home)
    code, _, err = run(capsys, "add", "--schedule", "2020-01-01T00:00:00Z", "--prompt", "p", "--json")
    assert code == 2
    one_error_line(err, "in the past")
    assert snapshot(home) == before


def test_cli_cron_add_in_30m_is_a_future_one_shot(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = add(capsys, "--schedule", "in 30m")
    # Stored as the absolute time, so later re-plans never measure it from another instant.
    assert str(doc["schedule"]).endswith("Z")
    assert doc["next_run_at"] is not None
    assert doc["state"] == "enabled"


def test_cli_cron_update_to_a_past_one_shot_exits_2_and_writes_nothing(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = str(add(capsys, "--schedule", "@daily")["id"])
    before = snapshot(home)
    code, _, err = run(capsys, "update", job_id, "--schedule", "2020-01-01T00:00:00Z")
    assert code == 2
    one_error_line(err, "2020-01-01T00:00:00Z", "in the past")
    assert snapshot(home) == before


# --- 2. resume of a finished one-shot -----------------------------------------------------


async def _finish_one_shot(home: Path, job_id: str) -> None:
    """What the scheduler does when a one-shot fires: a ledger row, then the job is retired."""
    db = await open_state_db(home / "state.db")
    try:
        store = CronStore(db)
        job = await store.get(job_id)
        assert job is not None
        assert job.next_run_at is not None
        run_id = await store.claim(job_id, job.next_run_at, job.next_run_at, 60)
        assert run_id is not None
        await store.finish(run_id, "succeeded", job.next_run_at + 1, model="m", cost_usd=0.01)
        assert await store.advance(
            job_id, expected=job.next_run_at, next_run_at=None, missed=[], now=job.next_run_at + 1
        )
    finally:
        await db.close()


def test_cli_cron_resume_of_a_finished_one_shot_exits_2_and_writes_nothing(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = str(add(capsys, "--schedule", "in 30m")["id"])
    asyncio.run(_finish_one_shot(home, job_id))
    code, out, _ = run(capsys, "show", job_id, "--json")
    doc = json.loads(out)
    assert (doc["state"], doc["paused"], doc["next_run_at"], doc["enabled"]) == (
        "finished",
        False,
        None,
        False,
    )
    before = snapshot(home)
    code, out, err = run(capsys, "resume", job_id)
    assert (code, out) == (2, "")
    one_error_line(err, job_id, "already ran", "cannot be resumed")
    assert snapshot(home) == before


def test_cli_cron_resume_of_a_one_shot_due_while_paused_exits_2(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Paused past its time without a run: no next run either, said so."""
    job_id = str(add(capsys, "--schedule", "in 30m")["id"])
    assert run(capsys, "pause", job_id)[0] == 0
    con = sqlite3.connect(home / "state.db")
    with con:
        con.execute("UPDATE jobs SET schedule = '2020-01-01T00:00:00Z', next_run_at = 1577836800.0")
    con.close()
    before = snapshot(home)
    code, _, err = run(capsys, "resume", job_id)
    assert code == 2
    one_error_line(err, "2020-01-01T00:00:00Z", "cannot be resumed")
    assert snapshot(home) == before


# --- 3. a paused job shows no next time ---------------------------------------------------


def test_cli_cron_paused_job_shows_no_next_time(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = str(add(capsys, "--schedule", "@daily", "--name", "digest")["id"])
    code, out, _ = run(capsys, "pause", job_id, "--json")
    assert code == 0
    paused = json.loads(out)
    assert (paused["state"], paused["paused"], paused["next_run_at"]) == ("paused", True, None)
    for args in (("list",), ("show", job_id)):
        code, out, _ = run(capsys, *args)
        assert code == 0
        assert "[paused]" in out, out
        assert "next paused" in out, out
        code, out, _ = run(capsys, *args, "--json")
        doc = json.loads(out)
        doc = doc[0] if isinstance(doc, list) else doc
        assert (doc["paused"], doc["next_run_at"], doc["enabled"]) == (True, None, False)
    code, out, _ = run(capsys, "resume", job_id, "--json")
    resumed = json.loads(out)
    assert (resumed["state"], resumed["paused"]) == ("enabled", False)
    assert resumed["next_run_at"] is not None
    _, text, _ = run(capsys, "show", job_id)
    assert "[enabled]" in text
    assert f"next {resumed['next_run_at']}" in text


# --- 4. unknown skills and profiles -------------------------------------------------------


@pytest.mark.parametrize("command", ["add", "update"], ids=["add", "update"])
def test_cli_cron_unknown_skill_exits_2_naming_the_known_ones(
    home: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    job_id = str(add(capsys, "--schedule", "@daily")["id"])
    target = ["add", "--schedule", "@daily", "--prompt", "p"] if command == "add" else ["update", job_id]
    before = snapshot(home)
    code, _, err = run(capsys, *target, "--skill", "digest")
    assert code == 2
    one_error_line(err, "'digest'", "no skills are installed", str(home / "skills"))
    for name in ("news", "weather"):
        (home / "skills" / name).mkdir(parents=True)
        (home / "skills" / name / "SKILL.md").write_text("be brief")
    (home / "skills" / "empty").mkdir()  # no SKILL.md: not a skill
    before = snapshot(home)
    code, _, err = run(capsys, *target, "--skill", "news", "--skill", "digest")
    assert code == 2
    one_error_line(err, "'digest'", "known skills: news, weather")
    assert snapshot(home) == before
    code, out, err = run(capsys, *target, "--skill", "news", "--json")
    assert code == 0, err
    assert json.loads(out)["skills"] == ["news"]


@pytest.mark.parametrize("command", ["add", "update"], ids=["add", "update"])
def test_cli_cron_unknown_profile_exits_2_naming_the_known_ones(
    home: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    home.mkdir()
    (home / "config.yaml").write_text("profiles: {research: {}}\n")
    job_id = str(add(capsys, "--schedule", "@daily")["id"])
    target = ["add", "--schedule", "@daily", "--prompt", "p"] if command == "add" else ["update", job_id]
    before = snapshot(home)
    code, _, err = run(capsys, *target, "--profile", "ghost")
    assert code == 2
    one_error_line(err, "'ghost'", "known profiles: default, research", "profiles:")
    assert snapshot(home) == before
    code, _, err = run(capsys, *target, "--profile", "research")
    assert code == 0, err


# --- 6. history: an unknown cost is "-" ---------------------------------------------------


def test_cli_cron_history_prints_unknown_cost_as_dash(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = str(add(capsys, "--schedule", "@hourly")["id"])
    con = sqlite3.connect(home / "state.db")
    with con:
        con.execute(
            "INSERT INTO job_runs (job_id, scheduled_for, finished_at, status, model, cost_usd)"
            " VALUES (?, 1000, 1001, 'succeeded', 'm', 0.0123), (?, 2000, 2001, 'succeeded', 'm', NULL),"
            " (?, 3000, 3001, 'succeeded', 'm', 0)",
            (job_id, job_id, job_id),
        )
    con.close()
    code, out, _ = run(capsys, "history", job_id)
    assert code == 0
    newest_zero, unknown, known = out.splitlines()
    assert "$0.0000" in newest_zero  # a real zero stays a zero
    assert "$" not in unknown
    assert " - " in unknown
    assert "$0.0123" in known
    rows = json.loads(run(capsys, "history", job_id, "--json")[1])
    assert [r["cost_usd"] for r in rows] == [0, None, 0.0123]
