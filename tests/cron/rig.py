"""A cron scheduler on a FakeClock with the real store (state.db) and a fake provider."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from common.clock import FakeClock
from gateway.config import Config, load_config
from gateway.cron.jobs import create_job
from gateway.cron.runner import CronContext
from gateway.cron.scheduler import CronScheduler
from gateway.cron.store import CronStore, Job
from gateway.statedb import open_state_db
from gateway.telemetry.writer import TelemetryWriter
from tests.fake_llm import FakeLLM


def fake_config(home: Path, llm: FakeLLM, extra: str = "") -> Config:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(
        "model: {default: m1, provider: a}\n"
        f"providers: {{a: {{base_url: '{llm.base_url}'}}, b: {{base_url: '{llm.base_url}'}}}}\n" + extra
    )
    return load_config(home, {})


class CronRig:
    def __init__(self, config: Config, clock: FakeClock) -> None:
        self.config = config
        self.clock = clock
        self.delivered: list[tuple[str, str, str]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self, run_loop: bool = True) -> CronRig:
        self.db = await open_state_db(self.config.state_db)
        self.store = CronStore(self.db)
        self.http = aiohttp.ClientSession()
        self.telemetry = TelemetryWriter(self.db, clock=self.clock)
        self.telemetry.start()
        self.ctx = CronContext(
            config=self.config,
            store=self.store,
            clock=self.clock,
            http=self.http,
            env={},
            deliver=self._deliver,
            telemetry=self.telemetry,
        )
        self.sched = CronScheduler(self.ctx, max_concurrent=4)
        if run_loop:
            self.task = asyncio.create_task(self.sched.run())
            await self.quiet()
        return self

    async def _deliver(self, platform: str, chat_id: str, text: str) -> None:
        self.delivered.append((platform, chat_id, text))

    async def add(self, **fields: Any) -> Job:
        job = create_job(self.config, fields, self.clock.wall())
        await self.store.add(job)
        if self.task is not None:
            self.sched.replan()
            await self.quiet()
        return job

    async def quiet(self) -> None:
        await self.clock.settle()
        await asyncio.wait_for(self.sched.wait_quiet(), 10)

    async def statuses(self, job_id: str) -> list[str]:
        rows = await self.store.history(job_id, limit=100_000)
        return [r["status"] for r in reversed(rows)]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        await self.telemetry.aclose()
        await self.http.close()
        await self.db.close()
