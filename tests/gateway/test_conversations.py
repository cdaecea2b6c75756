"""Conversations (SPEC 8.2) through the real turn: history, persona, resets, hermes mode and
message types, against a temporary state.db and a fake provider that records every request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.clock import FakeClock
from gateway.agent.spend import SpendLedger, TurnReport, is_substitution
from gateway.config import load_config
from gateway.conversation.chat import Conversation
from gateway.conversation.store import SessionKey, SessionStore
from gateway.inbox.store import InboxItem, InboxStore
from gateway.runtime.inbox_worker import InboxWorker, Sent
from gateway.runtime.sidecar import Sidecar
from gateway.statedb import open_state_db
from tests.fake_llm import FakeLLM, provider_config


class Chat:
    """The inbox, the conversation and a worker on one state.db, a recording send, a clock."""

    def __init__(self, home: Path, llm: FakeLLM, http: aiohttp.ClientSession, db: Any) -> None:
        self.home, self.llm, self.http, self.db = home, llm, http, db
        self.clock = FakeClock()
        self.sent: list[tuple[str, str]] = []  # (chat id, text)
        self.fail_next_send = False
        self.n = 0
        self.config_extra = ""
        self.reports: list[TurnReport] = []

    def worker(self, extra: str = "", provider_kind: str = "openai") -> InboxWorker:
        base = provider_config(self.llm.base_url)
        if provider_kind != "openai":
            base = base.replace("{base_url:", f"{{kind: {provider_kind}, base_url:")
        (self.home / "config.yaml").write_text(base + extra)
        config = load_config(home=self.home, env={})
        return InboxWorker(
            inbox=InboxStore(self.db),
            config=config,
            http=self.http,
            env={},
            clock=self.clock,
            send=self.send,
            conversation=Conversation(SessionStore(self.db), config),
            ledger=SpendLedger(self.db),
            on_report=self.reports.append,
        )

    async def send(self, item: InboxItem, chunk: str, key: str, at: float) -> tuple[Sent, str | None]:
        if self.fail_next_send:
            self.fail_next_send = False
            return Sent.INTERRUPTED, "killed before the send"
        self.sent.append((item.chat_id, chunk))
        return Sent.CONFIRMED, None

    async def say(self, worker: InboxWorker, text: str | None, chat: str = "c1", **event: Any) -> str:
        """One inbound message through a whole turn; the reply text."""
        self.n += 1
        ev: dict[str, Any] = {
            "message_id": str(self.n),
            "message_type": "text",
            "source": {"platform": "relay", "chat_id": chat, "user_id": "u"},
        }
        if text is not None:
            ev["text"] = text
        ev.update(event)
        admission = await InboxStore(self.db).admit(
            [{"type": "inbound", "bufferId": f"b{self.n}", "event": ev}], self.clock.wall()
        )
        await worker.turn(admission.new[0], None)
        return self.sent[-1][1]

    def messages(self, i: int = -1) -> list[dict[str, str]]:
        return list(self.llm.requests[i]["messages"])


@pytest.fixture
async def chat(tmp_path: Path, llm: FakeLLM) -> AsyncIterator[Chat]:
    db = await open_state_db(tmp_path / "state.db")
    async with aiohttp.ClientSession() as http:
        yield Chat(tmp_path, llm, http, db)
    await db.close()


async def test_ada_exchange_sends_system_history_and_the_new_message(chat: Chat) -> None:
    """The second request is exactly [system, user1, assistant1, user2]; another chat is isolated."""
    w = chat.worker("profiles: {default: {system_prompt: 'You are Hermes.'}}\n")
    (chat.home / "SOUL.md").write_text("the soul file loses to the profile's prompt")
    await chat.say(w, "my name is Ada")
    await chat.say(w, "what is my name?")
    assert chat.messages() == [
        {"role": "system", "content": "You are Hermes."},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "echo: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]
    await chat.say(w, "who am I?", chat="c2")
    assert chat.messages() == [
        {"role": "system", "content": "You are Hermes."},
        {"role": "user", "content": "who am I?"},
    ]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"profiles/default/SOUL.md": "profile soul", "SOUL.md": "home soul"}, "profile soul"),
        ({"SOUL.md": "home soul"}, "home soul"),
        ({}, None),
    ],
    ids=["profile-soul", "home-soul", "none"],
)
async def test_persona_comes_from_soul_files_in_order(
    chat: Chat, files: dict[str, str], expected: str | None
) -> None:
    """Without a configured prompt: profiles/<name>/SOUL.md, then SOUL.md, then no system."""
    for name, text in files.items():
        (chat.home / name).parent.mkdir(parents=True, exist_ok=True)
        (chat.home / name).write_text(text)
    await chat.say(chat.worker(), "hello")
    first = chat.messages()[0]
    assert first == (
        {"role": "system", "content": expected} if expected else {"role": "user", "content": "hello"}
    )


async def test_history_window_keeps_the_last_exchanges_and_always_the_new_message(chat: Chat) -> None:
    """history_max_turns 2 keeps the two newest exchanges; a tiny token budget keeps none."""
    w = chat.worker("agent: {history_max_turns: 2}\n")
    for text in ("one", "two", "three"):
        await chat.say(w, text)
    await chat.say(w, "four")
    assert [m["content"] for m in chat.messages()] == ["two", "echo: two", "three", "echo: three", "four"]
    small = chat.worker("agent: {context_max_tokens: 3}\n")
    await chat.say(small, "five is a longer message than the budget")
    assert chat.messages() == [{"role": "user", "content": "five is a longer message than the budget"}]


async def test_new_makes_no_provider_call_and_the_next_request_has_no_history(chat: Chat) -> None:
    """/new answers at once without the model; the following turn starts a fresh session."""
    w = chat.worker()
    await chat.say(w, "remember me")
    calls = len(chat.llm.requests)
    assert await chat.say(w, "  /NEW ") == "Started a new conversation."
    assert len(chat.llm.requests) == calls
    await chat.say(w, "who?")
    assert chat.messages() == [{"role": "user", "content": "who?"}]


@pytest.mark.parametrize(
    ("mode", "gap_s", "fresh"),
    [("idle", 61 * 60, True), ("idle", 59 * 60, False), ("daily", 0, True), ("none", 86400 * 3, False)],
    ids=["idle-over", "idle-under", "daily-at-4", "none"],
)
async def test_session_reset_policy_on_the_fake_clock(
    chat: Chat, mode: str, gap_s: float, fresh: bool
) -> None:
    """idle_minutes 60: a message 61 min later starts fresh, 59 min later does not; daily at
    04:00 UTC: the first message after 04:00 starts fresh; none: never."""
    w = chat.worker(f"agent: {{session_reset: {{mode: {mode}, idle_minutes: 60, at_hour: 4}}}}\n")
    await chat.say(w, "before")
    if mode == "daily":  # move to just past the next 04:00 UTC
        now = chat.clock.wall()
        next_four = (now // 86400) * 86400 + 4 * 3600
        next_four += 86400 if next_four <= now else 0
        gap_s = next_four - now + 1
    chat.clock.jump_wall(gap_s)
    await chat.say(w, "after")
    assert (len(chat.messages()) == 1) is fresh


async def test_hermes_mode_sends_only_the_new_message_with_a_session_header(chat: Chat) -> None:
    """kind hermes: no history, no system; one id per chat, a new one after /new, and the id
    the server returns is adopted."""
    w = chat.worker("profiles: {default: {system_prompt: 'ignored in hermes mode'}}\n", "hermes")
    await chat.say(w, "one")
    await chat.say(w, "two")
    assert chat.messages() == [{"role": "user", "content": "two"}]
    first, second = (h["X-Hermes-Session-Id"] for h in chat.llm.headers)
    assert first == second
    assert len(first) == 32
    await chat.say(w, "other chat", chat="c2")
    assert chat.llm.headers[-1]["X-Hermes-Session-Id"] != first
    await chat.say(w, "/new")
    await chat.say(w, "three")
    third = chat.llm.headers[-1]["X-Hermes-Session-Id"]
    assert third != first
    chat.llm.reply_headers = {"X-Hermes-Session-Id": "compressed-1"}
    await chat.say(w, "four")
    chat.llm.reply_headers = {}
    await chat.say(w, "five")
    assert chat.llm.headers[-1]["X-Hermes-Session-Id"] == "compressed-1"


@pytest.mark.parametrize(
    ("body", "event", "calls", "text"),
    [
        (None, {"message_type": "photo"}, 0, None),
        (None, {"message_type": "photo", "caption": "a cat"}, 1, "a cat"),
        ("   ", {"message_type": "text"}, 0, None),
    ],
    ids=["photo", "photo-caption", "blank-text"],
)
async def test_messages_without_text_get_one_reply_and_no_model_call(
    chat: Chat, body: str | None, event: dict[str, Any], calls: int, text: str | None
) -> None:
    """A photo without caption: no provider call, one reply naming what is read; a caption
    is the text."""
    reply = await chat.say(chat.worker(), body, **event)
    assert len(chat.llm.requests) == calls
    if text is None:
        assert "text messages" in reply
    else:
        assert chat.messages()[-1] == {"role": "user", "content": text}


async def test_a_crash_between_answered_and_the_send_sends_and_stores_it_once(chat: Chat) -> None:
    """Answered, then killed before the send: the restart sends it once, history holds it
    once, and the provider is not asked again."""
    w = chat.worker()
    chat.fail_next_send = True
    admission = await InboxStore(chat.db).admit(
        [
            {
                "type": "inbound",
                "bufferId": "k",
                "event": {
                    "text": "keep me",
                    "message_id": "k",
                    "source": {"platform": "relay", "chat_id": "c1", "user_id": "u"},
                },
            }
        ],
        0.0,
    )
    item = admission.new[0]
    assert (await w.turn(item, None)).status == "interrupted"
    assert (await chat.worker().turn(item, None)).status == "done"  # a new process
    assert chat.sent == [("c1", "echo: keep me")]
    assert len(chat.llm.requests) == 1
    store = SessionStore(chat.db)
    session_id = await store.session_of(item.id)
    assert session_id is not None
    assert [m.content for m in await store.messages(session_id)] == ["keep me", "echo: keep me"]


@pytest.mark.parametrize(
    ("asked", "answered", "substituted"),
    [
        ("gpt-4o-mini", "gpt-4o-mini", False),
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", False),
        ("claude-3-5-sonnet", "claude-3-5-sonnet-20241022", False),
        ("m", "M", False),
        ("gpt-4o-mini", None, False),
        ("gpt-4o-mini", "gpt-4o", True),
        ("gpt-4o", "gpt-4o-mini", True),
        ("openai/gpt-4o", "meta/llama-3", True),
    ],
    ids=["same", "dated", "numbered", "case", "unsaid", "other", "suffix-not-version", "router"],
)
def test_substitution_rule(asked: str, answered: str | None, substituted: bool) -> None:
    """Equal or ``<asked>-<version>`` is the same model; anything else is a substitution."""
    assert is_substitution(asked, answered) is substituted


async def test_max_daily_usd_refuses_turns_without_a_call_and_alerts_once_a_day(
    chat: Chat, caplog: pytest.LogCaptureFixture
) -> None:
    """Cap $0.0015 at $0.001 a turn: the third message gets the short reply and no provider
    call, one WARNING for the day; the next UTC day answers again."""
    w = chat.worker("agent: {max_daily_usd: 0.0015}\n")
    await chat.say(w, "one")
    await chat.say(w, "two")
    reply = await chat.say(w, "three")
    await chat.say(w, "four")
    assert "daily spending limit" in reply
    assert len(chat.llm.requests) == 2
    assert caplog.text.count("agent.max_daily_usd reached") == 1
    assert [r.outcome for r in chat.reports][-2:] == ["blocked_budget", "blocked_budget"]
    chat.clock.jump_wall(86400)
    assert await chat.say(w, "tomorrow") == "echo: tomorrow"


async def test_a_substituted_model_is_recorded_counted_and_alerted_once_per_episode(
    chat: Chat, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider answers as 'other': recorded on the turn, reported, one alert for the
    episode; the asked model answering again closes it, and a new one alerts again."""
    w = chat.worker()
    chat.llm.answer_model = "other"
    await chat.say(w, "a")
    await chat.say(w, "b")
    episodes = await SpendLedger(chat.db).substitutions()
    assert [(e["asked"], e["answered"], e["turns"]) for e in episodes] == [("test-model", "other", 2)]
    assert [r.substituted_by for r in chat.reports] == ["other", "other"]
    rows = await chat.db.execute_fetchall("SELECT model, answered_model, cost_usd FROM inbox ORDER BY id")
    assert [tuple(r) for r in rows] == [("test-model", "other", 0.001)] * 2
    assert caplog.text.count("model substitution") == 1
    chat.llm.answer_model = None
    await chat.say(w, "c")
    assert await SpendLedger(chat.db).substitutions() == []
    chat.llm.answer_model = "other"
    await chat.say(w, "d")
    assert caplog.text.count("model substitution") == 2


async def test_history_older_than_the_retention_is_deleted_at_start(tmp_path: Path) -> None:
    """agent.history_retention_days 30: a 31-day-old message is gone once the sidecar started;
    a day-old one stays."""
    home = tmp_path / "home"
    db = await open_state_db(home / "state.db")
    store = SessionStore(db)
    clock = FakeClock()
    now = clock.wall()
    session = await store.current(SessionKey("relay", "", "c1"), now - 31 * 86400)
    await store.add_message(session.id, 1, "user", "old", now - 31 * 86400)
    await store.add_message(session.id, 2, "user", "recent", now - 86400)
    await db.close()
    sc = Sidecar(load_config(home, {}), port=0, clock=clock, env={})
    await sc.start()
    try:
        for _ in range(100):  # the retention task runs right after start
            kept = [m.content for m in await SessionStore(sc.db).messages(session.id)]
            if kept == ["recent"]:
                break
            await clock.settle()
        assert kept == ["recent"]
    finally:
        await sc.shutdown()
