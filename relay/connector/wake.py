"""Connector -> gateway HTTP: wake pokes and the held-open ``/presence`` request.

``WakePoker`` (one per gateway) pokes ``GET <wakeUrl>`` with the gateway's relay token on the
first buffered event (at most one per ``rate_s``, a later burst deferred to the end of the
window; ``request(immediate=True)`` bypasses the window), and at ``wakeAt``; a failed poke
(network error or non-2xx) is retried with backoff 1, 2, 4 ... 60 s until the gateway
reconnects (PROTOCOL.md 5.3). ``hold_presence`` keeps ``GET <origin of wakeUrl>/presence`` open
while the gateway is live (SPEC section 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiohttp

from common.clock import Clock
from relay.client.backoff import Backoff
from relay.protocol.urls import origin_of

log = logging.getLogger("relay.wake")

AuthHeaders = Callable[[], dict[str, str]]


class WakePoker:
    """Pokes one gateway's wake URL; every task is cancelled by ``cancel()`` on reconnect."""

    def __init__(
        self,
        gateway_id: str,
        *,
        http: aiohttp.ClientSession,
        clock: Clock,
        wake_url: Callable[[], str | None],
        auth: AuthHeaders,
        rate_s: float = 10.0,
    ) -> None:
        self.gateway_id = gateway_id
        self._http = http
        self._clock = clock
        self._wake_url = wake_url
        self._auth = auth
        self.rate_s = rate_s
        self._last_poke: float | None = None
        self._burst: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self.pokes_sent = 0
        self.pokes_failed = 0

    @property
    def busy(self) -> bool:
        """A buffered-event poke, its retries or a deferred poke is pending: ``request()`` would
        add nothing now."""
        return self._burst is not None and not self._burst.done()

    def request(self, *, immediate: bool = False) -> None:
        """A buffered event arrived: poke now, or at the end of the rate window.

        ``immediate=True`` pokes at once, outside the rate window, replacing a deferred poke or
        a retry wait (PROTOCOL.md 7.2: a flip while the gateway still holds unacked entries).
        """
        if immediate:
            if self._burst is not None:
                self._burst.cancel()
            self._burst = asyncio.create_task(self._poke_until_ok(0.0, "unacked entries at flip"))
            return
        if self._burst is not None and not self._burst.done():
            return  # a poke, its retries or a deferred poke already cover this event
        delay = 0.0
        if self._last_poke is not None:
            delay = max(0.0, self._last_poke + self.rate_s - self._clock.monotonic())
        self._burst = asyncio.create_task(self._poke_until_ok(delay, "buffered event"))

    def schedule_wake_at(self, wake_at: float | None) -> None:
        """Poke at ``wake_at`` (Unix seconds; past = now); replaces any earlier ``wakeAt``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if wake_at is None:
            return
        delay = max(0.0, wake_at - self._clock.wall())
        log.info("gateway %s: wakeAt poke in %.1f s", self.gateway_id, delay)
        self._timer = asyncio.create_task(self._poke_until_ok(delay, "wakeAt"))

    def cancel(self) -> None:
        """The gateway reconnected: stop every pending poke and retry."""
        for task in (self._burst, self._timer):
            if task is not None:
                task.cancel()
        self._burst = self._timer = None

    async def _poke_until_ok(self, delay: float, why: str) -> None:
        if delay > 0:
            await self._clock.sleep(delay)
        backoff = Backoff(base=1.0, factor=2.0, cap=60.0, uniform=lambda lo, hi: hi)
        while True:
            if await self.poke_once(why):
                return
            await self._clock.sleep(backoff.next_delay())

    async def poke_once(self, why: str) -> bool:
        """One ``GET <wakeUrl>``; True on a 2xx."""
        url = self._wake_url()
        if not url:
            log.warning("gateway %s: cannot poke (%s): no wakeUrl known", self.gateway_id, why)
            return False
        self._last_poke = self._clock.monotonic()
        try:
            async with self._http.get(
                url, headers=self._auth(), timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                ok = 200 <= resp.status < 300
                status = str(resp.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            ok, status = False, type(exc).__name__
        if ok:
            self.pokes_sent += 1
            log.info("gateway %s: poked wake url (%s): %s", self.gateway_id, why, status)
        else:
            self.pokes_failed += 1
            log.warning(
                "gateway %s: wake poke failed (%s): %s; retrying with backoff", self.gateway_id, why, status
            )
        return ok


async def hold_presence(
    gateway_id: str,
    wake_url: str,
    *,
    http: aiohttp.ClientSession,
    clock: Clock,
    auth: AuthHeaders,
) -> int:
    """Hold ``GET <origin>/presence`` open; reopen with backoff when it drops.

    Returns the status on a 401 or 409 (the gateway refuses or is dormant) or a 404 (the wake
    host has no ``/presence``: a stock hermes-agent gateway); the caller cancels it on a flip or
    when the socket goes away. Keeps Fly's proxy counting one inbound connection.
    """
    url = origin_of(wake_url) + "/presence"
    backoff = Backoff(base=1.0, factor=2.0, cap=30.0)
    while True:
        try:
            async with http.get(
                url, headers=auth(), timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
            ) as resp:
                if resp.status in (401, 409):
                    log.info(
                        "gateway %s: presence refused (%d); not reopening until next handshake",
                        gateway_id,
                        resp.status,
                    )
                    return resp.status
                if resp.status == 404:
                    return 404
                if resp.status == 200:
                    backoff.reset()
                    log.debug("gateway %s: presence held", gateway_id)
                    with contextlib.suppress(aiohttp.ClientPayloadError):
                        async for _ in resp.content.iter_any():
                            pass
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("gateway %s: presence dropped: %s", gateway_id, exc)
        await clock.sleep(backoff.next_delay())
