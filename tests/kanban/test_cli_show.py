"""``kanban show`` and ``kanban create --assignee`` checks, in-process through
``gateway.cli.main`` (SPEC 2 and 6)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway import cli


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("HERMES_HOME", str(h))
    return h


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["kanban", *args])
    out, err = capsys.readouterr()
    return code, out, err


def dump(home: Path) -> list[str]:
    if not (home / "state.db").exists():
        return []
    con = sqlite3.connect(home / "state.db")
    try:
        return list(con.iterdump())
    finally:
        con.close()


def one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_cli_kanban_create_unknown_assignee_exits_2_naming_the_profiles(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home.mkdir()
    (home / "config.yaml").write_text("profiles: {research: {}}\n")
    code, out, err = run(capsys, "create", "--title", "t", "--assignee", "ghost")
    assert (code, out) == (2, "")
    one_line(err, "'ghost'", "known profiles: default, research", "profiles:")
    assert not (home / "state.db").exists()  # nothing written
    code, _, err = run(capsys, "create", "--title", "t", "--assignee", "research")
    assert code == 0, err
    before = dump(home)
    code, _, err = run(capsys, "create", "--title", "t", "--assignee", "ghost", "--json")
    assert code == 2
    one_line(err, "'ghost'")
    assert dump(home) == before
    code, _, err = run(capsys, "create", "--title", "t", "--assignee", "default")
    assert code == 0, err  # "default" always exists


def test_cli_kanban_show_prints_the_task_and_its_events(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "create", "--title", "summarise", "--body", "the news", "--json")
    assert code == 0, err
    task_id = json.loads(out)["id"]
    code, out, err = run(capsys, "show", str(task_id), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["id"], doc["title"], doc["body"], doc["status"]) == (
        task_id,
        "summarise",
        "the news",
        "ready",
    )
    assert [e["kind"] for e in doc["events"]] == ["created"]
    assert doc["events"][0]["payload"] == {"assignee": None, "source": "manual"}
    code, out, _ = run(capsys, "show", str(task_id))
    assert code == 0
    assert out.startswith(f"#{task_id}  [ready]")
    assert "the news" in out
    assert "events:" in out
    assert "created" in out


@pytest.mark.parametrize("task_id", ["999", "0", "abc"], ids=["unknown", "zero", "not-a-number"])
def test_cli_kanban_show_unknown_id_exits_2(
    home: Path, capsys: pytest.CaptureFixture[str], task_id: str
) -> None:
    code, out, err = run(capsys, "show", task_id)  # no state.db yet: none created
    assert (code, out) == (2, "")
    one_line(err, task_id, "kanban list")
    assert not home.exists()
    assert run(capsys, "create", "--title", "t")[0] == 0
    before = dump(home)
    code, _, err = run(capsys, "show", task_id, "--json")
    assert code == 2
    one_line(err, task_id)
    assert dump(home) == before
