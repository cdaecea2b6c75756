"""The operator page in a real browser: Debian's Chromium driven by Playwright (never a
downloaded browser), against a real in-process sidecar on seeded state (tests/ops/seed.py).

Skipped only when /usr/bin/chromium is missing (CI installs it in .ci/run). The screenshot is
saved under tests/artifacts/ (git-ignored) for CI to keep.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.runtime.sidecar import Sidecar
from tests.ops import seed as S

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing")


async def test_page_shows_every_section_with_the_seeded_values(seeded_sidecar: Sidecar) -> None:
    from playwright.async_api import async_playwright

    url = f"http://127.0.0.1:{seeded_sidecar.metrics_port}/"
    problems: list[str] = []
    requests: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            resp = await page.goto(url)
            assert resp is not None
            assert resp.status == 200
            await page.wait_for_load_state("networkidle")

            # header: the state
            assert await page.inner_text("#state") == "cron-only"

            # timeline: one band per seeded state, then the band of this process (started now)
            bands = await page.eval_on_selector_all(
                "#timeline rect.band", "els => els.map(e => e.dataset.state)"
            )
            assert bands == [*S.SEEDED_BANDS, "live"]
            triggers = await page.eval_on_selector_all(
                "#timeline line.wake", "els => els.map(e => e.dataset.trigger)"
            )
            assert triggers == ["poke", "due job"]
            timeline = await page.inner_text("#timeline")
            assert "42.5 ms" in timeline
            assert "180 ms" in timeline
            assert await page.locator("#timeline line.tick").count() == 1  # the relay backoff

            # cron: last five outcomes as cells, alerts with the pin command
            cells = await page.eval_on_selector_all(
                f'tr[data-job="{S.JOB_A[0]}"] .cell', "els => els.map(e => e.dataset.status)"
            )
            assert cells == S.JOB_A_STATUSES[-5:]
            cells = await page.eval_on_selector_all(
                f'tr[data-job="{S.JOB_B[0]}"] .cell', "els => els.map(e => e.dataset.status)"
            )
            assert cells == [*S.JOB_B_STATUSES, "succeeded"]
            cron = await page.inner_text("#cron")
            assert "daily-report" in cron
            assert "@daily" in cron
            assert "2027-01-15T12:00:00.000Z" in cron
            alerts = await page.inner_text("#alerts")
            assert f"hermes-sidecar cron update {S.JOB_A[0]} --provider openai --model gpt-4o-mini" in alerts
            assert "llama-3-70b" in alerts
            assert "cron.max_daily_usd reached" in alerts

            # spend: today, caps and what is left, per model, per skill (EMA)
            assert await page.inner_text("#spend-today") == "$0.2750"
            assert "$1.7500 left" in await page.inner_text('[data-cap="cron"]')
            assert "$4.7250 left" in await page.inner_text('[data-cap="agent"]')
            assert await page.locator("#spend rect.bar").count() == 14
            models = await page.inner_text("#models")
            assert "gpt-4o-mini" in models
            assert "$0.0250" in models
            assert "$1.7500" in models
            skills = await page.inner_text("#skills")
            assert "summarize" in skills
            assert "75.0%" in skills
            assert "$0.0500" in skills

            # routing: 24 hours, the strong model's hours 18:00-22:00 (prior error >= 6 %)
            strong = await page.eval_on_selector_all(
                '#routing rect.hour[data-strong="true"]', "els => els.map(e => e.dataset.hour)"
            )
            assert strong == ["18:00", "19:00", "20:00", "21:00", "22:00"]
            assert await page.locator("#routing rect.hour").count() == 24

            # board: counts by status and the oldest waiting task
            todo = await page.inner_text('#board [data-status="todo"]')
            assert todo.split() == ["2", "todo"]
            assert "triage inbox" in await page.inner_text("#oldest")

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "operator-page.png"), full_page=True)
            # a phone: the page still lays out (no horizontal overflow of the body)
            await page.set_viewport_size({"width": 390, "height": 844})
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390
            await page.screenshot(path=str(ARTIFACTS / "operator-page-phone.png"), full_page=True)
        finally:
            await browser.close()
    assert problems == []
    assert all(r.startswith(url) for r in requests), requests  # nothing external, nothing else
