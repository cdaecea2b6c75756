"""The sidecar's dispatch board service: every agent turn (inbound, cron, manual) is a task,
dispatched per profile under the ``kanban.*`` caps.

The dispatcher runs on events, not on a poll: a task created, a task finished, a management
command's notify, start-up. Each event ``kick()``s the loop, which runs ``dispatch_once`` until
a tick spawns nothing. A spawned task runs in its own asyncio task, counted as ``task`` work for
the idle watcher (so the sidecar never goes dormant under it), then is finished ``done`` or
``failed`` and kicks the loop again, so a task deferred by a cap spawns on the next tick.
Ready tasks deferred by a cap count as ``queued task`` work too, from the tick that deferred
them to the tick that no longer does: otherwise the watcher would see no work in the gap
between one task finishing and the next being claimed, and flip the relay under the queue.

At start-up, ``running`` tasks whose claim lapsed (their owner process died) go back to
``ready`` with a ``requeued`` event before the first tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from common.clock import Clock, wait_with_timeout
from gateway.config import Config
from gateway.core.activity import Activity
from gateway.kanban.dispatch import DispatchResult, dispatch_once
from gateway.kanban.store import Task, TaskStore

log = logging.getLogger("gateway.kanban")


@dataclass(frozen=True)
class Outcome:
    """How a task ended: ``status`` done | failed | blocked | interrupted; ``result`` and
    ``error`` text. ``interrupted`` (shutting down mid-turn) leaves the task ``running`` in
    state.db, so the next start requeues it and the turn resumes at its durable step."""

    status: str
    result: str | None = None
    error: str | None = None


Execute = Callable[[Task], Awaitable[Outcome]]
"""Runs one claimed task (its turn) and says how it ended; raising counts as failed."""


class Board:
    """Dispatcher loop plus the tasks it spawned. ``await run()`` in a task; ``kick()`` on
    events; ``submit()`` creates a task and kicks; ``wait(task_id)`` awaits its outcome."""

    def __init__(
        self,
        store: TaskStore,
        *,
        config: Config,
        clock: Clock,
        activity: Activity,
        execute: Execute,
        on_blocked: Callable[[int, str], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.activity = activity
        self.execute = execute
        self.on_blocked = on_blocked  # (task id, error), after a tick blocked it
        self.accepting = True
        self._kick = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._waiters: dict[int, asyncio.Future[Outcome]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._queued: contextlib.ExitStack | None = None  # holds "queued task" work

    @property
    def running(self) -> int:
        """Tasks this process is running now."""
        return len(self._running)

    def kick(self) -> None:
        """Something changed (task created or finished, notify): tick soon."""
        self._kick.set()

    async def submit(self, **fields: Any) -> Task | None:
        """Create a task (``TaskStore.create`` keywords; ``now`` filled in) and kick; None if
        its ``(source, ref)`` exists already."""
        fields.setdefault("now", self.clock.wall())
        task = await self.store.create(**fields)
        if task is not None:
            self.kick()
        return task

    def wait(self, task_id: int) -> asyncio.Future[Outcome]:
        """A future resolved with the task's outcome once it ends (or is blocked)."""
        fut = self._waiters.get(task_id)
        if fut is None:
            fut = self._waiters[task_id] = asyncio.get_running_loop().create_future()
        return fut

    async def wait_idle(self) -> None:
        """Return once no task of this process is running."""
        await self._idle.wait()

    async def tick(self, *, dry_run: bool = False) -> DispatchResult:
        """One ``dispatch_once`` with the configured caps and known profiles."""
        c = self.config
        result = await dispatch_once(
            self.store,
            spawn_fn=self._spawn,
            dry_run=dry_run,
            max_in_progress=c.kanban_max_in_progress,
            max_in_progress_per_profile=c.kanban_max_in_progress_per_profile,
            default_assignee=c.kanban_default_assignee,
            profiles=list(c.profiles),
            now=self.clock.wall(),
        )
        if not dry_run:
            for task_id, _, error in result.blocked:
                self._resolve(task_id, Outcome("blocked", error=error))
                if self.on_blocked is not None:
                    await self.on_blocked(task_id, error)
            self._hold_queued(bool(result.skipped_per_profile_capped or result.skipped_global_cap))
        return result

    def _hold_queued(self, waiting: bool) -> None:
        """Count deferred ready tasks as work for the idle watcher while ``waiting``."""
        if waiting and self._queued is None:
            self._queued = contextlib.ExitStack()
            self._queued.enter_context(self.activity.work("queued task"))
        elif not waiting and self._queued is not None:
            self._queued.close()
            self._queued = None

    async def run(self) -> None:
        """Requeue lapsed claims, then tick on every kick until cancelled."""
        requeued = await self.store.requeue_lapsed(self.clock.wall())
        if requeued:
            log.info(
                "requeued %d task(s) whose claim lapsed: %s", len(requeued), ", ".join(map(str, requeued))
            )
        self.kick()
        while True:
            await self._kick.wait()
            self._kick.clear()
            if not self.accepting:
                continue
            try:
                result = await self.tick()
            except Exception:
                log.exception("dispatch tick failed; retrying on the next event")
                continue
            if result.spawned:
                self.kick()  # claim more if caps allow (tasks created during the tick)

    def _spawn(self, task: Task) -> None:
        self._idle.clear()
        # Counted as work from the claim on (not from when the asyncio task first runs), so
        # the watcher never sees a gap between a claim and its turn.
        work = contextlib.ExitStack()
        work.enter_context(self.activity.work("task"))
        self._running[task.id] = asyncio.create_task(self._run_task(task, work), name=f"task-{task.id}")

    async def _run_task(self, task: Task, work: contextlib.ExitStack) -> None:
        outcome = Outcome("failed", error="interrupted")
        try:
            with work:
                try:
                    outcome = await self.execute(task)
                except Exception as exc:
                    log.exception("task %d crashed", task.id)
                    outcome = Outcome("failed", error=f"crashed: {exc!r}")
                if outcome.status == "interrupted":
                    log.info("task %d interrupted (%s); it resumes at the next start", task.id, outcome.error)
                    return
                status = "done" if outcome.status == "done" else "failed"
                await self.store.finish(
                    task.id, status, self.clock.wall(), result=outcome.result, error=outcome.error
                )
                log.info("task %d %s%s", task.id, status, f": {outcome.error}" if outcome.error else "")
        finally:
            self._running.pop(task.id, None)
            if not self._running:
                self._idle.set()
            self._resolve(task.id, outcome)
            self.kick()

    def _resolve(self, task_id: int, outcome: Outcome) -> None:
        fut = self._waiters.pop(task_id, None)
        if fut is not None and not fut.done():
            fut.set_result(outcome)

    async def stop(self, timeout_s: float) -> None:
        """Claim nothing more; let running tasks finish for up to ``timeout_s`` seconds (of the
        injected clock). Tasks
        still running stay ``running`` in state.db and are requeued at the next start."""
        self.accepting = False
        self._hold_queued(False)
        with contextlib.suppress(TimeoutError):
            await wait_with_timeout(self.clock, self.wait_idle(), timeout_s)
        for t in list(self._running.values()):
            t.cancel()
        for t in list(self._running.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
