"""The inbound turn state machine (SPEC 8.1): its table, and a restart resuming a turn found in
each state against the real inbox store and a fake provider that counts requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from common.clock import FakeClock
from common.errors import TransitionError
from gateway.config import load_config
from gateway.core.turn import TurnEvent, TurnState, chunk_key, give_up_due, transition
from gateway.inbox.store import InboxItem, InboxStore
from gateway.runtime.inbox_worker import InboxWorker, Sent, relay_send
from gateway.statedb import open_state_db
from relay.client.transport import RelayTransport
from tests.fake_llm import FakeLLM, provider_config


@pytest.mark.parametrize(
    ("state", "event", "after"),
    [
        (TurnState.RECEIVED, TurnEvent.START, TurnState.ANSWERING),
        (TurnState.ANSWERING, TurnEvent.START, TurnState.ANSWERING),
        (TurnState.RECEIVED, TurnEvent.ANSWER, TurnState.ANSWERED),
        (TurnState.ANSWERING, TurnEvent.ANSWER, TurnState.ANSWERED),
        (TurnState.ANSWERED, TurnEvent.DELIVER, TurnState.DELIVERED),
        (TurnState.ANSWERED, TurnEvent.GIVE_UP, TurnState.UNDELIVERED),
    ],
    ids=lambda v: v.value if hasattr(v, "value") else str(v),
)
def test_turn_table_moves_each_legal_step(state: TurnState, event: TurnEvent, after: TurnState) -> None:
    """Each row of the table gives its next state."""
    assert transition(state, event) is after


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (TurnState.DELIVERED, TurnEvent.START),
        (TurnState.ANSWERED, TurnEvent.START),
        (TurnState.UNDELIVERED, TurnEvent.DELIVER),
        (TurnState.RECEIVED, TurnEvent.DELIVER),
    ],
    ids=["delivered-start", "answered-start", "undelivered-deliver", "received-deliver"],
)
def test_turn_table_refuses_illegal_steps_naming_both(state: TurnState, event: TurnEvent) -> None:
    """A done turn never starts again, an answered one never calls the model: both raise."""
    with pytest.raises(TransitionError, match=f"{event.value}.*{state.value}"):
        transition(state, event)


def test_chunk_keys_are_task_ref_and_index_and_give_up_is_hours() -> None:
    """Keys are ``<task ref>:<chunk>``; the give-up bound is in hours from the answer."""
    assert chunk_key("inbox:42", 0) == "inbox:42:0"
    assert not give_up_due(1000.0, 1000.0 + 24 * 3600 - 1, 24)
    assert give_up_due(1000.0, 1000.0 + 24 * 3600, 24)


class Rig:
    """An inbox on a temporary state.db, a worker on a fake clock, and a recording send."""

    def __init__(self, db: Any, llm: FakeLLM, http: aiohttp.ClientSession, home: Path) -> None:
        (home / "config.yaml").write_text(provider_config(llm.base_url))
        self.inbox = InboxStore(db)
        self.db = db
        self.llm = llm
        self.clock = FakeClock()
        self.sent: list[tuple[str, str]] = []  # (key, chunk)
        self.fail_at: str | None = None  # a key whose send fails (then succeeds)
        self.retries = 0
        self.worker = InboxWorker(
            inbox=self.inbox,
            config=load_config(home=home, env={}),
            http=http,
            env={},
            clock=self.clock,
            send=self.send,
            chunk_limit=lambda: 5,
            on_model_retry=self.count_retry,
        )

    def count_retry(self) -> None:
        self.retries += 1

    async def send(
        self, item: InboxItem, chunk: str, key: str, answered_at: float
    ) -> tuple[Sent, str | None]:
        if key == self.fail_at:
            self.fail_at = None
            return Sent.INTERRUPTED, "connection lost"
        self.sent.append((key, chunk))
        return Sent.CONFIRMED, None

    async def admit(self, text: str, message_id: str = "m1") -> InboxItem:
        frame = {
            "type": "inbound",
            "bufferId": f"b-{message_id}",
            "event": {
                "text": text,
                "message_type": "text",
                "message_id": message_id,
                "source": {"platform": "relay", "chat_id": "c1", "user_id": "u1"},
            },
        }
        admission = await self.inbox.admit([frame], self.clock.wall())
        return admission.new[0]

    async def force(self, item_id: int, **cols: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in cols)
        await self.db.execute(f"UPDATE inbox SET {sets} WHERE id = ?", (*cols.values(), item_id))


@pytest.fixture
async def rig(tmp_path: Path, llm: FakeLLM) -> AsyncIterator[Rig]:
    db = await open_state_db(tmp_path / "state.db")
    async with aiohttp.ClientSession() as http:
        yield Rig(db, llm, http, tmp_path)
    await db.close()


async def test_received_turn_answers_commits_then_sends_every_chunk_keyed(rig: Rig) -> None:
    """A new turn calls the model once, commits the answer, sends each chunk with its key."""
    item = await rig.admit("hello")  # "echo: hello" in chunks of at most 5 characters
    outcome = await rig.worker.turn(item, None)
    assert outcome.status == "done"
    assert len(rig.llm.requests) == 1
    assert "".join(chunk for _, chunk in rig.sent) == "echo: hello"
    assert [key for key, _ in rig.sent] == [f"inbox:{item.id}:{i}" for i in range(len(rig.sent))]
    row = await rig.inbox.turn(item.id)
    assert row is not None
    assert (row.state, row.chunks_sent, row.model_calls) == (TurnState.DELIVERED, 3, 1)


async def test_answering_turn_after_restart_calls_the_model_again_and_counts_it(rig: Rig) -> None:
    """A crash during the model call: the restart asks again (the one repeat), counted."""
    item = await rig.admit("again")
    await rig.force(item.id, turn_state="answering", status="running", model_calls=1)
    outcome = await rig.worker.turn(item, None)
    assert outcome.status == "done"
    assert (len(rig.llm.requests), rig.retries) == (1, 1)
    row = await rig.inbox.turn(item.id)
    assert row is not None
    assert row.model_calls == 2


async def test_answered_turn_after_restart_sends_only_unconfirmed_chunks_no_model_call(rig: Rig) -> None:
    """An answered turn with 1 of 3 chunks confirmed: chunks 1 and 2 go out; no provider call."""
    item = await rig.admit("x")
    await rig.force(
        item.id,
        turn_state="answered",
        status="running",
        outcome="succeeded",
        chunks=json.dumps(["one", "two", "three"]),
        chunks_sent=1,
        answered_at=rig.clock.wall(),
    )
    outcome = await rig.worker.turn(item, None)
    assert outcome.status == "done"
    assert rig.llm.requests == []
    assert rig.sent == [(f"inbox:{item.id}:1", "two"), (f"inbox:{item.id}:2", "three")]


async def test_delivered_turn_never_runs_again_whatever_its_task_says(rig: Rig) -> None:
    """A requeued task for a delivered turn: no model call, nothing sent, done."""
    item = await rig.admit("once")
    assert (await rig.worker.turn(item, None)).status == "done"
    sent = list(rig.sent)
    outcome = await rig.worker.turn(item, None)  # the board requeued its task after a crash
    assert outcome.status == "done"
    assert (len(rig.llm.requests), rig.sent) == (1, sent)


async def test_interrupted_send_leaves_the_turn_answered_and_resumes_at_that_chunk(rig: Rig) -> None:
    """Shutdown during chunk 1: the turn stays answered; the next run sends from chunk 1."""
    item = await rig.admit("hello")
    rig.fail_at = f"inbox:{item.id}:1"
    first = await rig.worker.turn(item, None)
    assert first.status == "interrupted"
    row = await rig.inbox.turn(item.id)
    assert row is not None
    assert (row.state, row.chunks_sent) == (TurnState.ANSWERED, 1)
    second = await rig.worker.turn(item, None)
    assert second.status == "done"
    assert [key for key, _ in rig.sent] == [f"inbox:{item.id}:{i}" for i in range(3)]
    assert len(rig.llm.requests) == 1


async def test_provider_failure_is_answered_with_the_apology_exactly_once(rig: Rig) -> None:
    """A 500 from the provider: the apology is the committed answer; the turn is failed."""
    rig.llm.status = 500
    item = await rig.admit("boom")
    outcome = await rig.worker.turn(item, None)
    assert outcome.status == "failed"
    assert "".join(chunk for _, chunk in rig.sent).startswith("Sorry, the model provider failed")
    row = await rig.inbox.turn(item.id)
    assert row is not None
    assert (row.state, row.outcome) == (TurnState.DELIVERED, "failed")


async def test_a_recreated_state_db_never_reuses_inbox_ids(tmp_path: Path) -> None:
    """Reply keys are inbox:<id>:<n>: a lost and recreated state.db starts its ids elsewhere."""
    firsts = []
    for name in ("one.db", "two.db"):
        db = await open_state_db(tmp_path / name)
        store = InboxStore(db)
        frame = {
            "type": "inbound",
            "bufferId": "b",
            "event": {"text": "x", "message_id": "1", "source": {"platform": "relay", "chat_id": "c"}},
        }
        firsts.append((await store.admit([frame], 0.0)).new[0].id)
        await db.close()
    assert firsts[0] != firsts[1]
    db = await open_state_db(tmp_path / "one.db")  # reopening keeps counting from where it was
    frame["bufferId"], frame["event"]["message_id"] = "b2", "2"  # type: ignore[index]
    assert (await InboxStore(db).admit([frame], 0.0)).new[0].id == firsts[0] + 1
    await db.close()


class _ClosingTransport:
    """A transport whose socket still counts as up but refuses every send (it is closing)."""

    connected = True
    supports_idempotent_send = True

    def __init__(self) -> None:
        self.sends = 0

    async def send_outbound(self, *_a: Any, **_k: Any) -> dict[str, Any]:
        self.sends += 1
        return {"success": False, "error": "relay transport not connected"}

    async def wait_until(self, predicate: Any) -> None:
        await asyncio.Event().wait()  # no state change ever comes


async def test_send_on_a_closing_socket_waits_instead_of_spinning() -> None:
    """'not connected' while the socket still counts as up: one retry per 5 s of waiting, never
    a loop that never yields (it froze the whole sidecar when a connector was killed)."""
    clock = FakeClock()
    t = _ClosingTransport()
    send = relay_send(cast(RelayTransport, t), lambda: True, clock)
    item = InboxItem(1, "b", "relay", "c1", "m1", None, {"source": {"user_id": "u"}})
    task = asyncio.create_task(send(item, "hi", "inbox:1:0", clock.wall()))
    await clock.settle()
    assert t.sends == 1
    await clock.advance(5)
    assert t.sends == 2
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
