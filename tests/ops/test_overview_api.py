"""``GET /api/overview`` (the page's JSON twin) and the new metrics, on a real in-process
sidecar over seeded state (plain aiohttp, no browser)."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.runtime.sidecar import Sidecar
from tests.ops import seed as S


async def _get(sc: Sidecar, path: str) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{sc.metrics_port}{path}") as r:
        body = await r.text()
        return r.status, r.headers, body


async def _overview(sc: Sidecar) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{sc.metrics_port}/api/overview") as r,
    ):
        assert r.status == 200
        doc: dict[str, Any] = await r.json()
        return doc


async def test_overview_has_the_spec_keys_and_the_seeded_values(seeded_sidecar: Sidecar) -> None:
    doc = await _overview(seeded_sidecar)
    assert set(doc) >= {"state", "transitions", "wakes", "jobs", "alerts", "spend", "routing", "tasks"}
    assert doc["state"] == "cron-only"
    # transitions: 24 h, time order, newest last; the row before the window gives state_before
    watcher = [(t["from"], t["to"]) for t in doc["transitions"] if t["kind"] == "watcher"]
    assert watcher == [(a, b) for ago, a, b, _ in S.WATCHER_ROWS if ago < 24] + [("stopped", "live")]
    assert doc["state_before"] == "dormant"
    ats = [t["at"] for t in doc["transitions"]]
    assert ats == sorted(ats)
    assert set(doc["transitions"][0]) == {"at", "from", "to", "reason", "kind"}
    assert [t["to"] for t in doc["transitions"] if t["kind"] == "relay"] == ["backoff"]
    assert [(w["trigger"], w["latency_ms"], w["ended_by"]) for w in doc["wakes"]] == [
        (t, ms, e) for _, t, ms, e in S.WAKES
    ]
    jobs = {j["id"]: j for j in doc["jobs"]}
    a = jobs[S.JOB_A[0]]
    assert (a["schedule"], a["next_run_at"]) == ("@daily", "2027-01-15T12:00:00.000Z")
    assert [r["status"] for r in a["recent"]] == S.JOB_A_STATUSES[-5:]
    assert [r["status"] for r in jobs[S.JOB_B[0]]["recent"]] == [*S.JOB_B_STATUSES, "succeeded"]
    alerts = doc["alerts"]
    assert alerts["drift"][0]["pin_command"] == (
        f"hermes-sidecar cron update {S.JOB_A[0]} --provider openai --model gpt-4o-mini"
    )
    assert alerts["substitution"][0]["answered"] == "llama-3-70b"
    assert [b["kind"] for b in alerts["budget"]] == ["cron"]
    spend = doc["spend"]
    assert spend["today"]["total_usd"] == 0.275
    assert {m["model"]: m["usd"] for m in spend["today"]["by_model"]} == {
        "gpt-4o": 0.25,
        "gpt-4o-mini": 0.025,
    }
    assert spend["today"]["by_skill"] == [{"skill": "summarize", "invocations": 4, "usd": 0.2}]
    assert len(spend["days"]) == 14
    assert spend["days"][-1]["day"] == "2027-01-15"
    assert spend["days"][-1]["inbound_usd"] == 0.025
    assert spend["days"][-1]["cron_usd"] == 0.25
    assert spend["caps"]["cron"] == {"limit_usd": 2.0, "spent_usd": 0.25, "left_usd": 1.75}
    assert spend["caps"]["agent"] == {"limit_usd": 5.0, "spent_usd": 0.275, "left_usd": 4.725}
    assert spend["skills"][0]["success_rate"] == 0.75
    routing = doc["routing"]
    assert routing["enabled"] is True
    assert routing["current_hour"] == 8
    assert [h["hour"] for h in routing["hours"] if h["strong"]] == [
        "18:00",
        "19:00",
        "20:00",
        "21:00",
        "22:00",
    ]
    tasks = doc["tasks"]
    assert tasks["counts"] == {"todo": 2, "ready": 0, "running": 0, "done": 2, "failed": 1, "blocked": 0}
    assert tasks["oldest_waiting"]["title"] == "triage inbox"
    assert tasks["oldest_waiting"]["waiting_s"] == 3000.0


async def test_page_is_html_without_external_requests(seeded_sidecar: Sidecar) -> None:
    status, headers, body = await _get(seeded_sidecar, "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "<script" not in body
    assert "http://" not in body
    assert "https://" not in body
    assert body.count('class="band ') == len(S.SEEDED_BANDS) + 1
    # the app port does not serve it (SPEC 8.3: internal port only)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{seeded_sidecar.port}/") as r:
        assert r.status == 404


async def test_metrics_gain_transitions_and_cron_runs(seeded_sidecar: Sidecar) -> None:
    sc = seeded_sidecar
    # a ledger row settled after start counts; the seeded ones (before start) do not
    await sc.cron_store.record(S.JOB_B[0], S.NOW + 1, "missed", S.NOW + 1)
    status, _, text = await _get(sc, "/metrics")
    assert status == 200
    assert 'hermes_transitions_total{from="stopped",to="live"} 1.0' in text
    assert 'hermes_cron_runs_total{status="missed"} 1.0' in text
    assert "# TYPE hermes_wake_latency_seconds histogram" in text
    assert "# TYPE hermes_cron_lateness_seconds histogram" in text
    _, _, text = await _get(sc, "/metrics")  # a second scrape does not count again
    assert 'hermes_cron_runs_total{status="missed"} 1.0' in text


async def test_empty_state_renders(tmp_path: Any) -> None:
    from common.clock import FakeClock
    from gateway.config import load_config

    sc = Sidecar(load_config(tmp_path, {}), port=0, clock=FakeClock(), env={}, metrics_port=0)
    await sc.start()
    try:
        status, _, body = await _get(sc, "/")
        assert status == 200
        assert "no cron jobs" in body
        assert "nothing waiting" in body
        doc = await _overview(sc)
        assert doc["jobs"] == []
        assert doc["tasks"]["oldest_waiting"] is None
        assert doc["spend"]["caps"]["agent"]["left_usd"] is None
    finally:
        await sc.shutdown()
