"""Fly Machines API suspend over the local unix socket (SPEC section 4, ``suspend: fly-api``).

``POST /v1/apps/$FLY_APP_NAME/machines/$FLY_MACHINE_ID/suspend`` on ``/.fly/api``, once the
sidecar has been dormant for ``cooldown_seconds`` (``FlySuspend``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import aiohttp

from common.clock import Clock
from common.tasks import TaskSet
from gateway.config import Config

log = logging.getLogger("gateway.fly")

FLY_API_SOCKET = "/.fly/api"


async def suspend_machine(env: Mapping[str, str], socket_path: str = FLY_API_SOCKET) -> bool:
    """Ask the local Machines API to suspend this machine; True on a 2xx.

    Needs ``FLY_APP_NAME`` and ``FLY_MACHINE_ID``; logs and returns False without them or on
    any error (the sidecar stays dormant and healthy either way).
    """
    app, machine = env.get("FLY_APP_NAME"), env.get("FLY_MACHINE_ID")
    if not app or not machine:
        log.warning("fly-api suspend skipped: FLY_APP_NAME or FLY_MACHINE_ID is not set")
        return False
    url = f"http://flaps/v1/apps/{app}/machines/{machine}/suspend"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as s:
            async with s.post(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                ok = 200 <= resp.status < 300
                log.info("fly-api suspend requested: %d", resp.status)
                return ok
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("fly-api suspend failed: %s", exc)
        return False


class FlySuspend:
    """``suspend: fly-api``: ``dormant()`` (the watcher's ``on_dormant``) starts a task that waits
    ``cooldown_s`` and, if the sidecar is still dormant, suspends the machine; ``live()`` cancels
    it. ``aclose()`` cancels and awaits every such task (the composition root's shutdown)."""

    def __init__(
        self,
        config: Config,
        env: Mapping[str, str],
        clock: Clock,
        is_dormant: Callable[[], bool],
        socket_path: str = FLY_API_SOCKET,
    ) -> None:
        self.config = config
        self.env = env
        self.clock = clock
        self.is_dormant = is_dormant
        self.socket_path = socket_path
        self.task: asyncio.Task[None] | None = None  # the pending suspend, if any
        self._tasks = TaskSet()

    def dormant(self) -> None:
        if self.config.scale_to_zero.suspend == "fly-api":
            self.task = self._tasks.spawn(self._after_cooldown(), name="fly-suspend")

    def live(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def aclose(self) -> None:
        self.task = None
        await self._tasks.aclose()

    async def _after_cooldown(self) -> None:
        await self.clock.sleep(self.config.scale_to_zero.cooldown_s)
        if self.is_dormant():
            await suspend_machine(self.env, socket_path=self.socket_path)
