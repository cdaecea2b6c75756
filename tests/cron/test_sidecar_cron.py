"""Cron inside the sidecar: wakeAt, next_job_due_at, jobs keep it live, a due job wakes it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from common.clock import FakeClock
from common.timefmt import parse_rfc3339
from gateway.config import load_config
from gateway.core.watcher import WatchState
from gateway.cron.jobs import create_job
from gateway.runtime.sidecar import Sidecar
from relay.client.machine import ConnState
from tests.fake_llm import FakeLLM, provider_config
from tests.procs import Proc, free_port
from tests.relay.fakes import FakeConnector


async def _sidecar(tmp_path: Path, fake: FakeConnector, llm: FakeLLM) -> tuple[Sidecar, FakeClock]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(
        provider_config(llm.base_url)
        + "gateway: {scale_to_zero: {idle_timeout_minutes: 1, cooldown_seconds: 5}}\n"
    )
    env = {
        "HERMES_SCALE_TO_ZERO": "1",
        "GATEWAY_RELAY_URL": fake.url,
        "GATEWAY_RELAY_WAKE_URL": "http://127.0.0.1:1/wake",
    }
    clock = FakeClock()
    sc = Sidecar(load_config(home, env), port=0, clock=clock, env={})
    await sc.start()
    assert sc.transport is not None
    await asyncio.wait_for(sc.transport.wait_until(lambda: sc.transport.connected), 10)
    return sc, clock


async def _idle_to_dormant(sc: Sidecar, clock: FakeClock) -> None:
    """Advance through the 60 s idle timeout and wait until the relay flip completed."""
    await clock.advance(60)
    assert sc.transport is not None
    await asyncio.wait_for(
        sc.transport.wait_until(lambda: sc.transport is not None and sc.transport.state is ConnState.DORMANT),
        10,
    )


async def _add(sc: Sidecar, clock: FakeClock, schedule: str) -> str:
    job = create_job(sc.config, {"schedule": schedule, "prompt": "p", "deliver_to": "relay:9"}, clock.wall())
    await sc.cron_store.add(job)
    sc.on_poke()
    await clock.settle()
    await asyncio.wait_for(sc.scheduler.wait_quiet(), 10)
    return job.id


async def test_sidecar_sends_wake_at_and_a_due_job_wakes_it(tmp_path: Path, llm: FakeLLM) -> None:
    """Flip carries wakeAt = next due job; at that time the job wakes the sidecar and runs."""
    async with FakeConnector() as fake:
        fake.answer_outbound = True
        sc, clock = await _sidecar(tmp_path, fake, llm)
        try:
            await _add(sc, clock, "every 10m")
            doc = await sc.status()
            due = parse_rfc3339(doc["next_job_due_at"])
            assert due == pytest.approx(clock.wall() + 600, abs=1)
            await _idle_to_dormant(sc, clock)  # t=60 s: idle -> flip with wakeAt
            [going_idle] = fake.of_type("going_idle")
            assert parse_rfc3339(going_idle["wakeAt"]) == pytest.approx(due, abs=0.01)
            assert (await sc.status())["jobs_may_run_late"] is False  # connector has wakeAt
            # t=600 s: the job is due: the sidecar wakes, re-dials, runs it and delivers
            await clock.advance(540)
            await asyncio.wait_for(sc.scheduler.wait_quiet(), 10)
            await fake.wait_until(lambda: len(fake.of_type("outbound")) == 1)
            assert fake.dials == 2
            assert sc.watcher.state is WatchState.LIVE
            assert fake.of_type("outbound")[0]["action"]["content"] == "echo: p"
        finally:
            await sc.shutdown()


async def test_sidecar_job_due_within_idle_timeout_keeps_it_live(tmp_path: Path, llm: FakeLLM) -> None:
    """A job due within the next idle timeout keeps the sidecar live; a running job too."""
    async with FakeConnector() as fake:
        fake.answer_outbound = True
        sc, clock = await _sidecar(tmp_path, fake, llm)
        try:
            await _add(sc, clock, "every 90s")
            await clock.advance(60)  # idle reached, but the job is due in 30 s
            assert sc.watcher.state is WatchState.LIVE
            assert fake.of_type("going_idle") == []
            llm.hold = asyncio.Event()
            await clock.advance(30)  # the job runs (held at the provider)
            await llm.wait_requests(1)
            await clock.advance(59)  # next due in 1 s and a job running: still live
            assert sc.watcher.state is WatchState.LIVE
            assert fake.of_type("going_idle") == []
            llm.hold.set()
            await asyncio.wait_for(sc.scheduler.wait_quiet(), 10)
        finally:
            await sc.shutdown()


async def test_cron_run_is_handed_to_the_running_sidecar(tmp_path: Path, llm: FakeLLM) -> None:
    """With a sidecar running, `cron run` goes through it and prints the ledger row (exit 0)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(provider_config(llm.base_url))
    env = {"HERMES_HOME": str(home)}
    proc = await Proc([sys.executable, "-m", "gateway", "run", "--port", str(free_port())], env=env).start()
    try:
        await proc.wait_for_line("hermes-sidecar started")
        add = await Proc(
            [
                sys.executable,
                "-m",
                "gateway",
                "cron",
                "add",
                "--schedule",
                "@daily",
                "--prompt",
                "now please",
                "--json",
            ],
            env=env,
        ).start()
        assert await add.wait() == 0
        job_id = json.loads(add.lines[-1])["id"]
        run = await Proc([sys.executable, "-m", "gateway", "cron", "run", job_id, "--json"], env=env).start()
        assert await run.wait() == 0
        row = json.loads(run.lines[-1])
        assert (row["status"], row["output"]) == ("succeeded", "echo: now please")
        await proc.wait_for_line(f"cron job {job_id} fired")  # it ran inside the sidecar
    finally:
        await proc.stop()


async def test_delivery_while_dormant_is_kept_and_sent_after_wake(tmp_path: Path, llm: FakeLLM) -> None:
    """A cron result produced while the relay is dormant waits in state.db, then goes out once."""
    async with FakeConnector() as fake:
        fake.answer_outbound = True
        sc, clock = await _sidecar(tmp_path, fake, llm)
        try:
            await _idle_to_dormant(sc, clock)
            await sc.deliver("relay", "9", "digest ready")
            assert [d[3] for d in await sc.deliveries.store.pending()] == ["digest ready"]
            assert fake.of_type("outbound") == []
            assert sc.watcher.wake("poke")
            await fake.wait_until(lambda: len(fake.of_type("outbound")) == 1)
            assert fake.of_type("outbound")[0]["action"] == {
                "op": "send",
                "chat_id": "9",
                "content": "digest ready",
            }
            assert sc.deliveries.flushing is not None
            await asyncio.wait_for(sc.deliveries.flushing, 10)
            assert await sc.deliveries.store.pending() == []
        finally:
            await sc.shutdown()
