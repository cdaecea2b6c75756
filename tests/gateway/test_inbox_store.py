"""The inbox store's contract over a temporary state.db: admission, de-duplication, quarantine
and the turn's durable steps (illegal steps raise, nothing half-written)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from common.errors import TransitionError
from gateway.core.turn import TurnEvent, TurnState
from gateway.inbox.store import InboxStore, TurnUsage
from gateway.statedb import open_state_db


def frame(bid: str | None, message_id: Any = "1", chat: Any = "c1", **extra: Any) -> dict[str, Any]:
    f: dict[str, Any] = {
        "type": "inbound",
        "event": {
            "text": "hi",
            "message_id": message_id,
            "source": {"platform": "relay", "chat_id": chat, "user_id": "u"},
        },
    }
    if bid is not None:
        f["bufferId"] = bid
    f.update(extra)
    return f


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await open_state_db(tmp_path / "state.db")
    yield conn
    await conn.close()


async def test_admit_stores_new_frames_once_by_buffer_id_or_message_id(db: aiosqlite.Connection) -> None:
    """A resent bufferId and a second bufferId for the same (platform, chat, message) are
    duplicates: stored once, counted as duplicates."""
    store = InboxStore(db)
    first = await store.admit([frame("a"), frame("b", message_id="2")], 0.0)
    again = await store.admit([frame("a"), frame("z", message_id="2")], 1.0)
    assert (len(first.new), first.duplicates) == (2, 0)
    assert (again.new, again.duplicates) == ([], 2)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (frame("x", chat="\ud800"), "invalid_unicode"),
        ({"type": "inbound", "bufferId": "x"}, "bad_shape"),
        (frame("x", chat=None), "bad_shape"),
        ({"type": "mystery", "bufferId": "x"}, "unknown_type"),
        (frame("x", event={"text": "t", "source": "nope"}), "bad_shape"),
    ],
    ids=["surrogate", "no-event", "no-chat", "unknown-type", "source-not-object"],
)
async def test_admit_quarantines_what_can_never_be_handled(
    db: aiosqlite.Connection, bad: dict[str, Any], reason: str
) -> None:
    """The bad frame is kept as rejected with its error; the good one beside it is admitted;
    the same bad frame again is a duplicate, not a second row."""
    store = InboxStore(db)
    admission = await store.admit([bad, frame("ok")], 0.0)
    assert [r.reason for r in admission.rejected] == [reason]
    assert len(admission.new) == 1
    again = await store.admit([bad], 1.0)
    assert (again.rejected, again.duplicates) == ([], 1)
    rows = await store.rejected()
    assert len(rows) == 1
    json.dumps(rows[0]["frame"]).encode("utf-8")  # stored escaped: always valid text


async def test_admit_without_message_id_keys_by_buffer_id(db: aiosqlite.Connection) -> None:
    """message_id null twice with distinct bufferIds: two messages; neither id: never merged."""
    store = InboxStore(db)
    two = await store.admit([frame("p", message_id=None), frame("q", message_id=None)], 0.0)
    anon = await store.admit([frame(None, message_id=None), frame(None, message_id=None)], 0.0)
    assert (len(two.new), len(anon.new)) == (2, 2)


async def test_turn_steps_move_through_the_table_and_keep_usage(db: aiosqlite.Connection) -> None:
    """received -> answering -> answered (chunks, usage) -> delivered; the row is done."""
    store = InboxStore(db)
    item = (await store.admit([frame("a")], 0.0)).new[0]
    await store.start_answer(item.id, TurnState.RECEIVED, 1.0)
    usage = TurnUsage("m", "p", 10, 5, 0.25, "m-2024")
    await store.commit_answer(item.id, TurnState.ANSWERING, ["he", "llo"], "succeeded", None, 2.0, usage)
    await store.chunk_sent(item.id, 1)
    await store.finish(item.id, TurnState.ANSWERED, TurnEvent.DELIVER, sent=2, ok=True, error=None, now=3.0)
    row = await store.turn(item.id)
    assert row is not None
    assert (row.state, row.chunks, row.chunks_sent, row.model_calls) == (
        TurnState.DELIVERED,
        ["he", "llo"],
        2,
        1,
    )
    cols = await db.execute_fetchall(
        "SELECT status, model, provider, input_tokens, cost_usd, answered_model FROM inbox WHERE id = ?",
        (item.id,),
    )
    assert tuple(cols[0]) == ("done", "m", "p", 10, 0.25, "m-2024")
    assert await store.unfinished() == []


async def test_an_illegal_step_raises_and_writes_nothing(db: aiosqlite.Connection) -> None:
    """Delivering a turn that was never answered raises naming both; the row is unchanged."""
    store = InboxStore(db)
    item = (await store.admit([frame("a")], 0.0)).new[0]
    with pytest.raises(TransitionError, match="deliver.*received"):
        await store.finish(
            item.id, TurnState.RECEIVED, TurnEvent.DELIVER, sent=0, ok=True, error=None, now=1.0
        )
    row = await store.turn(item.id)
    assert row is not None
    assert row.state is TurnState.RECEIVED
    assert [i.id for i in await store.unfinished()] == [item.id]


async def test_a_batch_is_matched_row_by_row_across_statements(db: aiosqlite.Connection) -> None:
    """A batch of 200 (four multi-row statements) with repeats inside it: a resent bufferId,
    a second bufferId for one message, a stored one; each new frame gets its own row and its
    own task, in the batch's order, and every repeat counts as a duplicate."""
    from gateway.kanban.sources import add_inbound_tasks
    from gateway.kanban.store import TaskStore

    store = InboxStore(db)
    await store.admit([frame("old", message_id="m-old")], 0.0)
    batch = [frame(f"b{i}", message_id=f"m{i}") for i in range(200)]
    batch[50] = frame("b10", message_id="other")  # bufferId of frame 10 again
    batch[60] = frame("fresh", message_id="m20")  # message of frame 20 again
    batch[70] = frame("old", message_id="m-old")  # stored before
    admission = await store.admit(batch, 1.0, in_tx=lambda conn, items: add_inbound_tasks(conn, items, 1.0))
    assert admission.duplicates == 3
    expected = [f"m{i}" for i in range(200) if i not in (50, 60, 70)]
    assert [item.message_id for item in admission.new] == expected
    assert [item.buffer_id for item in admission.new] == [
        f"b{i}" for i in range(200) if i not in (50, 60, 70)
    ]
    for item in admission.new[:3] + admission.new[-3:]:
        stored = await store.get(item.id)
        assert stored is not None
        assert stored.message_id == item.message_id
    board = TaskStore(db)
    tasks = await board.all()
    assert {t.ref for t in tasks} == {f"inbox:{item.id}" for item in admission.new}
    assert [e["kind"] for e in await board.events(tasks[0].id)] == ["created"]


async def test_non_finite_numbers_are_stored_as_they_came(db: aiosqlite.Connection) -> None:
    """NaN and 1e999 (the stdlib reads them, msgspec does not) come back as the same values
    from state.db: not as null."""
    import math

    from relay.protocol.framing import decode_line

    line = (
        '{"type":"inbound","bufferId":"n1","event":{"text":"t","message_id":"1","score":NaN,'
        '"big":1e999,"source":{"platform":"relay","chat_id":"c"}}}'
    )
    admission = await InboxStore(db).admit([decode_line(line)], 0.0)
    stored = await InboxStore(db).get(admission.new[0].id)
    assert stored is not None
    assert math.isnan(stored.event["score"])
    assert stored.event["big"] == math.inf
