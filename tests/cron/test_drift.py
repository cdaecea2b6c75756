"""Drift guard and daily budget against a fake provider that counts requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.clock import FakeClock
from gateway.cron.drift import Axes, check_drift
from gateway.cron.runner import run_occurrence
from gateway.cron.store import Job
from tests.cron.rig import CronRig, fake_config
from tests.fake_llm import FakeLLM


@pytest.fixture
async def rig(tmp_path: Path, llm: FakeLLM) -> AsyncIterator[CronRig]:
    r = await CronRig(fake_config(tmp_path / "home", llm), FakeClock()).start(run_loop=False)
    yield r
    await r.close()


class Runs:
    """Fire occurrences of one job through the real run path, one second apart."""

    def __init__(self, rig: CronRig, job: Job) -> None:
        self.rig, self.job, self.n = rig, job, 0

    async def fire(self) -> str:
        self.n += 1
        run_id = await run_occurrence(self.rig.ctx, self.job, self.rig.clock.wall() + self.n)
        assert run_id is not None
        return (await self.rig.store.run_row(run_id))["status"]


async def _job(rig: CronRig, **fields: object) -> Runs:
    job = await rig.add(schedule="every 1h", prompt="p", deliver_to="telegram:42", **fields)
    return Runs(rig, job)


async def test_drift_snapshot_matches_runs(rig: CronRig, llm: FakeLLM) -> None:
    """Unchanged resolution: the job runs on its snapshot and delivers the answer."""
    runs = await _job(rig)
    assert (runs.job.provider_snapshot, runs.job.model_snapshot) == ("a", "m1")
    assert await runs.fire() == "succeeded"
    assert len(llm.requests) == 1
    assert rig.delivered == [("telegram", "42", "echo: p")]


async def test_drift_provider_change_blocks_with_alert_and_no_request(rig: CronRig, llm: FakeLLM) -> None:
    """Provider a -> b: blocked_drift, 0 requests, alert names both, says spend, shows the pin."""
    runs = await _job(rig)
    rig.config.model_provider = "b"
    rig.config.profiles["default"] = rig.config.profiles["default"].__class__("default", None, None)
    assert await runs.fire() == "blocked_drift"
    assert llm.requests == []
    [(platform, chat, text)] = rig.delivered
    assert (platform, chat) == ("telegram", "42")
    assert "a/m1" in text
    assert "b/m1" in text
    assert "spend" in text
    assert f"hermes-sidecar cron update {runs.job.id} --provider a --model m1" in text
    episodes = await rig.store.drift_episodes()
    assert [e["job_id"] for e in episodes] == [runs.job.id]


async def test_drift_model_change_on_same_provider_blocks(rig: CronRig, llm: FakeLLM) -> None:
    """Model m1 -> m2 on provider a: blocked, no request."""
    runs = await _job(rig)
    rig.config.model_default = "m2"
    assert await runs.fire() == "blocked_drift"
    assert llm.requests == []
    assert "m2" in rig.delivered[0][2]


async def test_drift_two_ticks_one_alert_heal_then_drift_again_new_alert(rig: CronRig, llm: FakeLLM) -> None:
    """One alert per episode; healing closes it; a new drift opens a new one."""
    runs = await _job(rig)
    rig.config.model_default = "m2"
    assert [await runs.fire(), await runs.fire()] == ["blocked_drift", "blocked_drift"]
    assert len(rig.delivered) == 1
    rig.config.model_default = "m1"
    assert await runs.fire() == "succeeded"
    assert await rig.store.drift_episodes() == []
    rig.config.model_default = "m3"
    assert await runs.fire() == "blocked_drift"
    alerts = [d for d in rig.delivered if "blocked" in d[2]]
    assert len(alerts) == 2
    assert "m3" in alerts[1][2]
    assert len(llm.requests) == 1


async def test_drift_pinned_job_runs_and_one_axis_pin_guards_the_other(rig: CronRig, llm: FakeLLM) -> None:
    """Pinned on both axes -> runs after any default change; pinned on the model only -> the
    provider axis is still guarded."""
    both = await _job(rig, provider="a", model="m1")
    assert (both.job.provider_snapshot, both.job.model_snapshot) == (None, None)
    model_only = await _job(rig, model="m1")
    assert (model_only.job.provider_snapshot, model_only.job.model_snapshot) == ("a", None)
    rig.config.model_provider = "b"
    rig.config.model_default = "m9"
    assert await both.fire() == "succeeded"
    assert llm.requests[-1]["model"] == "m1"
    assert await model_only.fire() == "blocked_drift"
    assert len(llm.requests) == 1


async def test_drift_job_without_snapshot_runs(tmp_path: Path, llm: FakeLLM) -> None:
    """A job created before any provider was configured has no snapshot and is not guarded."""
    from gateway.config import load_config

    home = tmp_path / "bare"
    home.mkdir()
    r = await CronRig(load_config(home, {}), FakeClock()).start(run_loop=False)
    try:
        job = await r.add(schedule="every 1h", prompt="p")
        assert (job.provider_snapshot, job.model_snapshot) == (None, None)
        r.config = r.ctx.config = fake_config(home, llm)
        assert await Runs(r, job).fire() == "succeeded"
    finally:
        await r.close()


async def test_drift_use_snapshot_and_follow_default_policies(rig: CronRig, llm: FakeLLM) -> None:
    """use_snapshot runs on the approved model; follow_default runs on the new default."""
    runs = await _job(rig)
    rig.config.model_default = "m2"
    rig.config.drift_policy = "use_snapshot"
    assert await runs.fire() == "succeeded"
    assert llm.requests[-1]["model"] == "m1"
    rig.config.drift_policy = "follow_default"
    assert await runs.fire() == "succeeded"
    assert llm.requests[-1]["model"] == "m2"


async def test_budget_reached_blocks_with_no_request_and_one_alert_per_day(
    rig: CronRig, llm: FakeLLM
) -> None:
    """max_daily_usd 0.0015 at $0.001 a call: two runs, then blocked_budget with 0 requests."""
    rig.config.cron_max_daily_usd = 0.0015
    runs = await _job(rig)
    assert [await runs.fire() for _ in range(4)] == [
        "succeeded",
        "succeeded",
        "blocked_budget",
        "blocked_budget",
    ]
    assert len(llm.requests) == 2
    budget_alerts = [d for d in rig.delivered if "budget" in d[2]]
    assert len(budget_alerts) == 1


def test_check_drift_resolution_error_counts_as_drift() -> None:
    """A snapshot of 'a' against an unresolvable provider (None) is drift under fail_closed."""
    d = check_drift(
        job_id="j",
        pinned=Axes(None, None),
        snapshot=Axes("a", "m"),
        current=Axes(None, "m"),
        policy="fail_closed",
    )
    assert d.blocked
    assert d.message is not None
    assert "None/m" in d.message


async def test_missing_skill_is_a_recorded_failure_and_skills_reach_the_prompt(
    rig: CronRig, llm: FakeLLM
) -> None:
    """A missing SKILL.md fails the run with an error naming it (no call); a present one is sent."""
    runs = await _job(rig, skills=["digest"])
    assert await runs.fire() == "failed"
    rows = await rig.store.history(runs.job.id)
    assert "skill not found: digest" in rows[0]["error"]
    assert llm.requests == []
    skill = rig.config.home / "skills" / "digest" / "SKILL.md"
    skill.parent.mkdir(parents=True)
    skill.write_text("Summarise in three bullets.")
    assert await runs.fire() == "succeeded"
    assert llm.requests[0]["messages"][0] == {"role": "system", "content": "Summarise in three bullets."}


async def test_routing_sends_an_18h_cron_turn_to_the_strong_model_and_records_it(
    tmp_path: Path, llm: FakeLLM
) -> None:
    """routing.enabled with a strong model and provider: an unpinned job at 18:00 UTC runs on
    the strong model, the ledger keeps the reason, and each skill gets a telemetry row."""
    from datetime import UTC, datetime

    config = fake_config(
        tmp_path / "home", llm, "routing: {enabled: true, strong_model: big, strong_provider: b}\n"
    )
    at_18 = datetime(2026, 11, 23, 18, 0, tzinfo=UTC).timestamp()
    r = await CronRig(config, FakeClock(wall=at_18)).start(run_loop=False)
    try:
        skill = config.home / "skills" / "s1" / "SKILL.md"
        skill.parent.mkdir(parents=True)
        skill.write_text("be brief")
        runs = await _job(r, skills=["s1"])
        assert await runs.fire() == "succeeded"
        assert llm.requests[-1]["model"] == "big"
        [row] = await r.store.history(runs.job.id)
        assert (row["provider"], row["model"]) == ("b", "big")
        assert "strong model" in row["routing_reason"]
        pinned = await _job(r, model="m1")
        assert await pinned.fire() == "succeeded"
        assert llm.requests[-1]["model"] == "m1"  # a pinned model is never routed
        await r.telemetry.flush()
        async with r.db.execute(
            "SELECT skill_name, model, success, end_reason FROM skill_invocations"
        ) as cur:
            assert [tuple(x) for x in await cur.fetchall()] == [("s1", "big", 1, "succeeded")]
    finally:
        await r.close()


async def test_scaffolding_failures_are_recorded_with_null_success(rig: CronRig, llm: FakeLLM) -> None:
    """A missing skill and a drift block leave telemetry rows whose success is NULL."""
    runs = await _job(rig, skills=["nope"])
    assert await runs.fire() == "failed"
    rig.config.model_default = "m2"
    assert await runs.fire() == "blocked_drift"
    await rig.telemetry.flush()
    async with rig.db.execute("SELECT success, end_reason FROM skill_invocations ORDER BY id") as cur:
        rows = [tuple(x) for x in await cur.fetchall()]
    assert rows == [(None, "skill_not_found"), (None, "blocked_drift")]
