"""Everything beyond the two processes: the chat platform, the model provider and the wake
path, all on virtual time and all drawing their faults from the schedule.

- The platform posts each message at its time and retries with the same ``message_id`` until
  the connector accepts it (a webhook retried with backoff); only an accepted message is owed
  an answer.
- The provider answers ``m:<id>`` with ``re:<id>`` after 0.2-2.2 s, or fails (HTTP 500), or
  answers with garbage ``usage`` (text, 1e400, a list, null, negative).
- A poke (``GET <wakeUrl>``) reaches the sidecar's real ``/wake`` logic (``accept_poke``), is
  lost, or is refused while the sidecar is down; early pokes arrive with nothing buffered.
HTTP is intercepted with aioresponses, so the real clients (the connector's poker, the
sidecar's provider client) run unchanged.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import aiohttp
from aioresponses import CallbackResult, aioresponses

from common.clock import Clock
from gateway.http.server import accept_poke
from sim.schedule import Schedule
from sim.world import Process


class MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without the ``stream_writer`` argument aiohttp 3.14
    requires (pnuckowski/aioresponses#289): without this class every simulated answer raised
    ``TypeError`` in the caller (every provider turn an apology, every poke a failure)."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


def respond(**kwargs: Any) -> CallbackResult:
    """aioresponses' ``CallbackResult`` built as a ``MockResponse``."""
    return CallbackResult(response_class=MockResponse, **kwargs)


class Outside:
    """The platform, provider and wake path of one run (see the module doc). ``sent`` reads
    the replies the connector has sent, ``violate`` records a broken promise: the provider
    asked for a message whose reply was already sent (an answered turn never calls the model
    again, SPEC 8.1)."""

    def __init__(
        self,
        schedule: Schedule,
        clock: Clock,
        *,
        sidecar: Callable[[], Process | None],
        connector: Callable[[], Process | None],
        note: Callable[[str], None],
        count: Callable[[str], None],
        sent: Callable[[], list[tuple[str, str]]],
        violate: Callable[[str], None],
    ) -> None:
        self.s = schedule
        self._sent = sent
        self._violate = violate
        self.clock = clock
        self.draw = schedule.rng.random
        self._sidecar = sidecar
        self._connector = connector
        self.note = note
        self.count = count
        self.accepted: dict[str, str] = {}  # message id -> chat id
        self.workload_done = False

    @contextmanager
    def http(self) -> Iterator[None]:
        """Route the processes' outgoing HTTP to the simulated provider and wake host."""
        with aioresponses() as mock:
            mock.post(re.compile(r"^http://provider\.sim/.*"), callback=self._provider, repeat=True)
            mock.get(re.compile(r"^http://sidecar\.sim/wake.*"), callback=self._wake, repeat=True)
            mock.get(re.compile(r"^http://sidecar\.sim/presence.*"), callback=self._presence, repeat=True)
            yield

    async def workload(self) -> None:
        started = self.clock.monotonic()
        for m in self.s.messages:
            wait = started + m.at - self.clock.monotonic()
            if wait > 0:
                await self.clock.sleep(wait)
            await self._post(m.chat_id, m.message_id)
        self.workload_done = True

    async def _post(self, chat_id: str, message_id: str) -> None:
        delay = 1.0
        body = {"chat_id": chat_id, "user_id": "u1", "message_id": message_id, "text": f"m:{message_id}"}
        while True:
            proc = self._connector()
            if proc is not None and proc.alive and proc.app is not None:
                task = proc.spawn(proc.app.ingest("relay", "", body))
                await asyncio.wait({task})
                if task.cancelled() or task.exception() is not None:
                    why = "killed" if task.cancelled() else type(task.exception()).__name__
                    self.note(f"ingest {message_id} failed: {why}")
                else:
                    self.accepted[message_id] = chat_id
                    self.note(f"ingest {message_id} -> {chat_id}: {task.result().get('delivered')}")
                    return
            await self.clock.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def early_pokes(self) -> None:
        started = self.clock.monotonic()
        for at in self.s.early_pokes:
            await self.clock.sleep(max(0.0, started + at - self.clock.monotonic()))
            proc = self._sidecar()
            if proc is not None and proc.alive and proc.app is not None:
                self.count("poke_early")
                self.note("early poke")
                accept_poke(proc.app)

    async def _provider(self, url: Any, **kwargs: Any) -> CallbackResult:
        body = kwargs.get("json") or json.loads(kwargs.get("data") or "{}")
        text = str(body["messages"][-1]["content"])
        mid = text.removeprefix("m:")
        if any(reply == f"re:{mid}" for _chat, reply in self._sent()):
            self.note(f"provider asked again for {text} after re:{mid} was sent")
            self._violate(f"{mid}: the model was asked again after its reply was sent")
        await self.clock.sleep(0.2 + 2.0 * self.draw())
        if self.s.provider_failure and self.draw() < self.s.provider_failure:
            self.count("provider_failure")
            self.note(f"provider fails for {text}")
            return respond(status=500, payload={"error": "simulated outage"})
        usage: Any = {"prompt_tokens": 10, "completion_tokens": 3, "cost": 0.0001}
        if self.s.provider_garbage and self.draw() < self.s.provider_garbage:
            self.count("provider_garbage")
            usage = {"prompt_tokens": self.s.rng.choice(["lots", 1e400, [1], None, -5]), "cost": "free"}
            self.note(f"provider answers {text} with garbage usage")
        return respond(
            status=200,
            payload={
                "model": "sim-model",
                "choices": [{"message": {"role": "assistant", "content": f"re:{mid}"}}],
                "usage": usage,
            },
        )

    async def _wake(self, url: Any, **kwargs: Any) -> CallbackResult:
        proc = self._sidecar()
        if proc is None or not proc.alive or proc.app is None:
            self.note("poke: sidecar down")
            raise ConnectionRefusedError("sidecar down")
        if self.s.poke_lost and self.draw() < self.s.poke_lost:
            self.count("poke_lost")
            self.note("poke lost")
            raise ConnectionResetError("poke lost")
        self.note("poke")
        return respond(status=202, payload=accept_poke(proc.app))

    async def _presence(self, url: Any, **kwargs: Any) -> CallbackResult:
        return respond(status=404)  # no /presence in the simulation: pokes only
