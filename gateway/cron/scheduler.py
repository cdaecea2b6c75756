"""The cron scheduler's async shell: sleep until the earliest due time or a re-plan, then plan
(``plan_due``), record misses, claim and run (``run_occurrence``). No fixed poll.

Runs happen in background tasks, at most ``max_concurrent`` at once, each counted as work for
the idle watcher. A job still running is not started again (``skipped_overlap``); ``catch_up:
all`` runs its occurrences one at a time, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from common.clock import wait_for_event
from common.sqlite import run_tx
from gateway.core.activity import Activity
from gateway.cron.runner import CronContext, run_occurrence
from gateway.cron.schedule import next_fire, parse_schedule, timezone
from gateway.cron.store import Job
from gateway.cron.tick import OVERLAP_ERROR, plan_tick

log = logging.getLogger("gateway.cron")


def first_run_at(job: Job) -> float | None:
    """The first fire time of a new job (strictly after its creation)."""
    sched = parse_schedule(job.schedule, job.created_at)
    return next_fire(sched, anchor=job.created_at, after=job.created_at, tz=timezone(job.tz))


class CronScheduler:
    """Owns the cron loop. ``replan()`` wakes it (job changed, poke, resume)."""

    def __init__(
        self,
        ctx: CronContext,
        *,
        activity: Activity | None = None,
        max_concurrent: int = 4,
        on_due: Callable[[], None] | None = None,
        run_fn: Callable[[CronContext, Job, float], Awaitable[int | None]] = run_occurrence,
    ) -> None:
        self.ctx = ctx
        self.run_fn = run_fn  # one occurrence: claim, turn, ledger (a no-op turn in bench/)
        self.activity = activity
        self.on_due = on_due  # called before running due work (wakes a dormant sidecar)
        self._sem = asyncio.Semaphore(max_concurrent)
        self._kick = asyncio.Event()
        self.sleeping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.next_due: float | None = None
        self.fired = 0
        self.ticks = 0  # loop wake-ups that planned (no fixed poll: 0 while nothing is due)
        self.on_planned: Callable[[], None] | None = None  # next_due may have changed
        self._finished = asyncio.Event()

    def replan(self) -> None:
        self._kick.set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def wait_quiet(self) -> None:
        """Return once the loop is asleep with nothing due now and no run task left."""
        while True:
            if (
                self.sleeping.is_set()
                and not self._tasks
                and (self.next_due is None or self.next_due > self.ctx.clock.wall())
            ):
                return
            self._finished.clear()
            await self._finished.wait()

    async def run(self) -> None:
        store = self.ctx.store
        failed = await store.fail_interrupted(self.ctx.clock.wall())
        if failed:
            log.info("cron: %d interrupted run(s) marked failed", failed)
        try:
            while True:
                self._kick.clear()
                self.sleeping.clear()
                await self.tick()
                await self._sleep()
        finally:
            for t in list(self._tasks):
                t.cancel()

    async def _sleep(self) -> None:
        self.sleeping.set()
        self._finished.set()  # wakes wait_quiet
        if self.next_due is None:
            await self._kick.wait()
            return
        # A loop whose timers have millisecond resolution (uvloop's) may wake up to 1 ms
        # before the deadline: sleep again until it is due, never tick (and read) early.
        while (delay := self.next_due - self.ctx.clock.wall()) > 0 and not self._kick.is_set():
            await wait_for_event(self.ctx.clock, self._kick, delay)

    async def tick(self) -> None:
        """Plan every due job once (record misses, start runs), then find the next due time.

        One transaction in one hop to the database thread (``gateway.cron.tick``). Reads only
        due jobs and ``MIN(next_run_at)`` through an index: a tick costs the same with 10 jobs
        or 10,000. Committed without an fsync (``run_tx(fsync=False)``): all it writes (jobs
        moved on, misses, overlaps, pauses) is planned again from the jobs after a power loss
        took it, and the first thing that acts on it, an occurrence's claim, is a synced
        commit that makes the tick durable too. One fsync less per occurrence (issue #16).
        """
        self.ticks += 1
        now = self.ctx.clock.wall()
        plan = await run_tx(self.ctx.store.db, lambda conn: plan_tick(conn, now), fsync=False)
        for job_id, error in plan.paused:
            log.warning("cron job %s paused: bad schedule or timezone: %s", job_id, error)
        for job_id, count, catch_up in plan.missed:
            log.info("cron job %s: %d occurrence(s) missed (catch_up %s)", job_id, count, catch_up)
        for job_id in plan.skipped:
            log.info("cron job %s skipped: previous run still running (overlap)", job_id)
        if plan.start and self.on_due is not None:
            self.on_due()
        for job, runs in plan.start:
            self._start(job, runs)
        self.next_due = plan.next_due
        if self.on_planned is not None:
            self.on_planned()

    def _start(self, job: Job, occurrences: list[float]) -> None:
        task = asyncio.create_task(self._run_in_order(job, occurrences), name=f"cron-{job.id}")
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._finished.set()

        task.add_done_callback(done)

    async def _run_in_order(self, job: Job, occurrences: list[float]) -> None:
        store, clock = self.ctx.store, self.ctx.clock
        for i, t in enumerate(occurrences):
            if i and await store.running(job.id):
                await store.record(job.id, t, "skipped_overlap", clock.wall(), error=OVERLAP_ERROR)
                log.info("cron job %s skipped: previous run still running", job.id)
                continue
            async with self._sem:
                ctx = contextlib.nullcontext() if self.activity is None else self.activity.work("job")
                with ctx:
                    try:
                        if await self.run_fn(self.ctx, job, t) is not None:
                            self.fired += 1
                    except Exception:
                        log.exception("cron job %s crashed its run", job.id)
