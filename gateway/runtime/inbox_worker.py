"""The turn of one admitted inbound message: one provider call on the task's profile, then the
answer sent chunk by chunk through ``reply``. The dispatch board calls ``turn`` for inbound
tasks (so caps and the idle watcher see it); items of one chat still run in arrival order (a
FIFO lock per chat), whatever the caps allow.

``relay_reply`` is the sidecar's reply path: a reply that cannot be sent because the relay is
down waits for the reconnect (the task stays running, so the watcher will not flip under it);
an ambiguous result (timeout, lost connection) is not resent, so nobody gets an answer twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping

import aiohttp

from gateway.agent.provider import ProviderError, complete, split_message
from gateway.agent.resolve import resolve
from gateway.config import Config
from gateway.inbox.store import InboxItem, InboxStore
from gateway.kanban.board import Outcome
from relay.client.transport import RelayTransport
from relay.clock import Clock
from relay.errors import ConfigError

log = logging.getLogger("gateway.inbox")

Reply = Callable[[InboxItem, str], Awaitable[tuple[bool, str | None]]]
"""``reply(item, answer) -> (sent, error)``."""


class InboxWorker:
    """Runs inbound turns. ``on_outcome(label)`` counts turns (the sidecar's metrics)."""

    def __init__(self, *, inbox: InboxStore, config: Config, http: aiohttp.ClientSession,
                 env: Mapping[str, str], clock: Clock, reply: Reply,
                 on_outcome: Callable[[str], None] | None = None) -> None:
        self.inbox = inbox
        self.config = config
        self.http = http
        self.env = env
        self.clock = clock
        self.reply = reply
        self.on_outcome = on_outcome
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def turn(self, item: InboxItem, profile: str | None) -> Outcome:
        """Answer ``item`` on ``profile`` (None: the default) and reply; the task's outcome.

        The inbox row goes ``running`` then ``done``/``failed``. A config or provider error
        still sends the user a short apology, and the task is ``failed`` with the cause.
        """
        async with self._locks[f"{item.platform}\x00{item.chat_id}"]:
            await self.inbox.mark(item.id, "running", self.clock.wall())
            text = item.event.get("text")
            outcome, error = "succeeded", None
            try:
                target = resolve(self.config, profile)
                answer = (await complete(self.http, target,
                                         [{"role": "user", "content": str(text)}],
                                         env=self.env)).text
            except ConfigError as exc:
                outcome, error = "config_error", str(exc)
                answer = f"This agent cannot answer yet: {exc}."
            except ProviderError as exc:
                outcome, error = "failed", str(exc)
                answer = "Sorry, the model provider failed for this message; please try again."
            sent_ok, send_error = await self.reply(item, answer)
            ok = sent_ok and outcome == "succeeded"
            await self.inbox.mark(item.id, "done" if ok else "failed", self.clock.wall(),
                                  error or send_error)
        if self.on_outcome is not None:
            self.on_outcome(outcome if sent_ok else "reply_failed")
        log.info("turn %s for inbox %d (chat %s): %s; reply %s", outcome, item.id, item.chat_id,
                 error or "answered", "sent" if sent_ok else f"not sent ({send_error})")
        return Outcome("done" if ok else "failed", result="answered" if ok else None,
                       error=error or send_error)


    async def refuse(self, item: InboxItem, error: str) -> None:
        """A message the board blocked (its profile is unknown): tell the user why, once, and
        close the inbox row as failed so a restart does not pick it up again."""
        sent_ok, send_error = await self.reply(item, f"This agent cannot answer yet: {error}.")
        await self.inbox.mark(item.id, "failed", self.clock.wall(), error)
        if self.on_outcome is not None:
            self.on_outcome("blocked" if sent_ok else "reply_failed")
        log.warning("inbox %d (chat %s) blocked: %s; reply %s", item.id, item.chat_id, error,
                    "sent" if sent_ok else f"not sent ({send_error})")


def relay_reply(transport: RelayTransport | None,
                accepting: Callable[[], bool]) -> Reply:
    """The sidecar's ``reply``: send each chunk over the relay; wait for a reconnect while
    ``accepting()``; never resend an ambiguous result."""

    async def reply(item: InboxItem, answer: str) -> tuple[bool, str | None]:
        t = transport
        if t is None:
            return False, "no relay configured: reply not sent"
        for chunk in split_message(answer, t.max_message_length):
            action = {"op": "send", "chat_id": item.chat_id, "content": chunk}
            while True:
                result = await t.send_outbound(action, platform=item.platform)
                if result.get("success"):
                    break
                if result.get("ambiguous"):
                    log.warning("reply to inbox %d is ambiguous (%s); not resending", item.id,
                                result.get("error"))
                    return False, str(result.get("error"))
                if result.get("error") == "relay transport not connected" and accepting():
                    # Keep the turn counted as work until the relay is back, then resend.
                    with contextlib.suppress(asyncio.CancelledError):
                        await t.wait_until(lambda: t.connected or not accepting())
                    if not accepting():
                        return False, "shutting down before the relay came back"
                    continue
                return False, str(result.get("error"))
        return True, None

    return reply
