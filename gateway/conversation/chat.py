"""A chat's conversation as a turn sees it (SPEC 8.2): which text a message carries, the reset
commands, and the request a turn sends for a message: ``[system] + history + [new message]``
for an OpenAI-compatible provider, or only the new message with the session's
``X-Hermes-Session-Id`` for a ``kind: hermes`` provider (which keeps the conversation itself).

The user message is stored when the model is asked; the answer when the turn is ``answered``
(``remember_answer``, idempotent per inbox row), so a resent answer is never doubled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from gateway.agent.provider import Completion, complete
from gateway.agent.resolve import Resolved
from gateway.config import Config
from gateway.conversation.history import build_request, estimate_tokens, select_history
from gateway.conversation.persona import system_prompt
from gateway.conversation.store import SessionKey, SessionStore
from gateway.inbox.store import InboxItem

RESET_COMMANDS = frozenset({"/new", "/reset"})
"""A message whose whole text is one of these (any case) starts a new session."""
RESET_REPLY = "Started a new conversation."
TEXT_TYPES_REPLY = (
    "I can only read text messages (and the captions of photos and documents); "
    "please send your message as text."
)


def usable_text(event: Mapping[str, Any]) -> str | None:
    """The text a turn answers: ``text`` for a ``text`` message (the default type), else the
    ``caption`` of a photo, document or other message; None when there is none after trimming."""
    kind = event.get("message_type") or "text"
    value = event.get("text") if kind == "text" else event.get("caption")
    return value if isinstance(value, str) and value.strip() else None


def is_reset(text: str) -> bool:
    """``/new`` or ``/reset`` as the whole message (any case, surrounding blanks ignored)."""
    return text.strip().lower() in RESET_COMMANDS


def session_key(item: InboxItem) -> SessionKey:
    """platform, bot id, chat id and thread id (``''`` when none) of the message's chat."""
    thread = item.source.get("thread_id")
    ok = isinstance(thread, str | int) and not isinstance(thread, bool)
    return SessionKey(item.platform, item.bot_id, item.chat_id, str(thread) if ok else "")


class Conversation:
    """Sessions and history for inbound turns, over ``SessionStore``."""

    def __init__(self, store: SessionStore, config: Config) -> None:
        self.store = store
        self.config = config

    async def reset(self, item: InboxItem, now: float) -> None:
        """``/new``: end the chat's session; the next message opens a new one."""
        await self.store.reset(session_key(item), now)

    async def ask(
        self,
        http: aiohttp.ClientSession,
        target: Resolved,
        item: InboxItem,
        text: str,
        profile: str | None,
        *,
        env: Mapping[str, str],
        now: float,
    ) -> Completion:
        """Ask ``target`` to answer ``text`` in the chat's session (opened or reset by the
        ``agent.session_reset`` policy); stores the user message first. Raises what
        ``complete`` raises (``ProviderError``)."""
        c = self.config
        session = await self.store.current(session_key(item), now, c.session_reset)
        await self.store.add_message(session.id, item.id, "user", text, now)
        if target.provider.kind == "hermes":
            completion = await complete(
                http,
                target,
                [{"role": "user", "content": text}],
                env=env,
                hermes_session_id=session.hermes_session_id,
            )
            new_id = completion.hermes_session_id
            if new_id and new_id != session.hermes_session_id:
                await self.store.set_hermes_id(session.id, new_id)  # adopted (compression)
            return completion
        system = system_prompt(c, c.home, profile)
        # The context window holds the whole request: the system prompt and the new message
        # always go, history fills what is left, newest exchanges first.
        budget = c.context_max_tokens - estimate_tokens(system or "") - estimate_tokens(text)
        # The newest whole exchanges are all history can use (+2: this turn's own message and
        # one unanswered message before it).
        past = await self.store.messages(session.id, newest=2 * c.history_max_turns + 2)
        history = select_history(past, c.history_max_turns, max(0, budget))
        return await complete(http, target, build_request(system, history, text), env=env)

    async def remember_answer(self, item_id: int, answer: str, now: float) -> None:
        """Keep an answered turn's answer in its session's history (once, whatever resends)."""
        session_id = await self.store.session_of(item_id)
        if session_id is not None:
            await self.store.add_message(session_id, item_id, "assistant", answer, now)
