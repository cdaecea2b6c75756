"""The two processes of a run, in one event loop: the real ``Connector`` and the real ``Sidecar``.

Each process runs in its own ``contextvars.Context`` (``OWNER`` names it), so every task it
starts, directly or not, is recorded as its own by the task factory, and every database it opens
is an ``InlineConnection`` registered to it. ``Process.kill()`` is ``kill -9``: the databases
close without a commit, then its tasks are cancelled (whatever their cleanup tries can no longer
reach a file; the run has already dropped its sockets). A restart is a new ``Process`` over the
same files.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from common import sqlite as common_sqlite
from sim.db import DbFaults, InlineConnection

T = TypeVar("T")

OWNER: contextvars.ContextVar[Process | None] = contextvars.ContextVar("sim_owner", default=None)


class Process:
    """One simulated OS process: ``name`` (``sidecar``/``connector``), ``generation`` (starts),
    its tasks and databases, and whatever object it runs (``app``)."""

    def __init__(self, name: str, generation: int, faults: DbFaults | None) -> None:
        self.name = name
        self.generation = generation
        self.alive = True
        self.tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self.dbs: list[InlineConnection] = []
        self.app: Any = None
        self.context = contextvars.copy_context()
        self.context.run(OWNER.set, self)
        self.context.run(common_sqlite.CONNECT.set, self._connect)
        self._faults = faults

    def _connect(self, path: str) -> InlineConnection:
        conn = InlineConnection(path, self._faults)
        self.dbs.append(conn)
        return conn

    def spawn(self, aw: Awaitable[T]) -> asyncio.Task[T]:
        """Run ``aw`` as a task of this process."""

        async def run() -> T:
            return await aw

        return asyncio.get_running_loop().create_task(run(), context=self.context)

    async def call(self, aw: Coroutine[Any, Any, T]) -> T:
        """Await ``aw`` inside this process (its tasks are this process's)."""
        return await self.spawn(aw)

    async def kill(self) -> None:
        """``kill -9``: files closed uncommitted, then every task cancelled (each gets up to
        100 loop turns to finish unwinding; nothing it tries can reach a file)."""
        self.alive = False
        for db in self.dbs:
            db.kill()
        tasks = [t for t in self.tasks if not t.done()]
        for t in tasks:
            t.cancel()
        for _ in range(100):
            tasks = [t for t in tasks if not t.done()]
            if not tasks:
                break
            await asyncio.sleep(0)
            for t in tasks:
                t.cancel()


def task_factory(
    loop: asyncio.AbstractEventLoop, coro: Any, context: contextvars.Context | None = None
) -> Any:
    """The loop's task factory: a task records the process it belongs to."""
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
    owner = context.get(OWNER) if context is not None else OWNER.get()
    if owner is not None:
        owner.tasks.add(task)
    return task
