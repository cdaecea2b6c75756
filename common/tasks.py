"""``TaskSet``: spawn background tasks, keep them while they run, cancel and await them at close.

The one "spawn, track, discard" helper of the relay transport, the connector and the gateway's
composition root: no task outlives its owner, and a task's exception is logged, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_log = logging.getLogger("common.tasks")


class TaskSet:
    """Spawn with ``spawn``; ``aclose`` cancels every task still running and awaits each one
    (a task's own error or cancellation is swallowed there). A finished task leaves the set;
    one that raised is logged on ``log`` as ``"<name> raised"`` with its traceback."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._log = log or _log

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("%s raised", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> list[asyncio.Task[Any]]:
        """Cancel every task still running (the caller's own task excepted); return them."""
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        for t in tasks:
            t.cancel()
        return tasks

    async def aclose(self) -> None:
        """Cancel every task still running and await each one."""
        for t in self.cancel():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
