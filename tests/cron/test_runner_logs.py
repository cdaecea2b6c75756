"""Provider failures of cron runs are logged at WARNING (SPEC 7: visible in the log)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from common.clock import FakeClock
from gateway.config import load_config
from gateway.cron.runner import run_occurrence
from tests.cron.rig import CronRig, fake_config
from tests.fake_llm import FakeLLM


def _warnings(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gateway.cron" and r.levelno == logging.WARNING and job_id in r.getMessage()
    ]


async def test_provider_error_is_logged_at_warning(
    tmp_path: Path, llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await CronRig(fake_config(tmp_path / "home", llm), FakeClock()).start(run_loop=False)
    try:
        job = await rig.add(schedule="every 1h", prompt="p")
        llm.status = 500
        caplog.set_level(logging.INFO, logger="gateway.cron")
        run_id = await run_occurrence(rig.ctx, job, rig.clock.wall())
        assert run_id is not None
        assert (await rig.store.run_row(run_id))["status"] == "failed"
        assert len(_warnings(caplog, job.id)) == 1, caplog.text
    finally:
        await rig.close()


async def test_no_provider_configured_is_logged_at_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    rig = await CronRig(load_config(home, {}), FakeClock()).start(run_loop=False)
    try:
        job = await rig.add(schedule="every 1h", prompt="p")
        caplog.set_level(logging.INFO, logger="gateway.cron")
        run_id = await run_occurrence(rig.ctx, job, rig.clock.wall())
        assert run_id is not None
        row = await rig.store.run_row(run_id)
        assert row["status"] == "failed"
        assert "no provider configured" in row["error"]
        [line] = _warnings(caplog, job.id)
        assert "no provider configured" in line
    finally:
        await rig.close()
