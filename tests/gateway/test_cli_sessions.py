"""``hermes-sidecar sessions list|show|reset`` through ``gateway.cli.main`` (SPEC 8.2, 2)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from gateway import cli
from gateway.conversation.store import ResetPolicy, SessionKey, SessionStore
from gateway.statedb import open_state_db

NEVER = ResetPolicy(mode="none")
T0 = 1_714_557_600.0  # 2024-05-01 10:00 UTC


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("HERMES_HOME", str(h))
    return h


async def seed(home: Path) -> dict[str, int]:
    """Three sessions: telegram:42 (two, the first ended, with an exchange) and slack:42."""
    db = await open_state_db(home / "state.db")
    try:
        store = SessionStore(db)
        first = await store.current(SessionKey("telegram", "bot", "42"), T0, NEVER)
        await store.add_message(first.id, 1, "user", "hello", T0 + 1)
        await store.add_message(first.id, 1, "assistant", "hi\nthere", T0 + 2)
        second = await store.reset(SessionKey("telegram", "bot", "42"), T0 + 10)
        other = await store.current(SessionKey("slack", "", "42", "thread"), T0 + 20, NEVER)
        return {"first": first.id, "second": second.id, "other": other.id}
    finally:
        await db.close()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["sessions", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_sessions_without_state_db_reads_empty_and_creates_nothing(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """list prints nothing found, reset ends nothing, and the home is never created."""
    assert run(capsys, "list", "--json")[:2] == (0, "[]\n")
    assert run(capsys, "list")[:2] == (0, "no sessions\n")
    code, out, _ = run(capsys, "reset", "telegram:42", "--json")
    assert code == 0
    assert json.loads(out) == {"platform": "telegram", "chat_id": "42", "ended": [], "notified": False}
    assert run(capsys, "show", "1")[0] == 2
    assert not home.exists()


def test_cli_sessions_list_and_show(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """list is newest first with counts (filtered by --chat); show gives the messages in order."""
    ids = asyncio.run(seed(home))
    code, out, _ = run(capsys, "list", "--json")
    rows = json.loads(out)
    assert code == 0
    assert [r["id"] for r in rows] == [ids["other"], ids["second"], ids["first"]]
    assert [r["message_count"] for r in rows] == [0, 0, 2]
    assert rows[2]["ended_at"] == T0 + 10
    _, out, _ = run(capsys, "list", "--chat", "telegram:42", "--json")
    assert [r["id"] for r in json.loads(out)] == [ids["second"], ids["first"]]
    _, out, _ = run(capsys, "list", "--chat", "telegram:nope", "--json")
    assert json.loads(out) == []
    _, out, _ = run(capsys, "list")
    lines = out.splitlines()
    assert lines[0].startswith(f"#{ids['other']}  slack:42  bot=-  thread=thread  [open]  0 message(s)")
    assert lines[2].startswith(
        f"#{ids['first']}  telegram:42  bot=bot  thread=-  [ended 2024-05-01T10:00:10.000Z]"
    )

    code, out, _ = run(capsys, "show", str(ids["first"]), "--json")
    doc = json.loads(out)
    assert code == 0
    assert (doc["id"], doc["platform"], doc["chat_id"], doc["message_count"]) == (
        ids["first"],
        "telegram",
        "42",
        2,
    )
    assert doc["messages"] == [
        {"role": "user", "content": "hello", "at": T0 + 1},
        {"role": "assistant", "content": "hi\nthere", "at": T0 + 2},
    ]
    _, out, _ = run(capsys, "show", str(ids["first"]))
    assert out.splitlines()[1:] == [
        "[2024-05-01T10:00:01.000Z] user: hello",
        "[2024-05-01T10:00:02.000Z] assistant: hi",
        "there",
    ]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("list", "--chat", "telegram"), "chat 'telegram' must be PLATFORM:CHAT_ID"),
        (("list", "--chat", ":42"), "chat ':42' must be PLATFORM:CHAT_ID"),
        (("reset", "telegram:"), "chat 'telegram:' must be PLATFORM:CHAT_ID"),
        (("reset",), "PLATFORM:CHAT_ID"),
        (("show", "abc"), "session id 'abc' is not an integer"),
        (("show", "999"), "unknown session id 999"),
        (("drop",), "invalid choice: 'drop'"),
    ],
    ids=[
        "chat-no-colon",
        "chat-no-platform",
        "reset-no-chat-id",
        "reset-missing",
        "show-not-int",
        "show-unknown",
        "bad-command",
    ],
)
def test_cli_sessions_bad_input_exits_2_with_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], needle: str
) -> None:
    """Bad input: exit 2, one stderr line naming the value, nothing written."""
    asyncio.run(seed(home))
    before = run(capsys, "list", "--json")[1]
    code, out, err = run(capsys, *args)
    assert code == 2, err
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert out == ""
    assert run(capsys, "list", "--json")[1] == before


async def test_cli_sessions_reset_ends_the_chat_and_notifies_the_sidecar(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """reset ends the chat's open sessions (any bot or thread) and pokes the sidecar's /admin/notify."""
    ids = await seed(home)
    db = await open_state_db(home / "state.db")
    try:
        threaded = await SessionStore(db).current(SessionKey("telegram", "bot2", "42", "t"), T0 + 30, NEVER)
    finally:
        await db.close()
    pokes: list[str | None] = []

    async def notify(request: web.Request) -> web.Response:
        pokes.append(request.headers.get("Authorization"))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/admin/notify", notify)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        (home / "sidecar.json").write_text(json.dumps({"port": port, "pid": 1, "token": "tok"}))
        code = await asyncio.to_thread(cli.main, ["sessions", "reset", "telegram:42", "--json"])
        out = capsys.readouterr().out
    finally:
        await runner.cleanup()
    assert code == 0
    assert json.loads(out) == {
        "platform": "telegram",
        "chat_id": "42",
        "ended": [ids["second"], threaded.id],
        "notified": True,
    }
    assert pokes == ["Bearer tok"]
    rows = {r["id"]: r for r in json.loads((await asyncio.to_thread(run, capsys, "list", "--json"))[1])}
    assert rows[ids["other"]]["ended_at"] is None
    assert rows[threaded.id]["ended_at"] is not None
    (home / "sidecar.json").unlink()
    code, out, _ = await asyncio.to_thread(run, capsys, "reset", "telegram:42")
    assert (code, out) == (0, "no open session for telegram:42\n")
