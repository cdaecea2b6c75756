"""Fly Machines API suspend over the local unix socket (SPEC section 4, ``suspend: fly-api``).

``POST /v1/apps/$FLY_APP_NAME/machines/$FLY_MACHINE_ID/suspend`` on ``/.fly/api``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp

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
