"""``hermes-sidecar status``: sends the admin token from sidecar.json and prints the operator
view (idle clock only while live, dormant since..., cooldown, tasks, next job, alerts)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.cli import format_status

DOC: dict[str, Any] = {
    "state": "live",
    "armed": True,
    "arm_blockers": [],
    "last_inbound_at": "2026-01-05T09:00:00Z",
    "idle_for_s": 13.2,
    "idle_timeout_s": 300.0,
    "cooldown_until": "2026-01-05T09:01:00Z",
    "dormant_since": None,
    "running_turns": 1,
    "tasks": {"ready": 2, "running": 1},
    "next_job_due_at": "2026-01-05T10:00:00Z",
    "jobs_may_run_late": False,
    "drift_alerts": [{"job_id": "j1", "opened_at": "2026-01-04T00:00:00Z", "detail": "model changed"}],
    "substitution_alerts": [
        {"asked": "big", "answered": "small", "provider": "p", "opened_at": "x", "last_at": "y", "turns": 3}
    ],
    "relay": {"connected": True, "dial_attempts": 1, "last_close_code": None, "supports_wake_at": True},
}


def test_format_status_live() -> None:
    text = format_status(DOC)
    assert "idle 13 s of 300 s" in " ".join(text.split())
    assert "until 2026-01-05T09:01:00Z" in text
    assert "ready 2, running 1" in text
    assert "next job     2026-01-05T10:00:00Z" in text
    assert "job j1 since 2026-01-04T00:00:00Z: model changed" in text
    assert "asked big on p, answered small (3 turn(s) since x)" in text


def test_format_status_dormant_has_no_idle_clock() -> None:
    doc = {
        **DOC,
        "state": "dormant",
        "dormant_since": "2026-01-05T09:05:00Z",
        "cooldown_until": None,
        "jobs_may_run_late": True,
    }
    text = format_status(doc)
    assert "of 300 s" not in text
    assert "dormant since 2026-01-05T09:05:00Z" in text
    assert "cooldown     none" in text
    assert "may run late" in text


async def test_status_command_sends_the_admin_token(tmp_path: Path) -> None:
    seen: list[str | None] = []

    async def status(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer t0ken":
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response(DOC)

    app = web.Application()
    app.router.add_get("/status", status)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    (tmp_path / "sidecar.json").write_text(json.dumps({"port": server.port, "pid": 1, "token": "t0ken"}))
    try:
        outs = []
        for extra in ([], ["--json"]):
            p = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "status",
                *extra,
                env={"HERMES_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(p.communicate(), 30)
            assert p.returncode == 0, err
            outs.append(out.decode())
        (tmp_path / "sidecar.json").write_text(json.dumps({"port": server.port, "pid": 1, "token": "bad"}))
        p = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "status",
            env={"HERMES_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(p.communicate(), 30)
        assert p.returncode == 1
        assert "answered 401" in err.decode()
    finally:
        await server.close()
    assert seen == ["Bearer t0ken", "Bearer t0ken", "Bearer bad"]
    assert "state        live" in outs[0]
    assert json.loads(outs[1])["idle_for_s"] == 13.2
