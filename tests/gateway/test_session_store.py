"""SessionStore contract over a real state.db (migration 7): one open session per chat key,
rotation on the reset policy, idempotent messages in conversation order, retention."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from common.sqlite import read_all, read_one
from gateway.conversation.history import Message
from gateway.conversation.store import ResetPolicy, SessionKey, SessionStore
from gateway.statedb import open_state_db

KEY = SessionKey("telegram", "bot1", "chat1")
T0 = 1_714_557_600.0  # 2024-05-01 10:00 UTC
MIN = 60.0
HOUR = 3600.0
NEVER = ResetPolicy(mode="none")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await open_state_db(tmp_path / "state.db")
    yield conn
    await conn.close()


@pytest.fixture
def store(db: aiosqlite.Connection) -> SessionStore:
    return SessionStore(db)


async def ended_at(db: aiosqlite.Connection, session_id: int) -> float | None:
    row = await read_one(db, "SELECT ended_at FROM sessions WHERE id = ?", (session_id,))
    assert row is not None
    value: float | None = row[0]
    return value


async def test_session_store_current_opens_one_session_per_key(store: SessionStore) -> None:
    """The same key gets the same open session; another bot, chat or thread gets its own."""
    first = await store.current(KEY, T0, NEVER)
    assert (first.key, first.hermes_session_id, first.created_at, first.last_at) == (KEY, None, T0, T0)
    assert await store.current(KEY, T0 + 5 * MIN, NEVER) == first
    others = [
        SessionKey("telegram", "bot2", "chat1"),
        SessionKey("telegram", "bot1", "chat2"),
        SessionKey("telegram", "bot1", "chat1", "thread9"),
        SessionKey("slack", "bot1", "chat1"),
    ]
    ids = {first.id} | {(await store.current(k, T0, NEVER)).id for k in others}
    assert len(ids) == 5


@pytest.mark.parametrize(
    ("policy", "gap_s", "rotates"),
    [
        (ResetPolicy(mode="idle", idle_minutes=30), 29 * MIN, False),
        (ResetPolicy(mode="idle", idle_minutes=30), 30 * MIN, True),
        (ResetPolicy(mode="daily", at_hour=4), 17 * HOUR, False),  # 10:00 -> 03:00 next day
        (ResetPolicy(mode="daily", at_hour=4), 18 * HOUR, True),  # 10:00 -> 04:00 next day
        (ResetPolicy(mode="daily", at_hour=4, tz="Asia/Tokyo"), 9 * HOUR, True),  # 19:00 UTC = 04:00 JST
        (ResetPolicy(), 23 * HOUR, True),  # both: 04:00 passes before the day of idleness
        (NEVER, 365 * 24 * HOUR, False),
    ],
    ids=["idle-under", "idle-over", "daily-before", "daily-at", "daily-zone", "both", "none"],
)
async def test_session_store_current_rotates_when_reset_due(
    store: SessionStore, db: aiosqlite.Connection, policy: ResetPolicy, gap_s: float, rotates: bool
) -> None:
    """A message after the reset limit opens a new session and ends the old one at that time."""
    old = await store.current(KEY, T0, policy)
    new = await store.current(KEY, T0 + gap_s, policy)
    assert (new.id != old.id) is rotates
    if rotates:
        assert await ended_at(db, old.id) == T0 + gap_s
        assert (new.created_at, new.last_at) == (T0 + gap_s, T0 + gap_s)
        assert await ended_at(db, new.id) is None
    else:
        assert await ended_at(db, old.id) is None


async def test_session_store_idle_counts_from_the_last_message(store: SessionStore) -> None:
    """A stored message moves last_at, so idleness is measured from it, not from creation."""
    policy = ResetPolicy(mode="idle", idle_minutes=30)
    s = await store.current(KEY, T0, policy)
    await store.add_message(s.id, 1, "user", "hi", T0 + 20 * MIN)
    # t=+45 min: 25 min after the last message, inside the idle limit
    again = await store.current(KEY, T0 + 45 * MIN, policy)
    assert (again.id, again.last_at) == (s.id, T0 + 20 * MIN)
    # t=+50 min: 30 min after the last message, a new session
    assert (await store.current(KEY, T0 + 50 * MIN, policy)).id != s.id


async def test_session_store_reset_ends_open_and_opens_new(
    store: SessionStore, db: aiosqlite.Connection
) -> None:
    """reset ends the key's open session and returns a new open one; other keys are untouched."""
    old = await store.current(KEY, T0, NEVER)
    other = await store.current(SessionKey("telegram", "bot1", "chat2"), T0, NEVER)
    new = await store.reset(KEY, T0 + MIN)
    assert new.id != old.id
    assert (new.created_at, new.last_at, new.hermes_session_id) == (T0 + MIN, T0 + MIN, None)
    assert await ended_at(db, old.id) == T0 + MIN
    assert await ended_at(db, other.id) is None
    assert await store.current(KEY, T0 + 2 * MIN, NEVER) == new
    assert (await store.reset(SessionKey("x", "", "fresh"), T0)).key == SessionKey("x", "", "fresh")


async def test_session_store_add_message_is_idempotent_per_inbox_row_and_role(
    store: SessionStore, db: aiosqlite.Connection
) -> None:
    """A replayed turn stores nothing twice and does not move last_at again."""
    s = await store.current(KEY, T0, NEVER)
    await store.add_message(s.id, 7, "user", "question", T0 + 1)
    await store.add_message(s.id, 7, "assistant", "answer", T0 + 2)
    await store.add_message(s.id, 7, "user", "question (replayed)", T0 + 100)
    await store.add_message(s.id, 7, "assistant", "answer (resent)", T0 + 100)
    assert await store.messages(s.id) == [
        Message("user", "question", T0 + 1),
        Message("assistant", "answer", T0 + 2),
    ]
    assert (await store.current(KEY, T0 + 200, NEVER)).last_at == T0 + 2
    rows = await read_all(db, "SELECT inbox_id, role, tokens FROM session_messages ORDER BY id")
    assert [tuple(r) for r in rows] == [(7, "user", 2), (7, "assistant", 2)]


async def test_session_store_messages_in_conversation_order(store: SessionStore) -> None:
    """Messages come back per inbox row, question before answer, even when stored interleaved."""
    s = await store.current(KEY, T0, NEVER)
    # two turns of one chat overlapping: q1, q2 stored before either answer
    await store.add_message(s.id, 11, "user", "q1", T0 + 1)
    await store.add_message(s.id, 12, "user", "q2", T0 + 2)
    await store.add_message(s.id, 12, "assistant", "r2", T0 + 3)
    await store.add_message(s.id, 11, "assistant", "r1", T0 + 4)
    assert [m.content for m in await store.messages(s.id)] == ["q1", "r1", "q2", "r2"]
    assert await store.messages(s.id + 1000) == []


async def test_session_store_add_message_rejects_bad_input(
    store: SessionStore, db: aiosqlite.Connection
) -> None:
    """Another role is a ValueError, an unknown session an IntegrityError; nothing is stored."""
    s = await store.current(KEY, T0, NEVER)
    with pytest.raises(ValueError, match="role 'system'"):
        await store.add_message(s.id, 1, "system", "x", T0)
    with pytest.raises(sqlite3.IntegrityError):
        await store.add_message(s.id + 1000, 1, "user", "x", T0)
    assert await read_all(db, "SELECT * FROM session_messages") == []


async def test_session_store_set_hermes_id(store: SessionStore) -> None:
    """The hermes session id is kept on the session and returned by current and list."""
    s = await store.current(KEY, T0, NEVER)
    await store.set_hermes_id(s.id, "abc123")
    assert (await store.current(KEY, T0, NEVER)).hermes_session_id == "abc123"
    await store.set_hermes_id(s.id, "server-chosen")
    [row] = await store.list_sessions()
    assert row["hermes_session_id"] == "server-chosen"


async def test_session_store_list_sessions_filters_and_counts(store: SessionStore) -> None:
    """Newest first, with message counts; filtered by platform and/or chat id."""
    a = await store.current(KEY, T0, NEVER)
    await store.add_message(a.id, 1, "user", "q", T0 + 1)
    await store.add_message(a.id, 1, "assistant", "r", T0 + 2)
    b = await store.reset(KEY, T0 + 10)
    c = await store.current(SessionKey("slack", "", "chat1", "t1"), T0 + 20, NEVER)
    rows = await store.list_sessions()
    assert [r["id"] for r in rows] == [c.id, b.id, a.id]
    assert rows[2] == {
        "id": a.id,
        "platform": "telegram",
        "bot_id": "bot1",
        "chat_id": "chat1",
        "thread_id": "",
        "hermes_session_id": None,
        "created_at": T0,
        "last_at": T0 + 2,
        "ended_at": T0 + 10,
        "message_count": 2,
    }
    assert [r["id"] for r in await store.list_sessions(platform="telegram")] == [b.id, a.id]
    assert [r["id"] for r in await store.list_sessions(chat_id="chat1")] == [c.id, b.id, a.id]
    assert [r["id"] for r in await store.list_sessions("slack", "chat1")] == [c.id]
    assert await store.list_sessions("telegram", "nope") == []
    assert await store.get(a.id) == rows[2]
    assert await store.get(a.id + 1000) is None


async def test_session_store_end_chat_ends_every_bot_and_thread(
    store: SessionStore, db: aiosqlite.Connection
) -> None:
    """end_chat closes the chat's open sessions under any bot id and thread, nothing else."""
    keys = [KEY, SessionKey("telegram", "bot2", "chat1"), SessionKey("telegram", "bot1", "chat1", "t")]
    opened = [await store.current(k, T0, NEVER) for k in keys]
    elsewhere = await store.current(SessionKey("slack", "bot1", "chat1"), T0, NEVER)
    ended = await store.end_chat("telegram", "chat1", T0 + 5)
    assert ended == [s.id for s in opened]
    assert [await ended_at(db, s.id) for s in opened] == [T0 + 5] * 3
    assert await ended_at(db, elsewhere.id) is None
    assert await store.end_chat("telegram", "chat1", T0 + 6) == []
    assert (await store.current(KEY, T0 + 7, NEVER)).id not in ended


async def test_session_store_prune_deletes_only_older_messages(store: SessionStore) -> None:
    """Messages stored before the cut are deleted (count returned); sessions stay."""
    s = await store.current(KEY, T0, NEVER)
    for i, at in enumerate([T0, T0 + 10, T0 + 20]):
        await store.add_message(s.id, i, "user", f"m{i}", at)
    assert await store.prune(T0 + 10) == 1
    assert [m.content for m in await store.messages(s.id)] == ["m1", "m2"]
    assert await store.prune(T0 + 10) == 0
    assert (await store.get(s.id) or {})["message_count"] == 2


async def test_session_store_concurrent_current_agrees_on_one_session(tmp_path: Path) -> None:
    """Racing callers on one connection and on two (two processes) get one open session."""
    first = await open_state_db(tmp_path / "state.db")
    second = await open_state_db(tmp_path / "state.db")
    try:
        stores = [SessionStore(first), SessionStore(second)]
        got = await asyncio.gather(*(stores[i % 2].current(KEY, T0, NEVER) for i in range(8)))
        assert len({s.id for s in got}) == 1
        policy = ResetPolicy(mode="idle", idle_minutes=1)
        rotated = await asyncio.gather(*(stores[i % 2].current(KEY, T0 + 120, policy) for i in range(8)))
        assert len({s.id for s in rotated}) == 1
        open_rows = await read_all(first, "SELECT id FROM sessions WHERE ended_at IS NULL")
        assert [r[0] for r in open_rows] == [rotated[0].id]
    finally:
        await first.close()
        await second.close()


async def test_statedb_migration_7_creates_session_tables(db: aiosqlite.Connection) -> None:
    """state.db reaches version 7 (or later) with both tables, the key index and the role check."""
    assert (await read_one(db, "SELECT version FROM schema_version"))[0] >= 7
    names = {r[0] for r in await read_all(db, "SELECT name FROM sqlite_master")}
    assert {"sessions", "session_messages", "sessions_key"} <= names
    await db.execute("INSERT INTO sessions (platform, chat_id, created_at, last_at) VALUES ('p', 'c', 0, 0)")
    with pytest.raises(sqlite3.IntegrityError):
        await db.execute(
            "INSERT INTO session_messages (session_id, inbox_id, role, content, at, tokens)"
            " VALUES (1, 1, 'system', 'x', 0, 1)"
        )
