"""What comes in, and where it goes: ``Inbound`` admits the relay's inbound frames into the
inbox (each one a board task, in the same transaction), answers the user of an inbound task the
board blocked (an unknown profile), and is the bridge by which a due cron occurrence becomes a
board task (the scheduler's ``run_fn``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from common.clock import Clock
from common.tasks import TaskSet
from gateway.agent.spend import TurnReport
from gateway.config import Config
from gateway.core.activity import Activity
from gateway.cron.runner import CronContext
from gateway.cron.store import Job
from gateway.inbox.store import InboxStore
from gateway.kanban.board import Board
from gateway.kanban.sources import add_inbound_tasks, cron_ref, parse_inbox_ref
from gateway.kanban.store import TaskStore
from gateway.metrics import Metrics
from gateway.ops.recorder import OpsRecorder
from gateway.runtime.inbox_worker import InboxWorker

log = logging.getLogger("gateway.sidecar")


def bot_id_for(config: Config, platform: str) -> str | None:
    """The ``botId`` a reply on ``platform`` is sent from: the first configured identity."""
    for p, bot_id in config.relay_identities:
        if p == platform:
            return bot_id
    return None


class Inbound:
    """Built once the stores, the worker and the board exist; ``background`` is the
    composition root's task set (a refusal runs there and is awaited at shutdown)."""

    def __init__(
        self,
        *,
        inbox: InboxStore,
        tasks: TaskStore,
        board: Callable[[], Board],
        worker: InboxWorker,
        ops: OpsRecorder,
        metrics: Metrics,
        activity: Activity,
        clock: Clock,
        background: TaskSet,
    ) -> None:
        self.inbox = inbox
        self.tasks = tasks
        self._board = board
        self.worker = worker
        self.ops = ops
        self.metrics = metrics
        self.activity = activity
        self.clock = clock
        self.background = background

    @property
    def board(self) -> Board:
        return self._board()

    async def admit(self, frames: list[dict[str, Any]]) -> None:
        """The transport's ``on_inbound``: persist the batch (it is acked once this returns)."""
        now = self.clock.wall()
        admission = await self.inbox.admit(
            frames, now, in_tx=lambda conn, items: add_inbound_tasks(conn, items, now)
        )
        new, dupes = admission.new, admission.duplicates
        self.ops.on_inbound_persisted()  # the transport acks this batch next (wake latency)
        for rejected in admission.rejected:
            self.metrics.rejected.labels(reason=rejected.reason).inc()
            log.warning(
                "inbound frame quarantined (bufferId %r, %s): %s",
                rejected.buffer_id,
                rejected.reason,
                rejected.error,
            )
        if dupes:
            self.metrics.duplicates.inc(dupes)
        if new:
            self.metrics.inbound.inc(len(new))
            log.info(
                "admitted %d inbound message(s)%s",
                len(new),
                f" ({dupes} duplicate(s) re-acked)" if dupes else "",
            )
        if new or dupes:
            # A duplicate kicks too: the admit that stored it may have been cancelled (its
            # socket dropped) after the commit and before this kick, leaving its board task
            # queued with nothing to run it until the next message (found by python -m sim).
            self.activity.inbound()
            self.board.kick()

    async def interrupt(self, frame: dict[str, Any]) -> None:
        """The transport's ``on_interrupt``."""
        log.info("interrupt_inbound for session %r", frame.get("session_key"))

    async def task_blocked(self, task_id: int, error: str) -> None:
        """The board's ``on_blocked``: an inbound task blocked by an unknown profile; the user
        hears why (in the background, counted as work), and its inbox row is closed."""
        task = await self.tasks.get(task_id)
        item_id = None if task is None else parse_inbox_ref(task.ref)  # None: not inbound
        item = None if item_id is None else await self.inbox.get(item_id)
        if item is None:
            return

        async def refuse() -> None:
            with self.activity.work("turn"):
                await self.worker.refuse(item, error)

        self.background.spawn(refuse())

    async def run_cron_task(self, ctx: CronContext, job: Job, scheduled_for: float) -> int | None:
        """The scheduler's ``run_fn``: the occurrence becomes a board task on the job's profile
        and runs when the caps allow; returns its ledger run id (None: another process has it).
        A task blocked by an unknown profile is recorded on the ledger as failed."""
        task = await self.board.submit(
            title=f"cron {job.name or job.id}",
            body=job.prompt,
            assignee=job.profile or "default",
            source="cron",
            ref=cron_ref(job.id, scheduled_for),
        )
        if task is None:
            return None
        outcome = await self.board.wait(task.id)
        profile = job.profile or "default"
        if outcome.status == "blocked":
            self.metrics.observe_turn(TurnReport("cron", profile, "blocked"))
            return await ctx.store.record(
                job.id, scheduled_for, "failed", self.clock.wall(), error=outcome.error
            )
        run_id: int | None = json.loads(outcome.result)["run_id"] if outcome.result else None
        row = None if run_id is None else await ctx.store.run_row(run_id)
        if row is not None:
            self.metrics.observe_turn(
                TurnReport("cron", profile, str(row["status"]), row.get("model"), row.get("cost_usd"))
            )
        return run_id
