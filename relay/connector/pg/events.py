"""Dedicated PostgreSQL connections of one connector instance: ``EventListener`` (``LISTEN`` on
the store's channel) and ``Leadership`` (a session advisory lock only one instance holds).

Both re-open their connection with backoff (1, 2, 4 ... 30 s) whenever it is lost, and check it
with ``SELECT 1`` every ``CHECK_EVERY_S`` (a dead TCP peer is otherwise only noticed by the
next write). ``EventListener`` calls ``on_connect`` after every (re)connect, once it is
listening: the catch-up read that turns a notification lost while disconnected into a delay,
never a loss. ``Leadership`` waits in ``pg_advisory_lock`` (it returns the moment the holder's
connection ends, also when its process was killed) and calls ``on_gain`` / ``on_loss``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from common.clock import Clock, wait_for_event
from relay.client.backoff import Backoff
from relay.connector.store_api import redact_url

log = logging.getLogger("relay.cluster")

CHECK_EVERY_S = 10.0
"""Seconds between liveness checks of a dedicated connection."""
CHECK_TIMEOUT_S = 5.0
"""A liveness check that takes longer than this (seconds) counts as a lost connection."""


def leader_lock_key(channel: str) -> int:
    """The advisory lock key whose holder pokes wake URLs and sends platform calls, one per
    store ``channel`` (so connectors on other schemas of the same database elect their own)."""
    digest = hashlib.blake2b(channel.encode(), digest_size=8, person=b"relaylead")
    return int.from_bytes(digest.digest(), "big", signed=True)


OnEvent = Callable[[dict[str, Any]], None]


async def _hold(con: asyncpg.Connection[Any], clock: Clock, lost: asyncio.Event) -> None:
    """Return when ``con`` is lost: its termination callback fired or a check failed."""
    while not await wait_for_event(clock, lost, CHECK_EVERY_S):
        try:
            await con.fetchval("SELECT 1", timeout=CHECK_TIMEOUT_S)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("cluster connection check failed: %s", type(exc).__name__)
            return


def _lost_event(con: asyncpg.Connection[Any]) -> asyncio.Event:
    """An event set when asyncpg sees ``con`` terminate."""
    lost = asyncio.Event()
    con.add_termination_listener(lambda _c: lost.set())
    return lost


async def _connect(url: str, what: str, backoff: Backoff, clock: Clock) -> asyncpg.Connection[Any]:
    """Connect, retrying with ``backoff`` (the URL's password never reaches the log)."""
    while True:
        try:
            return await asyncpg.connect(url, timeout=10)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            delay = backoff.next_delay()
            log.warning(
                "%s: cannot connect to %s (%s); retrying in %.0f s", what, redact_url(url), exc, delay
            )
            await clock.sleep(delay)


class EventListener:
    """``LISTEN channel`` on a connection of its own; ``on_event(payload dict)`` per notification
    (payloads that are not JSON objects are dropped), ``on_connect()`` after every (re)connect."""

    def __init__(
        self,
        url: str,
        channel: str,
        clock: Clock,
        on_event: OnEvent,
        on_connect: Callable[[], Awaitable[None]],
    ) -> None:
        self.url = url
        self.channel = channel
        self.clock = clock
        self.on_event = on_event
        self.on_connect = on_connect
        self.connects = 0  # (re)connects so far (tests, logs)
        self.connected = False  # listening now (and caught up once)

    def _deliver(self, _con: Any, _pid: int, _channel: str, payload: object) -> None:
        if not isinstance(payload, str):
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if isinstance(event, dict):
            self.on_event(event)

    async def run(self) -> None:
        """Listen until cancelled, re-connecting (and catching up) after every loss."""
        backoff = Backoff(base=1.0, factor=2.0, cap=30.0)
        while True:
            con = await _connect(self.url, "event listener", backoff, self.clock)
            lost = _lost_event(con)
            try:
                await con.add_listener(self.channel, self._deliver)
                self.connects += 1
                backoff.reset()
                await self.on_connect()
                self.connected = True
                await _hold(con, self.clock, lost)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("event listener lost its connection: %s", exc)
            finally:
                self.connected = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(con.close(), CHECK_TIMEOUT_S)
            await self.clock.sleep(backoff.next_delay())


class Leadership:
    """Hold the leader lock ``key`` on a connection of its own. ``on_gain()`` runs once it is held,
    ``on_loss()`` when its connection is lost (or at cancel) after a gain."""

    def __init__(
        self,
        url: str,
        key: int,
        clock: Clock,
        on_gain: Callable[[], Awaitable[None]],
        on_loss: Callable[[], Awaitable[None]],
    ) -> None:
        self.url = url
        self.key = key
        self.clock = clock
        self.on_gain = on_gain
        self.on_loss = on_loss
        self.leader = False

    async def run(self) -> None:
        """Wait for the lock, lead until the connection is lost, repeat; until cancelled."""
        backoff = Backoff(base=1.0, factor=2.0, cap=30.0)
        while True:
            con = await _connect(self.url, "leader election", backoff, self.clock)
            lost = _lost_event(con)
            try:
                # Blocks while another instance leads; returns when its connection ends.
                await con.execute("SELECT pg_advisory_lock($1)", self.key, timeout=None)
                backoff.reset()
                self.leader = True
                log.info("this instance now pokes wake URLs and sends platform calls (leader)")
                await self.on_gain()
                await _hold(con, self.clock, lost)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("leader election lost its connection: %s", exc)
            finally:
                if self.leader:
                    self.leader = False
                    log.warning("this instance is no longer the leader")
                    await asyncio.shield(self.on_loss())
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(con.close(), CHECK_TIMEOUT_S)
            await self.clock.sleep(backoff.next_delay())
