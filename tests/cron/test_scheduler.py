"""The scheduler on a FakeClock: suspend and catch-up, overlap, two schedulers, one-shots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.clock import FakeClock
from gateway.core.resume import ResumeDetector
from tests.cron.rig import CronRig, fake_config
from tests.fake_llm import FakeLLM

HOUR = 3600.0


@pytest.fixture
async def rig(tmp_path: Path, llm: FakeLLM) -> AsyncIterator[CronRig]:
    r = await CronRig(fake_config(tmp_path / "home", llm), FakeClock()).start()
    yield r
    await r.close()


async def test_scheduler_fires_on_time_and_sleeps_between(rig: CronRig, llm: FakeLLM) -> None:
    """An hourly job fires at each hour exactly; nothing is scheduled but the next due time."""
    job = await rig.add(schedule="every 1h", prompt="report")
    assert rig.sched.next_due == job.created_at + HOUR
    await rig.clock.advance(HOUR - 1)
    await rig.quiet()
    assert llm.requests == []
    await rig.clock.advance(1)
    await rig.quiet()
    assert await rig.statuses(job.id) == ["succeeded"]
    assert rig.clock.pending == [pytest.approx(HOUR)]  # one sleeper: the next due time


@pytest.mark.parametrize(
    "how", ["wall-jumps-monotonic-frozen", "both-jump"], ids=["wall-jumps-monotonic-frozen", "both-jump"]
)
@pytest.mark.parametrize(
    ("catch_up", "expected_runs", "expected_missed"),
    [("latest", 1, 5), ("all", 6, 0), ("skip", 0, 6)],
    ids=["latest", "all", "skip"],
)
async def test_scheduler_6h_suspend_catch_up(
    rig: CronRig, llm: FakeLLM, how: str, catch_up: str, expected_runs: int, expected_missed: int
) -> None:
    """After a 6.5 h suspend an hourly job runs per its catch-up policy; the rest are missed."""
    job = await rig.add(schedule="every 1h", prompt="p", catch_up=catch_up)
    detector = ResumeDetector(rig.clock.wall(), rig.clock.monotonic())
    if how == "both-jump":
        await rig.clock.jump(6.5 * HOUR)  # the sleeper wakes late
    else:
        rig.clock.jump_wall(6.5 * HOUR)  # a suspended machine: monotonic did not count it
        assert detector.check(rig.clock.wall(), rig.clock.monotonic()) == 6.5 * HOUR
        rig.sched.replan()  # what the sidecar does on a detected resume
    await rig.quiet()
    statuses = await rig.statuses(job.id)
    assert statuses.count("succeeded") == expected_runs
    assert statuses.count("missed") == expected_missed
    assert len(statuses) == 6  # every occurrence leaves a row
    assert len(llm.requests) == expected_runs
    assert rig.sched.next_due == job.created_at + 7 * HOUR


async def test_scheduler_misfire_grace_marks_late_occurrences_missed(rig: CronRig) -> None:
    """With a 2 h grace, only occurrences within 2 h of now may run after a suspend."""
    job = await rig.add(schedule="every 1h", prompt="p", catch_up="all", misfire_grace_seconds=2 * HOUR)
    await rig.clock.jump(6.5 * HOUR)
    await rig.quiet()
    assert await rig.statuses(job.id) == ["missed"] * 4 + ["succeeded"] * 2


async def test_scheduler_overlap_records_skipped_overlap(rig: CronRig, llm: FakeLLM) -> None:
    """A job still running at its next occurrence is not started again."""
    job = await rig.add(schedule="every 1m", prompt="slow")
    llm.hold = asyncio.Event()
    await rig.clock.advance(60)
    await llm.wait_requests(1)
    await rig.clock.advance(60)
    await rig.clock.settle()
    await asyncio.wait_for(rig.sched.sleeping.wait(), 10)  # the second tick has planned
    llm.hold.set()
    await rig.quiet()
    assert sorted(await rig.statuses(job.id)) == ["skipped_overlap", "succeeded"]
    assert len(llm.requests) == 1


async def test_two_schedulers_on_one_db_never_double_fire(tmp_path: Path, llm: FakeLLM) -> None:
    """Two schedulers share state.db for 200 minutely occurrences: each runs exactly once."""
    clock = FakeClock()
    config = fake_config(tmp_path / "home", llm)
    a = await CronRig(config, clock).start()
    b = await CronRig(config, clock).start()
    try:
        job = await a.add(schedule="every 1m", prompt="p")
        b.sched.replan()
        await b.quiet()
        for _ in range(200):
            await clock.advance(60)
            await a.quiet()
            await b.quiet()
        statuses = await a.statuses(job.id)
        assert statuses == ["succeeded"] * 200
        assert len(llm.requests) == 200
        assert a.sched.fired + b.sched.fired == 200
    finally:
        await a.close()
        await b.close()


async def test_one_shot_runs_once_and_retires(rig: CronRig, llm: FakeLLM) -> None:
    """'in 30m' fires once at +30 min and the job is disabled afterwards."""
    job = await rig.add(schedule="in 30m", prompt="once")
    await rig.clock.advance(1800)
    await rig.quiet()
    await rig.clock.advance(6 * HOUR)
    await rig.quiet()
    assert await rig.statuses(job.id) == ["succeeded"]
    stored = await rig.store.get(job.id)
    assert stored is not None
    assert stored.enabled is False
    assert rig.sched.next_due is None


async def test_interval_runs_stay_anchored_when_a_run_is_slow(rig: CronRig, llm: FakeLLM) -> None:
    """A slow run does not move later fire times: they stay creation + k * interval."""
    job = await rig.add(schedule="every 10m", prompt="p")
    await rig.clock.advance(600)
    await rig.quiet()
    await rig.clock.advance(600)
    await rig.quiet()
    rows = await rig.store.history(job.id)
    offsets = sorted(round(_ts(r["scheduled_for"]) - job.created_at) for r in rows)
    assert offsets == [600, 1200]


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class EarlyClock(FakeClock):
    """A FakeClock whose sleeps end 0.5 ms before their deadline, as uvloop's millisecond
    timers may (a sleep that short ends on time)."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds - 0.0005 if seconds > 0.0005 else seconds)


async def test_scheduler_sleeps_again_when_its_timer_fires_early(tmp_path: Path, llm: FakeLLM) -> None:
    """A timer that fires before the due time never makes the loop tick early: it sleeps the
    rest, then fires the job at its time."""
    rig = await CronRig(fake_config(tmp_path / "home", llm), EarlyClock()).start()
    try:
        job = await rig.add(schedule="every 1h", prompt="report")
        ticks = rig.sched.ticks
        await rig.clock.advance(HOUR - 0.0005)  # t=1 h - 0.5 ms: the early timer fires
        await rig.clock.settle()
        assert rig.sched.ticks == ticks  # no early tick: asleep again until the hour
        assert rig.clock.pending == [pytest.approx(0.0005, abs=1e-6)]
        await rig.clock.advance(0.0005)  # t=1 h: due
        await rig.quiet()
        assert rig.sched.ticks == ticks + 1
        assert await rig.statuses(job.id) == ["succeeded"]
    finally:
        await rig.close()
