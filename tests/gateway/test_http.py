"""The sidecar's HTTP surface in-process: /wake auth and merge, /status, /metrics, fly-api."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from common.clock import FakeClock
from gateway.config import load_config
from gateway.core.watcher import WatchState
from gateway.http.server import accept_poke
from gateway.metrics import Metrics
from gateway.runtime.fly import suspend_machine
from gateway.runtime.sidecar import Sidecar
from relay.protocol.token import mint_token


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    """A cron-only sidecar (no relay) armed by an external waker, on a fake clock."""
    (tmp_path / "config.yaml").write_text(
        "gateway: {scale_to_zero: {external_waker: true, idle_timeout_minutes: 1}}\n"
    )
    env = {
        "HERMES_SCALE_TO_ZERO": "1",
        "GATEWAY_RELAY_WAKE_URL": "http://x/wake",
        "HERMES_WAKE_SECRET": "w4ke",
        "GATEWAY_RELAY_ID": "gw",
        "GATEWAY_RELAY_SECRET": "rs",
    }
    sc = Sidecar(load_config(tmp_path, env), port=0, clock=FakeClock(wall=1.8e9), env=env, metrics_port=0)
    await sc.start()
    yield sc
    await sc.shutdown()


async def _get(
    sc: Sidecar, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"http://127.0.0.1:{sc.port}{path}", headers=headers or {}) as r,
    ):
        return r.status, await r.json()


async def _dormant(sc: Sidecar) -> None:
    clock = sc.clock
    assert isinstance(clock, FakeClock)
    await clock.advance(60)
    assert sc.watcher.state is WatchState.DORMANT


async def test_wake_wrong_bearer_is_401_and_changes_nothing(sidecar: Sidecar) -> None:
    """A wrong or missing bearer gets 401; the sidecar stays dormant and nothing is counted."""
    await _dormant(sidecar)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "w4ke"}):
        status, _ = await _get(sidecar, "/wake", headers)
        assert status == 401
    assert sidecar.watcher.state is WatchState.DORMANT
    assert sidecar.last_poke_at is None
    status, doc = await _get(sidecar, "/wake", {"Authorization": "Bearer w4ke"}, "POST")
    assert (status, doc["merged"], doc["woke"]) == (202, False, True)
    assert sidecar.watcher.state is WatchState.LIVE


async def test_wake_accepts_relay_token_and_merges_within_1s(sidecar: Sidecar) -> None:
    """The connector's relay token is accepted; a second poke within 1 s is merged."""
    await _dormant(sidecar)
    token = mint_token("gw", "rs", sidecar.clock.wall())
    status, doc = await _get(sidecar, "/wake", {"Authorization": f"Bearer {token}"})
    assert (status, doc["merged"]) == (202, False)
    status, doc = await _get(sidecar, "/wake", {"Authorization": f"Bearer {token}"})
    assert (status, doc) == (202, {"merged": True})
    assert isinstance(sidecar.clock, FakeClock)
    await sidecar.clock.advance(1.0)
    status, doc = await _get(sidecar, "/wake", {"Authorization": "Bearer w4ke"})
    assert doc["merged"] is False


class _Watcher:
    """The part of the idle watcher a poke sees: its state, and wake() (dormant -> live)."""

    def __init__(self) -> None:
        self.state = WatchState.DORMANT
        self.wakes = 0

    def wake(self, reason: str) -> bool:
        self.wakes += 1
        woke = self.state is WatchState.DORMANT
        self.state = WatchState.LIVE
        return woke


def test_a_poke_that_finds_the_sidecar_dormant_again_within_1s_wakes_it() -> None:
    """Poke, wake, handshake and flip back fit in one second (cooldown 0): the next poke
    announces a message buffered after that flip and must wake, not merge (python -m sim,
    seed 4568: the message waited for the next poke). A draining sidecar is not merged either."""
    clock = FakeClock()
    sc: Any = SimpleNamespace(clock=clock, metrics=Metrics(), watcher=_Watcher(), last_poke_at=None, pokes=0)
    sc.on_poke = lambda: None
    sc.state_name = lambda: sc.watcher.state.value
    assert accept_poke(sc)["woke"] is True
    assert accept_poke(sc) == {"merged": True}  # live within 1 s: one wake is enough
    sc.watcher.state = WatchState.DORMANT  # flipped back within the second
    doc = accept_poke(sc)
    assert (doc["merged"], doc["woke"]) == (False, True)
    sc.watcher.state = WatchState.DRAINING
    assert accept_poke(sc)["merged"] is False
    assert sc.watcher.wakes == 3


async def test_status_metrics_and_presence(sidecar: Sidecar) -> None:
    """/status has every field; /metrics is Prometheus text; /presence is 409 when dormant."""
    status, doc = await _get(sidecar, "/status")
    assert status == 200
    assert set(doc) >= {
        "state",
        "armed",
        "arm_blockers",
        "last_inbound_at",
        "idle_for_s",
        "idle_timeout_s",
        "cooldown_until",
        "running_turns",
        "next_job_due_at",
        "jobs_may_run_late",
        "drift_alerts",
        "relay",
    }
    assert (doc["state"], doc["armed"], doc["idle_timeout_s"]) == ("cron-only", True, 60.0)
    await _dormant(sidecar)
    status, doc = await _get(sidecar, "/status")
    assert doc["state"] == "dormant"
    assert doc["dormant_since"] is not None
    assert doc["jobs_may_run_late"] is True
    status, _ = await _get(sidecar, "/presence", {"Authorization": "Bearer w4ke"})
    assert status == 409
    url = f"http://127.0.0.1:{sidecar.metrics_port}/metrics"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
    assert 'hermes_watcher_state{state="dormant"} 1.0' in text


async def test_status_arm_blockers_name_each_reason(tmp_path: Path) -> None:
    """Without the flag, wake URL or a waker, /status lists why it is not armed."""
    sc = Sidecar(load_config(tmp_path, {}), port=0, clock=FakeClock(), env={})
    await sc.start()
    try:
        doc = await sc.status()
        assert doc["armed"] is False
        joined = " | ".join(doc["arm_blockers"])
        assert "HERMES_SCALE_TO_ZERO" in joined
        assert "GATEWAY_RELAY_WAKE_URL" in joined
        assert "external_waker" in joined
    finally:
        await sc.shutdown()


async def test_fly_api_suspend_posts_to_machines_api_over_unix_socket(tmp_path: Path) -> None:
    """suspend: fly-api POSTs /v1/apps/$FLY_APP_NAME/machines/$FLY_MACHINE_ID/suspend."""
    seen: list[tuple[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.method, request.path))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = str(tmp_path / "api.sock")
    await web.UnixSite(runner, sock).start()
    try:
        env = {"FLY_APP_NAME": "myapp", "FLY_MACHINE_ID": "m123"}
        assert await suspend_machine(env, socket_path=sock) is True
        assert seen == [("POST", "/v1/apps/myapp/machines/m123/suspend")]
        assert await suspend_machine({}, socket_path=sock) is False
    finally:
        await runner.cleanup()


async def test_fly_api_suspends_only_after_cooldown_dormant(tmp_path: Path) -> None:
    """The sidecar asks for a suspend once it has been dormant for cooldown_seconds."""
    calls: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = str(tmp_path / "api.sock")
    await web.UnixSite(runner, sock).start()
    (tmp_path / "config.yaml").write_text(
        "gateway: {scale_to_zero: {external_waker: true, idle_timeout_minutes: 1, "
        "cooldown_seconds: 30, suspend: fly-api}}\n"
    )
    env = {
        "HERMES_SCALE_TO_ZERO": "1",
        "GATEWAY_RELAY_WAKE_URL": "http://x/wake",
        "FLY_APP_NAME": "a",
        "FLY_MACHINE_ID": "m",
    }
    clock = FakeClock()
    sc = Sidecar(load_config(tmp_path, env), port=0, clock=clock, env=env)
    sc.fly_api_socket = sock
    await sc.start()
    try:
        await clock.advance(60)
        assert sc.watcher.state is WatchState.DORMANT
        await clock.advance(29.9)
        assert calls == []
        await clock.advance(0.1)
        task = sc._suspend_task
        assert task is not None
        await asyncio.wait_for(task, 5)
        assert calls == ["/v1/apps/a/machines/m/suspend"]
    finally:
        await sc.shutdown()
        await runner.cleanup()


@pytest.mark.parametrize(
    "header",
    ["Bearer w4kë", "Bearer " + "Z3c6wrI6YWJj", "Bearer \u00ff\u00fe"],
    ids=["non-ascii", "superscript-exp", "latin1-bytes"],
)
async def test_wake_with_a_garbage_bearer_is_401_never_500(sidecar: Sidecar, header: str) -> None:
    """A non-ASCII bearer or a token whose exp is '²' gets 401 and changes nothing."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"http://127.0.0.1:{sidecar.port}/wake",
            headers={"Authorization": header.encode().decode("latin-1")},
        ) as r,
    ):
        assert r.status == 401
    assert sidecar.last_poke_at is None
