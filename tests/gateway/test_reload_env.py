"""SPEC 8.3: env essentials (OPENAI_BASE_URL / HERMES_MODEL / OPENAI_API_KEY, no config file),
the Fly wake URL default, unknown top-level keys, and config reload (SIGHUP, /admin/notify)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.config import load_config
from gateway.cron.jobs import create_job
from gateway.runtime.sidecar import Sidecar
from tests.fake_llm import FakeLLM, provider_config
from tests.procs import Proc, free_port
from tests.wire import RawConnector, inbound


@pytest.fixture
async def conn() -> AsyncIterator[RawConnector]:
    c = RawConnector()
    await c.server.start_server()
    yield c
    await c.server.close()


# --- env essentials -----------------------------------------------------------------------


async def test_env_only_deploy_answers_a_message(tmp_path: Path, llm: FakeLLM, conn: RawConnector) -> None:
    """No config.yaml: OPENAI_BASE_URL + HERMES_MODEL + OPENAI_API_KEY and the relay env are
    enough for a message to be answered by that model with that key."""
    env = {
        "GATEWAY_RELAY_URL": f"http://127.0.0.1:{conn.server.port}",
        "OPENAI_BASE_URL": llm.base_url,
        "HERMES_MODEL": "env-model",
        "OPENAI_API_KEY": "sk-env",
    }
    config = load_config(tmp_path, env, strict=True)
    assert not (tmp_path / "config.yaml").exists()
    assert (config.model_default, config.model_provider) == ("env-model", "openai")
    assert config.providers["openai"].api_key_env == "OPENAI_API_KEY"
    sc = Sidecar(config, port=0, env=env)
    await sc.start()
    try:
        await conn.push(inbound("b1", "c1", "1", "hello env"))
        await conn.wait_until(lambda: len(conn.sends) == 1)
    finally:
        await sc.shutdown()
    assert conn.sends[0]["action"]["content"] == "echo: hello env"
    assert llm.requests[0]["model"] == "env-model"
    assert llm.headers[0]["Authorization"] == "Bearer sk-env"


def test_env_provider_only_without_config_providers(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(provider_config("http://llm.example/v1", model="file-model"))
    c = load_config(tmp_path, {"OPENAI_BASE_URL": "http://other.example/v1"})
    assert set(c.providers) == {"fake"}
    assert (c.model_default, c.model_provider) == ("file-model", "fake")
    c = load_config(tmp_path, {"HERMES_MODEL": "env-model"})  # env wins over model.default
    assert c.model_default == "env-model"


def test_env_provider_keeps_a_configured_model_provider(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: {default: m, provider: elsewhere}\n")
    c = load_config(tmp_path, {"OPENAI_BASE_URL": "https://api.example/v1/"})
    assert c.providers["openai"].base_url == "https://api.example/v1"
    assert c.model_provider == "elsewhere"


def test_bad_openai_base_url_is_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        c = load_config(tmp_path, {"OPENAI_BASE_URL": "ftp://nope"})
    assert c.providers == {}
    assert [r.getMessage() for r in caplog.records if "OPENAI_BASE_URL" in r.getMessage()] == [
        "config OPENAI_BASE_URL='ftp://nope' is invalid (an http(s) URL); using default None"
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FLY_APP_NAME": "my-sidecar"}, "https://my-sidecar.fly.dev/wake"),
        ({"FLY_APP_NAME": "a", "GATEWAY_RELAY_WAKE_URL": "https://x.example/wake"}, "https://x.example/wake"),
        ({"FLY_APP_NAME": " "}, None),
        ({}, None),
    ],
    ids=["fly-app", "explicit-url-wins", "blank-app", "no-env"],
)
def test_fly_app_name_derives_the_wake_url(tmp_path: Path, env: dict[str, str], expected: str | None) -> None:
    assert load_config(tmp_path, env).wake_url == expected


def test_unknown_top_level_key_warns_with_the_nearest_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "config.yaml").write_text("modle: {default: m}\nzzz: 1\ncron: {timezone: UTC}\n")
    for _ in range(2):  # at every load
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gateway.config"):
            load_config(tmp_path, {})
        msgs = [r.getMessage() for r in caplog.records]
        assert msgs[0] == "config key 'modle' is unknown and ignored; did you mean 'model'?"
        assert msgs[1].startswith("config key 'zzz' is unknown and ignored; known keys: model, providers")
        assert len(msgs) == 2


# --- reload -------------------------------------------------------------------------------


async def test_reload_switches_the_model_of_the_next_turn_and_keeps_a_broken_file_out(
    tmp_path: Path, llm: FakeLLM, conn: RawConnector, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(provider_config(llm.base_url, model="m1"))
    env = {"GATEWAY_RELAY_URL": f"http://127.0.0.1:{conn.server.port}"}
    sc = Sidecar(load_config(tmp_path, env, strict=True), port=0, env=env)
    original = sc.config
    await sc.start()
    try:
        await conn.push(inbound("b1", "c1", "1", "one"))
        await conn.wait_until(lambda: len(conn.sends) == 1)
        cfg.write_text(
            provider_config(llm.base_url, model="m2")
            + "gateway: {scale_to_zero: {idle_timeout_minutes: 2}}\n"
        )
        assert sc.reload_config() is True
        assert sc.config is original  # swapped in place: every holder sees the new values
        assert sc.worker.config.model_default == sc.cron_ctx.config.model_default == "m2"
        assert sc.board.config is original
        assert sc.watcher.settings.idle_timeout_s == 120.0
        await conn.push(inbound("b2", "c1", "2", "two"))
        await conn.wait_until(lambda: len(conn.sends) == 2)
        assert [r["model"] for r in llm.requests] == ["m1", "m2"]

        cfg.write_text("model: [unclosed\n")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert sc.reload_config() is False
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "config reload failed, keeping the current config" in warnings[0].getMessage()
        assert sc.config.model_default == "m2"
        await conn.push(inbound("b3", "c1", "3", "three"))
        await conn.wait_until(lambda: len(conn.sends) == 3)
        assert llm.requests[-1]["model"] == "m2"
    finally:
        await sc.shutdown()


async def test_reload_keeps_start_only_settings_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sc = Sidecar(load_config(tmp_path, {}), port=0, env={"GATEWAY_RELAY_URL": "http://relay.example"})
    await sc.start()
    try:
        (tmp_path / "config.yaml").write_text("cron: {max_concurrent: 9, timezone: Europe/Paris}\n")
        with caplog.at_level(logging.INFO, logger="gateway.sidecar"):
            assert sc.reload_config() is True
        assert sc.config.cron_timezone == "Europe/Paris"
        assert sc.config.cron_max_concurrent == 4
        assert sc.config.relay_url is None
        msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert msgs == [
            "config reloaded; changed but only applied at the next start: relay_url, cron_max_concurrent"
        ]
    finally:
        await sc.shutdown()


async def test_admin_notify_reloads_the_config(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: {default: before}\n")
    sc = Sidecar(load_config(tmp_path, {}), port=0, env={})
    await sc.start()
    try:
        (tmp_path / "config.yaml").write_text("model: {default: after}\n")
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{sc.port}/admin/notify",
                headers={"Authorization": f"Bearer {sc.admin_token}"},
                json={},
            ) as r,
        ):
            assert r.status == 200
            assert await r.json() == {"ok": True, "config_reloaded": True}
        assert sc.config.model_default == "after"
        (tmp_path / "config.yaml").write_text("model: {default: unauthorised}\n")
        async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{sc.port}/admin/notify") as r:
            assert r.status == 401
        assert sc.config.model_default == "after"
    finally:
        await sc.shutdown()


async def test_sighup_reloads_a_running_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("cron: {timezone: UTC}\n")
    p = await Proc(
        [sys.executable, "-m", "gateway", "run", "--port", str(free_port())], env={"HERMES_HOME": str(home)}
    ).start()
    try:
        await p.wait_for_line("hermes-sidecar started on")
        (home / "config.yaml").write_text("cron: {timezone: Europe/Paris}\nmodle: {}\n")
        assert p.proc is not None
        p.proc.send_signal(signal.SIGHUP)
        await p.wait_for_line("did you mean 'model'?")
        await p.wait_for_line("config reloaded")
        (home / "config.yaml").write_text("cron: [\n")
        p.proc.send_signal(signal.SIGHUP)
        line = await p.wait_for_line("config reload failed")
        assert "WARNING" in line
        assert p.proc.returncode is None  # still serving
    finally:
        await p.stop()


async def test_reload_command_asks_the_running_sidecar(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"HERMES_HOME": str(home)}
    p = await Proc([sys.executable, "-m", "gateway", "run", "--port", str(free_port())], env=env).start()
    try:
        await p.wait_for_line("hermes-sidecar started on")
        (home / "config.yaml").write_text("model: {default: new}\n")
        ok = await Proc([sys.executable, "-m", "gateway", "reload"], env=env).start()
        assert await ok.wait() == 0
        assert ok.lines == ["config reloaded"]
        await p.wait_for_line("config reloaded")
        (home / "config.yaml").write_text("model: [\n")
        bad = await Proc([sys.executable, "-m", "gateway", "reload", "--json"], env=env).start()
        assert await bad.wait() == 1
        assert json.loads(bad.lines[-1])["config_reloaded"] is False
    finally:
        await p.stop()


async def test_cron_run_handed_over_sees_the_config_on_disk(tmp_path: Path, llm: FakeLLM) -> None:
    """model.default changed on disk, then `cron run` handed to the running sidecar: it runs on
    the new config, as the offline command would (a drift block, never the old model)."""
    (tmp_path / "config.yaml").write_text(provider_config(llm.base_url, model="before"))
    sc = Sidecar(load_config(tmp_path, {}), port=0, env={})
    await sc.start()
    try:
        job = create_job(sc.config, {"schedule": "@daily", "prompt": "p"}, sc.clock.wall())
        await sc.cron_store.add(job)
        (tmp_path / "config.yaml").write_text(provider_config(llm.base_url, model="after"))
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{sc.port}/admin/cron/run",
                headers={"Authorization": f"Bearer {sc.admin_token}"},
                json={"job_id": job.id},
            ) as r,
        ):
            row = await r.json()
        assert row["status"] == "blocked_drift"
        assert llm.requests == []
        assert sc.config.model_default == "after"
    finally:
        await sc.shutdown()
