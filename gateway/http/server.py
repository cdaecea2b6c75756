"""aiohttp app of the sidecar. Handlers read state from the sidecar through ``SidecarSurface``
(``gateway/http/surface.py``: the members they use) and never block on I/O they do not own;
every request also runs the resume check (a resumed machine is woken by a request, so that is
where the jump is first visible)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.clock import wait_for_event
from gateway.core.watcher import WatchState
from gateway.http.auth import status_authorized, wake_authorized
from gateway.http.surface import SidecarSurface
from gateway.ops.page import render_page

log = logging.getLogger("gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SIDECAR: web.AppKey[SidecarSurface] = web.AppKey("sidecar")
POKE_MERGE_S = 1.0
PRESENCE_COMMENT_S = 15.0


@web.middleware
async def _resume_check(request: web.Request, handler: Handler) -> web.StreamResponse:
    request.app[SIDECAR].check_resume()
    return await handler(request)


def build_app(sidecar: SidecarSurface) -> web.Application:
    """The app port: ``/wake``, ``/healthz``, ``/presence``, ``/status``, ``/admin/*``."""
    app = web.Application(middlewares=[_resume_check])
    app[SIDECAR] = sidecar
    app.router.add_route("GET", "/wake", wake)
    app.router.add_route("POST", "/wake", wake)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/presence", presence)
    app.router.add_post("/admin/notify", admin_notify)
    app.router.add_post("/admin/cron/run", admin_cron_run)
    app.router.add_post("/admin/kanban/dispatch", admin_kanban_dispatch)
    return app


def build_internal_app(sidecar: SidecarSurface) -> web.Application:
    """The internal port (``METRICS_PORT``, SPEC 8.3): ``GET /metrics`` and the operator page
    (SPEC 8.5: ``GET /`` and its JSON twin ``GET /api/overview``), unauthenticated; it is kept
    out of the public services, so only the private network (and ``fly proxy``) sees it."""
    app = web.Application(middlewares=[_resume_check])
    app[SIDECAR] = sidecar
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", operator_page)
    app.router.add_get("/api/overview", api_overview)
    return app


PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""The operator page loads nothing: no script, no external style, font or image."""


async def api_overview(request: web.Request) -> web.Response:
    """The overview document (``gateway/ops/overview.py``)."""
    return web.json_response(await request.app[SIDECAR].overview(), headers={"Cache-Control": "no-store"})


async def operator_page(request: web.Request) -> web.Response:
    """The operator page: the overview rendered server-side (``gateway/ops/page.py``)."""
    doc = await request.app[SIDECAR].overview()
    return web.Response(
        text=render_page(doc),
        content_type="text/html",
        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"},
    )


def _authorized(request: web.Request) -> bool:
    sc = request.app[SIDECAR]
    c = sc.config
    return wake_authorized(
        request.headers.get("Authorization"),
        wake_secret=c.wake_secret,
        gateway_id=c.relay_id,
        relay_secret=c.relay_secret,
        now=sc.clock.wall(),
    )


async def wake(request: web.Request) -> web.Response:
    """202 and an immediate re-dial if dormant; pokes within 1 s of an accepted one merge."""
    sc = request.app[SIDECAR]
    if not _authorized(request):
        sc.metrics.pokes.labels(result="refused").inc()
        log.warning("wake poke refused: bad or missing bearer")
        return web.json_response({"error": "unauthorized"}, status=401)
    return web.json_response(accept_poke(sc), status=202)


def accept_poke(sc: SidecarSurface) -> dict[str, Any]:
    """An authorized poke: merged into the last accepted one within ``POKE_MERGE_S`` (1 s of
    monotonic time) while the watcher is live, else the watcher wakes (a dormant relay re-dials
    at once; a draining one re-dials when its flip completes) and the scheduler and board
    re-plan. Returns ``/wake``'s 202 body (``merged``, ``woke``, ``state``). The simulator pokes
    through this too.

    Only a live sidecar merges: a poke that finds it draining or dormant again (a wake, a
    handshake and a flip can all fit in one second with ``cooldown_seconds: 0``) announces a
    message buffered after that flip, and merging it left the message waiting for the next
    poke (found by ``python -m sim``, seed 4568)."""
    now = sc.clock.monotonic()
    live = sc.watcher.state is WatchState.LIVE
    if live and sc.last_poke_at is not None and now - sc.last_poke_at < POKE_MERGE_S:
        sc.metrics.pokes.labels(result="merged").inc()
        return {"merged": True}
    sc.last_poke_at = now
    sc.metrics.pokes.labels(result="accepted").inc()
    woke = sc.watcher.wake("poke")
    sc.on_poke()
    return {"merged": False, "woke": woke, "state": sc.state_name()}


async def healthz(request: web.Request) -> web.Response:
    """200 whenever the process serves; dormant is healthy."""
    sc = request.app[SIDECAR]
    return web.json_response({"ok": True, "state": sc.state_name()})


async def status(request: web.Request) -> web.Response:
    """The status document; from anywhere but loopback it needs the admin token or the wake
    secret as bearer (else 401, nothing changes)."""
    sc = request.app[SIDECAR]
    if not status_authorized(
        request.remote,
        request.headers.get("Authorization"),
        admin_token=sc.admin_token,
        wake_secret=sc.config.wake_secret,
    ):
        return web.json_response({"error": "unauthorized"}, status=401)
    return web.json_response(await sc.status())


async def metrics(request: web.Request) -> web.Response:
    sc = request.app[SIDECAR]
    sc.refresh_gauges()
    await sc.ops.sync_cron_runs()
    body = generate_latest(sc.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def presence(request: web.Request) -> web.StreamResponse:
    """Held open while live (a comment every 15 s); ends when dormant; 409 if already dormant."""
    sc = request.app[SIDECAR]
    if not _authorized(request):
        return web.json_response({"error": "unauthorized"}, status=401)
    if sc.watcher.state is WatchState.DORMANT:
        return web.json_response({"error": "dormant"}, status=409)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    sc.presence_streams += 1
    try:
        await resp.write(b": live\n\n")
        while not await wait_for_event(sc.clock, sc.watcher.dormant, PRESENCE_COMMENT_S):
            await resp.write(b": keepalive\n\n")
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        sc.presence_streams -= 1
    return resp


async def admin_notify(request: web.Request) -> web.Response:
    """Management commands tell a running sidecar to re-plan (token from sidecar.json)."""
    sc = request.app[SIDECAR]
    if request.headers.get("Authorization") != f"Bearer {sc.admin_token}":
        return web.json_response({"error": "unauthorized"}, status=401)
    reloaded = sc.reload_config()
    sc.on_poke()
    return web.json_response({"ok": True, "config_reloaded": reloaded})


async def admin_cron_run(request: web.Request) -> web.Response:
    """``cron run ID`` handed to the running sidecar: the ledger row of the occurrence."""
    sc = request.app[SIDECAR]
    if request.headers.get("Authorization") != f"Bearer {sc.admin_token}":
        return web.json_response({"error": "unauthorized"}, status=401)
    try:
        body = await request.json()
        job_id = str(body["job_id"])
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'body must be {"job_id": ID}'}, status=400)
    sc.reload_config()  # a management command: it runs on the config as it is now on disk
    row = await sc.run_job_now(job_id)
    if row is None:
        return web.json_response({"error": f"unknown job id {job_id!r}"}, status=404)
    return web.json_response(row)


async def admin_kanban_dispatch(request: web.Request) -> web.Response:
    """``kanban dispatch`` handed to the running sidecar: one tick; the DispatchResult. Body
    ``{"dry_run": bool}`` (optional); 503 while shutting down."""
    sc = request.app[SIDECAR]
    if request.headers.get("Authorization") != f"Bearer {sc.admin_token}":
        return web.json_response({"error": "unauthorized"}, status=401)
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("dry_run", False), bool):
        return web.json_response({"error": 'body must be {"dry_run": true|false}'}, status=400)
    if not sc.board.accepting:
        return web.json_response({"error": "shutting down"}, status=503)
    sc.reload_config()  # a management command: it runs on the config as it is now on disk
    result = await sc.board.tick(dry_run=body.get("dry_run", False))
    log.info(
        "kanban dispatch handed over%s: %d spawned",
        " (dry run)" if body.get("dry_run") else "",
        len(result.spawned),
    )
    return web.json_response(result.to_json())
