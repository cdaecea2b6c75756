"""The event loop every process runs on: uvloop when it is installed (the ``fast`` extra,
which deploy/Dockerfile installs), else asyncio's own. ``HERMES_EVENT_LOOP=asyncio`` forces
asyncio's (to compare, or to rule uvloop out).

uvloop's timers have millisecond resolution and may fire up to 1 ms before their deadline;
code that must not act early re-checks the time and sleeps again (the cron scheduler does).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: what ``run`` uses in this environment."""
    if os.environ.get("HERMES_EVENT_LOOP", "").strip().lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``loop_name()`` names."""
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
