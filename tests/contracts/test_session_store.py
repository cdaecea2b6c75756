"""SessionStore contract (``gateway/conversation/store.py``) on every backend of ``session_store``.

Only what ``tests/gateway/test_session_store.py`` leaves out: ``session_of``, ``messages`` with
``newest``, and ``last_at`` never moving back.
"""

from __future__ import annotations

import pytest

from gateway.conversation.store import ResetPolicy, SessionKey, SessionStore

KEY = SessionKey("telegram", "bot1", "chat1")
T0 = 1_714_557_600.0  # 2024-05-01 10:00 UTC
NEVER = ResetPolicy(mode="none")


@pytest.fixture
def store(session_store: SessionStore) -> SessionStore:
    return session_store


@pytest.mark.parametrize(
    ("newest", "expected"),
    [
        (None, ["q1", "r1", "q2", "r2", "q3"]),
        (10, ["q1", "r1", "q2", "r2", "q3"]),
        (3, ["q2", "r2", "q3"]),
        (1, ["q3"]),
        (0, []),
        (-2, []),
    ],
    ids=["all", "more-than-stored", "three", "one", "zero", "negative"],
)
async def test_session_messages_newest_keeps_conversation_order(
    store: SessionStore, newest: int | None, expected: list[str]
) -> None:
    """messages(newest=n) is the last n messages, still oldest first (question before answer)."""
    s = await store.current(KEY, T0, NEVER)
    for inbox_id, role, text in [
        (1, "user", "q1"),
        (2, "user", "q2"),
        (1, "assistant", "r1"),
        (2, "assistant", "r2"),
        (3, "user", "q3"),
    ]:
        await store.add_message(s.id, inbox_id, role, text, T0 + inbox_id)
    assert [m.content for m in await store.messages(s.id, newest=newest)] == expected


@pytest.mark.parametrize(
    ("inbox_id", "found"),
    [(1, "first"), (2, "second"), (3, None), (99, None)],
    ids=["in-first", "in-second", "answer-only", "unknown"],
)
async def test_session_session_of_finds_the_user_message(
    store: SessionStore, inbox_id: int, found: str | None
) -> None:
    """session_of gives the session holding an inbox row's user message; an answer alone is not one."""
    first = await store.current(KEY, T0, NEVER)
    second = await store.current(SessionKey("telegram", "bot1", "chat2"), T0, NEVER)
    await store.add_message(first.id, 1, "user", "q", T0)
    await store.add_message(second.id, 2, "user", "q", T0)
    await store.add_message(second.id, 3, "assistant", "stray", T0)
    ids = {"first": first.id, "second": second.id, None: None}
    assert await store.session_of(inbox_id) == ids[found]


async def test_session_last_at_never_moves_back(store: SessionStore) -> None:
    """A message stored with an older time (a late answer) leaves last_at at the newest one."""
    s = await store.current(KEY, T0, NEVER)
    await store.add_message(s.id, 2, "user", "new", T0 + 50)
    await store.add_message(s.id, 1, "assistant", "late", T0 + 10)
    assert (await store.current(KEY, T0 + 60, NEVER)).last_at == T0 + 50
    assert (await store.get(s.id) or {})["last_at"] == T0 + 50
