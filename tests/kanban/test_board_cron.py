"""Cron occurrences go through the board in the sidecar: a task on the job's profile, the
ledger row linked from the task, and an unknown profile blocked without stopping anything."""

from __future__ import annotations

import json
from pathlib import Path

from common.clock import FakeClock
from gateway.config import load_config
from gateway.cron.jobs import create_job
from gateway.runtime.sidecar import Sidecar
from tests.fake_llm import FakeLLM, provider_config


async def _sidecar(tmp_path: Path, llm: FakeLLM) -> tuple[Sidecar, FakeClock]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(provider_config(llm.base_url) + "profiles: {alpha: {}}\n")
    clock = FakeClock()
    sc = Sidecar(load_config(home, {}), port=0, clock=clock, env={})
    await sc.start()
    return sc, clock


async def test_a_due_occurrence_runs_as_a_task_on_the_jobs_profile(tmp_path: Path, llm: FakeLLM) -> None:
    sc, clock = await _sidecar(tmp_path, llm)
    try:
        job = create_job(
            sc.config, {"schedule": "every 10m", "prompt": "tick", "profile": "alpha"}, clock.wall()
        )
        await sc.cron_store.add(job)
        sc.on_poke()
        await clock.advance(600)
        await sc.scheduler.wait_quiet()
        [task] = await sc.tasks.all()
        assert (task.source, task.assignee, task.status) == ("cron", "alpha", "done")
        assert task.ref == f"cron:{job.id}@{job.next_run_at!r}"
        [run] = await sc.cron_store.history(job.id)
        assert run["status"] == "succeeded"
        assert json.loads(task.result or "") == {"run_id": run["id"], "status": "succeeded"}
        kinds = [e["kind"] for e in await sc.tasks.events(task.id)]
        assert kinds == ["created", "claimed", "finished"]
    finally:
        await sc.shutdown()


async def test_an_unknown_profile_blocks_the_task_and_fails_the_occurrence(
    tmp_path: Path, llm: FakeLLM
) -> None:
    """The job's profile left config.yaml: the task is blocked with an error naming it and
    the known ones, the ledger row says failed, no provider call is made, and the sidecar
    still serves the next job."""
    sc, clock = await _sidecar(tmp_path, llm)
    try:
        job = create_job(sc.config, {"schedule": "@daily", "prompt": "p", "profile": "alpha"}, clock.wall())
        await sc.cron_store.add(job)
        del sc.config.profiles["alpha"]
        row = await sc.run_job_now(job.id)
        assert row is not None
        assert row["status"] == "failed"
        assert row["error"] == "unknown profile 'alpha' (known profiles: default)"
        [task] = await sc.tasks.all()
        assert (task.status, task.error) == ("blocked", row["error"])
        assert llm.requests == []
        other = create_job(sc.config, {"schedule": "@daily", "prompt": "still here"}, clock.wall())
        await sc.cron_store.add(other)
        ok = await sc.run_job_now(other.id)
        assert ok is not None
        assert ok["status"] == "succeeded"
    finally:
        await sc.shutdown()
