"""What a claimed task does, by source:

- ``inbound`` (ref ``inbox:<id>``): the inbox item's turn on the task's profile, answer sent
  back to the chat;
- ``cron`` (ref ``cron:<job id>@<scheduled_for>``): the occurrence through ``run_occurrence``
  (drift guard, budget, routing, ledger); ``done`` when the ledger row says succeeded;
- ``manual`` (``kanban create``): one agent turn on the assignee's profile with the title (and
  body) as the prompt; the answer is kept in the task's ``result``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common.errors import ConfigError
from gateway.agent.provider import ProviderError, complete
from gateway.agent.resolve import resolve
from gateway.cron.runner import CronContext, run_occurrence
from gateway.inbox.store import InboxItem, InboxStore
from gateway.kanban.board import Outcome
from gateway.kanban.sources import parse_cron_ref, parse_inbox_ref
from gateway.kanban.store import Task


@dataclass
class TaskExecutor:
    """The board's ``execute``: routes a claimed task to its turn and returns its Outcome.

    ``inbound_turn(item, profile)`` is the inbox worker's turn (its reply path differs between
    the sidecar and an in-process ``kanban dispatch``).
    """

    cron: CronContext
    inbox: InboxStore
    inbound_turn: Callable[[InboxItem, str | None], Awaitable[Outcome]]

    async def __call__(self, task: Task) -> Outcome:
        if task.source == "inbound":
            return await self._inbound(task)
        if task.source == "cron":
            return await self._cron(task)
        return await self._manual(task)

    async def _inbound(self, task: Task) -> Outcome:
        item_id = parse_inbox_ref(task.ref)
        item = None if item_id is None else await self.inbox.get(item_id)
        if item is None:
            return Outcome("failed", error=f"inbox item for {task.ref!r} not found")
        return await self.inbound_turn(item, task.assignee)

    async def _cron(self, task: Task) -> Outcome:
        try:
            job_id, scheduled_for = parse_cron_ref(task.ref or "")
        except ValueError as exc:
            return Outcome("failed", error=str(exc))
        store = self.cron.store
        job = await store.get(job_id)
        if job is None:
            return Outcome("failed", error=f"cron job {job_id} was removed")
        run_id = await run_occurrence(self.cron, job, scheduled_for)
        if run_id is None:
            return Outcome("failed", error="occurrence already claimed by another run")
        row = await store.run_row(run_id)
        return Outcome(
            "done" if row["status"] == "succeeded" else "failed",
            result=json.dumps({"run_id": run_id, "status": row["status"]}),
            error=row["error"],
        )

    async def _manual(self, task: Task) -> Outcome:
        prompt = task.title + (f"\n\n{task.body}" if task.body else "")
        try:
            target = resolve(self.cron.config, task.assignee)
            answer = await complete(
                self.cron.http, target, [{"role": "user", "content": prompt}], env=self.cron.env
            )
        except (ConfigError, ProviderError) as exc:
            return Outcome("failed", error=str(exc))
        return Outcome("done", result=answer.text)
