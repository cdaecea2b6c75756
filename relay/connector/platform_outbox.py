"""Durable platform sends (SPEC 8.3): Bot API calls queued in the connector's database.

One worker per configured bot sends that bot's queued calls strictly in queue order (so a
chat's messages keep their order and a 429 holds the whole bot, as Telegram means it). A call is
retried on network errors and 5xx with backoff 1, 2, 4 ... 60 s, after ``retry_after`` on a
429, for up to 24 h after it was queued; any other 4xx fails it with Telegram's description.
The final result is committed (with the send's idempotency key, if any) before anyone hears of
it; queued sends survive a restart (workers read the queue at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from common.clock import Clock
from relay.client.backoff import Backoff
from relay.connector import telegram
from relay.connector.store import PlatformSend
from relay.connector.store_api import ConnectorStore

log = logging.getLogger("relay.platform")

GIVE_UP_S = 24 * 3600.0
"""How long (seconds after it was queued) a platform send is retried before it fails."""
FINISHED_KEEP = 10_000
"""How many recent final results stay in memory for late waiters."""

OnDone = Callable[[PlatformSend, dict[str, Any]], Awaitable[None]]


class PlatformOutbox:
    """The Telegram send queue. ``tokens`` maps bot id -> Bot API token; ``on_done(send,
    result)`` runs after a send's final result committed (the connector answers the gateway)."""

    def __init__(
        self,
        store: ConnectorStore,
        *,
        http: Callable[[], aiohttp.ClientSession],
        clock: Clock,
        api_base: str,
        tokens: dict[str, str],
        on_done: OnDone,
    ) -> None:
        self.store = store
        self._http = http
        self.clock = clock
        self.api_base = api_base
        self.tokens = dict(tokens)
        self._on_done = on_done
        self._wake: dict[str, asyncio.Event] = {b: asyncio.Event() for b in self.tokens}
        self._workers: list[asyncio.Task[None]] = []
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.calls = 0  # Bot API calls made (tests)

    def handles(self, platform: str, bot_id: str) -> bool:
        return platform == telegram.PLATFORM and bot_id in self.tokens

    def start(self) -> None:
        """Start one worker per bot; each first sends what is still queued from before."""
        for bot_id in self.tokens:
            self._workers.append(asyncio.create_task(self._worker(bot_id), name=f"telegram-send-{bot_id}"))

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()

    def poke(self, bot_id: str) -> None:
        """A send for ``bot_id`` was committed to the queue."""
        evt = self._wake.get(bot_id)
        if evt is not None:
            evt.set()

    async def wait_for(self, send_id: str) -> dict[str, Any]:
        """The final result of a queued send (waits until it is committed)."""
        done = self._finished.get(send_id)
        if done is not None:
            return done
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(send_id, []).append(fut)
        return await fut

    def resolve(self, send_id: str, result: dict[str, Any]) -> None:
        """A send's final result is committed (here, or by the instance that sent it): hand it to
        its waiters and keep it for late ones."""
        self._finished[send_id] = result
        while len(self._finished) > FINISHED_KEEP:
            self._finished.popitem(last=False)
        for fut in self._waiters.pop(send_id, []):
            if not fut.done():
                fut.set_result(result)

    def waiting(self) -> list[str]:
        """The send ids someone waits on (a catch-up re-reads their results)."""
        return list(self._waiters)

    async def _worker(self, bot_id: str) -> None:
        wake = self._wake[bot_id]
        while True:
            wake.clear()
            try:
                sends = await self.store.pending_platform_sends(telegram.PLATFORM, bot_id)
            except Exception as exc:
                log.error("telegram bot %s: cannot read the send queue: %s", bot_id, exc)
                await self.clock.sleep(1.0)
                continue
            if not sends:
                await wake.wait()
                continue
            for send in sends:
                result = await self._deliver(self.tokens[bot_id], send)
                await self._finish(send, result)

    async def _deliver(self, token: str, send: PlatformSend) -> dict[str, Any]:
        try:
            method, payload = telegram.api_call_for(send.action)
        except (KeyError, TypeError, AttributeError) as exc:
            return {"success": False, "error": f"unsendable action: {exc!r}"}
        backoff = Backoff(base=1.0, factor=2.0, cap=60.0, uniform=lambda lo, hi: hi)
        while True:
            self.calls += 1
            out = await telegram.call(self._http(), self.api_base, token, method, payload)
            if out.kind == "ok":
                return telegram.result_of(send.action, out.result)
            if out.kind == "fail":
                log.warning("telegram %s for gateway %s failed: %s", method, send.gateway_id, out.error)
                return {"success": False, "error": out.error}
            delay = out.retry_after if out.kind == "wait" else backoff.next_delay()
            if self.clock.wall() + delay > send.created_at + GIVE_UP_S:
                log.warning("telegram %s for gateway %s: giving up after 24 h", method, send.gateway_id)
                return {"success": False, "error": f"gave up after 24 h: {out.error}"}
            log.warning("telegram %s: %s; retrying in %.0f s", method, out.error, delay)
            self.store.note_platform_attempt(send.send_id, out.error)
            await self.clock.sleep(delay)

    async def _finish(self, send: PlatformSend, result: dict[str, Any]) -> None:
        while True:
            try:
                await self.store.finish_platform_send(send, result, self.clock.wall())
                break
            except Exception as exc:  # the store must not lose the outcome: keep trying
                log.error("telegram send %s: result not stored (%s); retrying", send.send_id, exc)
                await self.clock.sleep(1.0)
        self.resolve(send.send_id, result)
        try:
            await self._on_done(send, result)
        except Exception as exc:
            log.warning("telegram send %s: could not answer the gateway: %s", send.send_id, exc)
