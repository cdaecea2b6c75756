"""Turns for admitted inbound: one provider call, one relay ``send`` per chunk of the answer.

Items of one chat run in arrival order (a FIFO lock per chat); different chats run side by
side up to ``workers``. A reply that cannot be sent because the relay is down waits for the
reconnect (the work stays counted, so the watcher will not flip under it); an ambiguous result
(timeout, lost connection) is not resent, so nobody gets an answer twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

from gateway.agent.provider import ProviderError, complete, split_message
from gateway.agent.resolve import resolve
from gateway.inbox.store import InboxItem
from relay.errors import ConfigError

if TYPE_CHECKING:
    from gateway.runtime.sidecar import Sidecar

log = logging.getLogger("gateway.inbox")


class InboxWorker:
    """Consumes admitted inbox items; ``accepting=False`` stops new turns (shutdown)."""

    def __init__(self, sidecar: Sidecar, workers: int = 4) -> None:
        self.sc = sidecar
        self.queue: asyncio.Queue[InboxItem] = asyncio.Queue()
        self.workers = workers
        self.accepting = True
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, items: list[InboxItem]) -> None:
        for item in items:
            self.queue.put_nowait(item)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for i in range(self.workers):
                tg.create_task(self._work(), name=f"inbox-worker-{i}")

    async def wait_idle(self) -> None:
        """Return once no turn is running."""
        await self._idle.wait()

    async def _work(self) -> None:
        while True:
            item = await self.queue.get()
            if not self.accepting:
                continue  # left pending in state.db for the next start
            lock = self._locks[f"{item.platform}\x00{item.chat_id}"]
            async with lock:
                if not self.accepting:
                    continue
                self.running += 1
                self._idle.clear()
                try:
                    with self.sc.activity.work("turn"):
                        await self._turn(item)
                finally:
                    self.running -= 1
                    if self.running == 0:
                        self._idle.set()

    async def _turn(self, item: InboxItem) -> None:
        sc = self.sc
        await sc.inbox.mark(item.id, "running", sc.clock.wall())
        text = item.event.get("text")
        outcome, error = "succeeded", None
        try:
            target = resolve(sc.config, item.profile)
            answer = (await complete(sc.http, target, [{"role": "user", "content": str(text)}],
                                     env=sc.env)).text
        except ConfigError as exc:
            outcome, error = "config_error", str(exc)
            answer = f"This agent cannot answer yet: {exc}."
        except ProviderError as exc:
            outcome, error = "failed", str(exc)
            answer = "Sorry, the model provider failed for this message; please try again."
        sent_ok, send_error = await self._reply(item, answer)
        status = "done" if sent_ok and outcome == "succeeded" else "failed"
        await sc.inbox.mark(item.id, status, sc.clock.wall(), error or send_error)
        sc.metrics.turns.labels(outcome=outcome if sent_ok else "reply_failed").inc()
        log.info("turn %s for inbox %d (chat %s): %s; reply %s", outcome, item.id, item.chat_id,
                 error or "answered", "sent" if sent_ok else f"not sent ({send_error})")

    async def _reply(self, item: InboxItem, answer: str) -> tuple[bool, str | None]:
        t = self.sc.transport
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
                if result.get("error") == "relay transport not connected" and self.accepting:
                    # Keep the turn counted as work until the relay is back, then resend.
                    with contextlib.suppress(asyncio.CancelledError):
                        await t.wait_until(lambda: t.connected or not self.accepting)
                    if not self.accepting:
                        return False, "shutting down before the relay came back"
                    continue
                return False, str(result.get("error"))
        return True, None
